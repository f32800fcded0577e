"""The timeout-guarded query helper (decision D3, TARGETS.md reliability 8): PostgreSQL really cancels the
statement, a timeout is retried exactly once and then raised as `QueryTimeout` (503 `query_timeout` with
`Retry-After`), every attempt logs one line, and the limits never outlive the guarded block."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator

import psycopg
import pytest
from django.db import OperationalError, ProgrammingError, connection, transaction
from django.urls import path
from rest_framework.permissions import AllowAny
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.test import APIClient

from converzia.api.base import ApiView
from converzia.api.exception_handler import api_exception_handler
from converzia.db.timeouts import guarded
from converzia.errors import ErrorCode, QueryTimeout
from converzia.tests.factories import TenantFactory

pytestmark = pytest.mark.django_db

SLEEP_PAST_TIMEOUT = "SELECT pg_sleep(5)"
TIMEOUT_MS = 50


# --- Helpers -------------------------------------------------------------------------------------------


def current_limits() -> tuple[str, str]:
    with connection.cursor() as cursor:
        cursor.execute("SHOW statement_timeout")
        statement_timeout = cursor.fetchone()[0]
        cursor.execute("SHOW lock_timeout")
        return statement_timeout, cursor.fetchone()[0]


def backend_pid() -> int:
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        return cursor.fetchone()[0]


def select_one() -> int:
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
        return cursor.fetchone()[0]


def sleep_past_timeout() -> None:
    with connection.cursor() as cursor:
        cursor.execute(SLEEP_PAST_TIMEOUT)


def attempt_lines(caplog: pytest.LogCaptureFixture, query_name: str) -> list[tuple[int, str]]:
    """(attempt, outcome) of each line the helper logged for `query_name`, in order."""
    return [
        (record.attempt, record.outcome)
        for record in caplog.records
        if record.name == "converzia.db" and getattr(record, "query_name", None) == query_name
    ]


def sqlstate_of(exc: QueryTimeout) -> str | None:
    database_error = exc.__cause__
    assert isinstance(database_error, OperationalError)
    return getattr(database_error.__cause__, "sqlstate", None)


@pytest.fixture(autouse=True)
def capture_db_logs(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="converzia.db")


# --- Timeouts: retried once, then QueryTimeout ------------------------------------------------------------


def test_decorator_form_times_out_after_exactly_two_logged_attempts(caplog: pytest.LogCaptureFixture) -> None:
    calls: list[int] = []

    @guarded("test.decorator.sleep", timeout_ms=TIMEOUT_MS)
    def sleep() -> None:
        calls.append(1)
        sleep_past_timeout()

    with pytest.raises(QueryTimeout) as raised:
        sleep()

    assert len(calls) == 2
    assert raised.value.code == ErrorCode.QUERY_TIMEOUT
    assert raised.value.http_status == 503
    assert raised.value.retry_after and raised.value.retry_after > 0
    assert raised.value.details == {"query": "test.decorator.sleep"}
    assert sqlstate_of(raised.value) == "57014"
    assert attempt_lines(caplog, "test.decorator.sleep") == [(1, "timeout"), (2, "timeout")]
    for record in caplog.records:
        if getattr(record, "query_name", None) == "test.decorator.sleep":
            assert record.timeout_ms == TIMEOUT_MS
            assert isinstance(record.duration_ms, float) and record.duration_ms > 0
            assert hasattr(record, "tenant_id") and hasattr(record, "request_id")


def test_run_form_passes_arguments_and_times_out_after_exactly_two_attempts(
    caplog: pytest.LogCaptureFixture,
) -> None:
    calls: list[tuple[str, int]] = []

    def sleep(statement: str, *, seconds: int) -> None:
        calls.append((statement, seconds))
        with connection.cursor() as cursor:
            cursor.execute(statement, [seconds])

    with pytest.raises(QueryTimeout):
        guarded("test.run.sleep", timeout_ms=TIMEOUT_MS).run(sleep, "SELECT pg_sleep(%s)", seconds=5)

    assert calls == [("SELECT pg_sleep(%s)", 5)] * 2
    assert attempt_lines(caplog, "test.run.sleep") == [(1, "timeout"), (2, "timeout")]


def test_context_manager_form_makes_one_attempt(caplog: pytest.LogCaptureFixture) -> None:
    entered: list[int] = []

    with pytest.raises(QueryTimeout) as raised:
        with guarded("test.block.sleep", timeout_ms=TIMEOUT_MS):
            entered.append(1)
            sleep_past_timeout()

    assert entered == [1]
    assert sqlstate_of(raised.value) == "57014"
    assert attempt_lines(caplog, "test.block.sleep") == [(1, "timeout")]


def test_a_timeout_then_a_fast_attempt_returns_the_result(caplog: pytest.LogCaptureFixture) -> None:
    calls: list[int] = []

    @guarded("test.flaky", timeout_ms=TIMEOUT_MS)
    def flaky() -> int:
        calls.append(1)
        if len(calls) == 1:
            sleep_past_timeout()
        return select_one()

    assert flaky() == 1
    assert len(calls) == 2
    assert attempt_lines(caplog, "test.flaky") == [(1, "timeout"), (2, "ok")]


def test_success_is_one_attempt_logged_ok(caplog: pytest.LogCaptureFixture) -> None:
    @guarded("test.fast", timeout_ms=1000)
    def fast() -> int:
        return select_one()

    assert fast() == 1
    with guarded("test.fast.block", timeout_ms=1000):
        select_one()

    assert attempt_lines(caplog, "test.fast") == [(1, "ok")]
    assert attempt_lines(caplog, "test.fast.block") == [(1, "ok")]


# --- Non-timeout errors: unchanged, not retried -----------------------------------------------------------


def test_database_error_that_is_not_a_timeout_propagates_after_one_attempt(
    caplog: pytest.LogCaptureFixture,
) -> None:
    calls: list[int] = []

    def broken() -> None:
        calls.append(1)
        with connection.cursor() as cursor:
            cursor.execute("SELEC 1")

    with pytest.raises(ProgrammingError) as raised:
        guarded("test.syntax", timeout_ms=1000).run(broken)

    assert not isinstance(raised.value, QueryTimeout)
    assert getattr(raised.value.__cause__, "sqlstate", None) == "42601"
    assert len(calls) == 1
    assert attempt_lines(caplog, "test.syntax") == [(1, "error")]
    # Only the guarded savepoint was rolled back: the surrounding transaction still works.
    assert select_one() == 1


def test_python_error_propagates_unchanged_after_one_attempt(caplog: pytest.LogCaptureFixture) -> None:
    failure = ValueError("not a database problem")
    calls: list[int] = []

    @guarded("test.python_error", timeout_ms=1000)
    def fail() -> None:
        calls.append(1)
        raise failure

    with pytest.raises(ValueError) as raised:
        fail()
    with pytest.raises(ValueError):
        with guarded("test.python_error.block", timeout_ms=1000):
            raise ValueError("in a block")

    assert raised.value is failure
    assert len(calls) == 1
    assert attempt_lines(caplog, "test.python_error") == [(1, "error")]
    assert attempt_lines(caplog, "test.python_error.block") == [(1, "error")]


# --- The limits never outlive the block --------------------------------------------------------------------


def test_limits_apply_inside_the_block_only() -> None:
    before = current_limits()
    inside: list[tuple[str, str]] = []

    with guarded("test.limits", timeout_ms=1500):
        inside.append(current_limits())
    guarded("test.limits.run", timeout_ms=1200, lock_timeout_ms=300).run(
        lambda: inside.append(current_limits())
    )

    assert inside == [("1500ms", "750ms"), ("1200ms", "300ms")]
    assert current_limits() == before


def test_default_limits_come_from_settings(settings) -> None:
    settings.DB_STATEMENT_TIMEOUT_MS = 1234
    inside: list[tuple[str, str]] = []

    with guarded("test.limits.default"):
        inside.append(current_limits())

    assert inside == [("1234ms", "617ms")]


def test_limits_are_back_to_before_after_a_timeout() -> None:
    before = current_limits()

    with pytest.raises(QueryTimeout):
        guarded("test.limits.timeout", timeout_ms=TIMEOUT_MS).run(sleep_past_timeout)
    with pytest.raises(QueryTimeout):
        with guarded("test.limits.timeout.block", timeout_ms=TIMEOUT_MS):
            sleep_past_timeout()

    assert current_limits() == before
    # The connection still runs long statements: no limit is left behind.
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_sleep(0.2)")


def test_outer_transaction_keeps_its_own_limits() -> None:
    with transaction.atomic():
        with connection.cursor() as cursor:
            cursor.execute("SET LOCAL statement_timeout = '7s'")
            cursor.execute("SET LOCAL lock_timeout = '3s'")

        with guarded("test.outer.ok", timeout_ms=1000):
            select_one()
        assert current_limits() == ("7s", "3s")

        guarded("test.outer.ok.run", timeout_ms=1000).run(select_one)
        assert current_limits() == ("7s", "3s")

        with pytest.raises(QueryTimeout):
            guarded("test.outer.timeout", timeout_ms=TIMEOUT_MS).run(sleep_past_timeout)
        assert current_limits() == ("7s", "3s")

        with pytest.raises(QueryTimeout):
            with guarded("test.outer.timeout.block", timeout_ms=TIMEOUT_MS):
                sleep_past_timeout()
        assert current_limits() == ("7s", "3s")
        # The outer transaction is intact after the inner timeouts.
        assert select_one() == 1


def test_one_instance_can_guard_nested_blocks() -> None:
    guard = guarded("test.shared.nested", timeout_ms=1500)
    before, open_blocks = current_limits(), len(connection.atomic_blocks)

    with guard:
        with guard:
            assert current_limits() == ("1500ms", "750ms")
        assert len(connection.atomic_blocks) == open_blocks + 1
        assert current_limits() == ("1500ms", "750ms")

    assert len(connection.atomic_blocks) == open_blocks
    assert current_limits() == before


def test_one_instance_can_guard_blocks_in_two_threads_at_once() -> None:
    guard = guarded("test.shared.threads", timeout_ms=1500)
    both_inside = threading.Barrier(2, timeout=5)
    outcomes: dict[str, object] = {}

    def use_guard(name: str) -> None:
        try:
            with guard:
                both_inside.wait()
                inside = current_limits()
                both_inside.wait()  # both blocks stay open until both have read their limits
            outcomes[name] = (inside, connection.in_atomic_block)
        except Exception as exc:  # reported below, in the test's thread
            outcomes[name] = exc
        finally:
            connection.close()

    workers = [threading.Thread(target=use_guard, args=(name,)) for name in ("a", "b")]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=10)

    assert outcomes == {"a": (("1500ms", "750ms"), False), "b": (("1500ms", "750ms"), False)}


# --- Outside any transaction (the production path): the same connection, default limits -------------------


@pytest.mark.django_db(transaction=True)
def test_autocommit_connection_is_back_to_default_after_timeout_and_success(
    caplog: pytest.LogCaptureFixture,
) -> None:
    assert not connection.in_atomic_block
    before, pid = current_limits(), backend_pid()

    with pytest.raises(QueryTimeout):
        guarded("test.autocommit.timeout", timeout_ms=TIMEOUT_MS).run(sleep_past_timeout)
    assert (current_limits(), backend_pid()) == (before, pid)

    with pytest.raises(QueryTimeout):
        with guarded("test.autocommit.block", timeout_ms=TIMEOUT_MS):
            sleep_past_timeout()
    assert (current_limits(), backend_pid()) == (before, pid)

    assert guarded("test.autocommit.ok", timeout_ms=1000).run(select_one) == 1
    assert (current_limits(), backend_pid()) == (before, pid)
    assert not connection.in_atomic_block
    assert attempt_lines(caplog, "test.autocommit.timeout") == [(1, "timeout"), (2, "timeout")]


# --- Lock waits ---------------------------------------------------------------------------------------------


@pytest.fixture
def second_connection() -> Iterator[psycopg.Connection]:
    """A raw psycopg connection to the same test database (its own session, its own locks)."""
    params = connection.settings_dict
    other = psycopg.connect(
        dbname=params["NAME"],
        user=params["USER"] or None,
        password=params["PASSWORD"] or None,
        host=params["HOST"] or None,
        port=params["PORT"] or None,
        connect_timeout=5,
    )
    try:
        yield other
    finally:
        other.rollback()
        other.close()


@pytest.mark.django_db(transaction=True)
def test_lock_wait_past_lock_timeout_raises_query_timeout_after_two_attempts(
    caplog: pytest.LogCaptureFixture, second_connection: psycopg.Connection
) -> None:
    tenant = TenantFactory()  # committed: the other session must see it
    with second_connection.cursor() as holder:
        holder.execute("SELECT id FROM tenants WHERE id = %s FOR UPDATE", [tenant.pk])
    before = current_limits()

    def lock_tenant() -> object:
        with connection.cursor() as cursor:
            cursor.execute("SELECT id FROM tenants WHERE id = %s FOR UPDATE", [tenant.pk])
            return cursor.fetchone()[0]

    # The statement may run 5 s, but the row lock is waited for only 100 ms.
    with pytest.raises(QueryTimeout) as raised:
        guarded("test.lock.wait", timeout_ms=5000, lock_timeout_ms=100).run(lock_tenant)

    assert sqlstate_of(raised.value) == "55P03"
    assert attempt_lines(caplog, "test.lock.wait") == [(1, "timeout"), (2, "timeout")]
    assert current_limits() == before

    # Without a lock_timeout of its own the wait is capped below the statement timeout.
    with pytest.raises(QueryTimeout) as raised:
        with guarded("test.lock.default_cap", timeout_ms=200):
            lock_tenant()
    assert sqlstate_of(raised.value) == "55P03"

    second_connection.rollback()  # the lock is released: the same guarded call now succeeds
    assert guarded("test.lock.free", timeout_ms=5000, lock_timeout_ms=100).run(lock_tenant) == tenant.pk


# --- Rendering: 503 `query_timeout` with Retry-After --------------------------------------------------------


def test_query_timeout_renders_as_503_with_retry_after() -> None:
    response = api_exception_handler(QueryTimeout(details={"query": "portal.leads.list"}), {})

    assert response.status_code == 503
    assert response.data["error"]["code"] == "query_timeout"
    assert response.data["error"]["details"] == {"query": "portal.leads.list"}
    assert response.data["error"]["message"]
    assert int(response["Retry-After"]) > 0


class _PublicView(ApiView):
    permission_classes = (AllowAny,)
    authentication_classes = ()


class SlowView(_PublicView):
    def get(self, request: Request) -> Response:
        guarded("test.view.slow", timeout_ms=TIMEOUT_MS).run(sleep_past_timeout)
        return Response({"ok": True})


class LimitsView(_PublicView):
    def get(self, request: Request) -> Response:
        statement_timeout, lock_timeout = current_limits()
        return Response(
            {"statement_timeout": statement_timeout, "lock_timeout": lock_timeout, "pid": backend_pid()}
        )


urlpatterns = [path("slow", SlowView.as_view()), path("limits", LimitsView.as_view())]


@pytest.mark.urls(__name__)
@pytest.mark.django_db(transaction=True)
def test_api_request_past_its_timeout_is_503_and_the_next_request_sees_the_defaults(
    caplog: pytest.LogCaptureFixture,
) -> None:
    client = APIClient()
    baseline = client.get("/limits").json()

    response = client.get("/slow")

    assert response.status_code == 503
    error = response.json()["error"]
    assert error["code"] == "query_timeout"
    assert error["details"] == {"query": "test.view.slow"}
    assert error["request_id"] == response["X-Request-ID"]
    assert int(response["Retry-After"]) > 0
    lines = [r for r in caplog.records if getattr(r, "query_name", None) == "test.view.slow"]
    assert [(r.attempt, r.outcome) for r in lines] == [(1, "timeout"), (2, "timeout")]
    assert {r.request_id for r in lines} == {response["X-Request-ID"]}

    after = client.get("/limits").json()
    assert after == baseline  # same connection (pid), default statement_timeout and lock_timeout


@pytest.mark.django_db
def test_a_nested_guard_timeout_is_not_retried_again_by_the_outer_guard(caplog):
    inner_calls = []

    @guarded("inner", timeout_ms=50, backoff_s=0)
    def inner() -> None:
        inner_calls.append(1)
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_sleep(1)")

    outer = guarded("outer", timeout_ms=5_000, backoff_s=0)
    with caplog.at_level(logging.INFO, logger="converzia.db"), pytest.raises(QueryTimeout):
        outer.run(inner)

    assert len(inner_calls) == 2
    outcomes = [(r.query_name, r.attempt, r.outcome) for r in caplog.records if r.name == "converzia.db"]
    assert outcomes == [("inner", 1, "timeout"), ("inner", 2, "timeout"), ("outer", 1, "timeout")]
