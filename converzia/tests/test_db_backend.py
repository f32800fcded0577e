"""Our PostgreSQL backend (converzia.db.postgresql): session limits for the web server, a health check
that costs a round trip only when the socket has news, and timestamptz values exactly as Django's.
Real PostgreSQL; the only backend terminated is the test's own."""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from django.conf import settings as django_settings
from django.db import connection, connections
from django.test.utils import CaptureQueriesContext

from converzia.db.postgresql.base import DatabaseWrapper, socket_has_news
from converzia.db.timeouts import guarded
from converzia.errors import QueryTimeout

pytestmark = pytest.mark.django_db(transaction=True)


def show(name: str) -> str:
    with connection.cursor() as cursor:
        cursor.execute(f"SHOW {name}")
        return cursor.fetchone()[0]


@pytest.fixture
def reconnecting(settings) -> Iterator[Any]:
    """Settings that apply to the next connection: the test's connection is reopened after changing
    them, and closed again at the end so no other test inherits its session."""
    connection.close()
    yield settings
    connection.close()


def test_the_default_connection_uses_this_backend():
    assert isinstance(connections["default"], DatabaseWrapper)
    assert django_settings.DATABASES["default"]["ENGINE"] == "converzia.db.postgresql"


def test_without_session_limits_connections_keep_the_servers_defaults(reconnecting):
    reconnecting.DB_SESSION_TIMEOUTS = False
    assert show("statement_timeout") == "0"
    assert connection.session_limits_ms is None


def test_session_limits_are_the_guard_defaults_and_a_non_atomic_read_runs_bare(reconnecting):
    reconnecting.DB_SESSION_TIMEOUTS = True
    reconnecting.DB_STATEMENT_TIMEOUT_MS = 1234
    assert show("statement_timeout") == "1234ms"
    assert show("lock_timeout") == "617ms"
    assert connection.session_limits_ms == (1234, 617)

    def read() -> int:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 41 + 1")
            return cursor.fetchone()[0]

    with CaptureQueriesContext(connection) as bare:
        assert guarded("test.read", atomic=False).run(read) == 42
    assert [query["sql"] for query in bare.captured_queries] == ["SELECT 41 + 1"]

    # A guard that must commit together, or that asks for other limits, still gets its transaction.
    for guard in (guarded("test.write"), guarded("test.other", timeout_ms=99, atomic=False)):
        with CaptureQueriesContext(connection) as wrapped:
            assert guard.run(read) == 42
        statements = [query["sql"] for query in wrapped.captured_queries]
        assert any("set_config('statement_timeout'" in sql for sql in statements), statements
    assert show("statement_timeout") == "1234ms"


def test_a_non_atomic_read_past_the_session_limit_times_out_twice_and_leaves_the_session_as_it_was(
    reconnecting,
):
    reconnecting.DB_SESSION_TIMEOUTS = True
    reconnecting.DB_STATEMENT_TIMEOUT_MS = 40
    attempts: list[int] = []

    def slow() -> None:
        attempts.append(1)
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_sleep(2)")

    with pytest.raises(QueryTimeout):
        guarded("test.slow", atomic=False, backoff_s=0).run(slow)
    assert len(attempts) == 2
    assert connection.connection is not None and not connection.in_atomic_block
    assert show("statement_timeout") == "40ms"


def test_a_healthy_connection_is_not_pinged(monkeypatch):
    connection.ensure_connection()
    pings: list[int] = []
    original = DatabaseWrapper.is_usable
    monkeypatch.setattr(DatabaseWrapper, "is_usable", lambda self: pings.append(1) or original(self))
    connection.health_check_enabled = True
    connection.health_check_done = False
    connection.close_if_health_check_failed()
    assert pings == []
    assert connection.connection is not None and connection.health_check_done


def test_a_connection_the_server_dropped_is_found_and_replaced_before_use():
    connection.ensure_connection()
    connection.health_check_enabled = True
    pid = connection.connection.info.backend_pid
    params = connection.get_connection_params()
    with psycopg.connect(**{k: v for k, v in params.items() if k != "context"}, autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(%s)", [pid])
    # The server's goodbye reaches the socket shortly after the backend exits.
    for _ in range(200):
        if socket_has_news(connection.connection.fileno()):
            break
        time.sleep(0.01)
    assert socket_has_news(connection.connection.fileno())

    connection.health_check_done = False
    with connection.cursor() as cursor:  # the check runs here, before the statement
        cursor.execute("SELECT pg_backend_pid()")
        assert cursor.fetchone()[0] != pid


def test_timestamps_load_exactly_as_djangos_loader_gives_them():
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT %s::timestamptz, '2026-03-29 01:30:00.000001+02'::timestamptz, 1",
            [dt.datetime(2026, 12, 7, 2, 3, 4, 5, tzinfo=dt.UTC)],
        )
        first, second, _ = cursor.fetchone()
    assert first == dt.datetime(2026, 12, 7, 2, 3, 4, 5, tzinfo=dt.UTC)
    assert first.tzinfo is dt.UTC and second.tzinfo is dt.UTC
    assert second == dt.datetime(2026, 3, 28, 23, 30, 0, 1, tzinfo=dt.UTC)
