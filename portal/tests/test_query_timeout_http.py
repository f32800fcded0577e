"""A read forced past its timeout, over HTTP (TARGETS.md "Reliability" 8): 503 `query_timeout` with
Retry-After after exactly two attempts, each logged, and the connection left with its defaults.

Nothing is mocked below the view: the guarded block of a real endpoint runs a real `pg_sleep` on the
real connection and PostgreSQL cancels it. Only the limit is made tiny (the setting for guards built
per call; the guard's own attribute for the module-level one of the lead list) and the selector is
wrapped so that its guarded block sleeps first.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from django.db import connection

import portal.selectors
import portal.stats
from converzia.db.timeouts import guarded
from converzia.tests.api_world import assert_error_shape, bearer_client
from converzia.tests.factories import TenantMemberFactory
from leads.tests.factories import LeadOfferFactory, OfferFactory

TIMEOUT_MS = 50


def session_state() -> tuple[int, str, str]:
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        (pid,) = cursor.fetchone()
        cursor.execute("SHOW statement_timeout")
        (statement_timeout,) = cursor.fetchone()
        cursor.execute("SHOW lock_timeout")
        (lock_timeout,) = cursor.fetchone()
    return pid, statement_timeout, lock_timeout


def sleeping(original: Callable[..., Any], calls: list[int]) -> Callable[..., Any]:
    """`original`, preceded by a statement that outlives any timeout of this test."""

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_sleep(%s)", [5])
        return original(*args, **kwargs)

    return wrapper


def module_guard(function: Callable[..., Any]) -> guarded:
    """The `guarded` instance a module-level `@guarded(...)` decorator closed over."""
    (guard,) = [
        cell.cell_contents for cell in function.__closure__ or () if isinstance(cell.cell_contents, guarded)
    ]
    return guard


def slow_stats(monkeypatch, settings, calls):
    settings.DB_STATEMENT_TIMEOUT_MS = TIMEOUT_MS  # read when the stats guard is built, per request
    monkeypatch.setattr(portal.stats, "_stats_reads", sleeping(portal.stats._stats_reads, calls))
    return "/api/portal/leads/stats", "portal.stats.read"


def slow_funnel(monkeypatch, settings, calls):
    settings.DB_STATEMENT_TIMEOUT_MS = TIMEOUT_MS
    monkeypatch.setattr(portal.stats, "_funnel_counts", sleeping(portal.stats._funnel_counts, calls))
    return "/api/portal/funnel", "portal.funnel.by_offer"


def slow_lead_list(monkeypatch, settings, calls):
    guard = module_guard(portal.selectors.portal_lead_page)
    monkeypatch.setattr(guard, "timeout_ms", TIMEOUT_MS)
    monkeypatch.setattr(guard, "lock_timeout_ms", TIMEOUT_MS // 2)
    # The page runs as a prepared query (converzia.db.prepared): its run sleeps first.
    page_query = portal.selectors._LEAD_PAGE
    monkeypatch.setattr(page_query, "rows", sleeping(page_query.rows, calls))
    return "/api/portal/leads", "portal.leads.list"


@pytest.fixture(params=[False, True], ids=["server-defaults", "session-limits"])
def session_limits(request, settings) -> Iterator[bool]:
    """Both ways a guard can run: SET LOCAL in its own transaction (commands, the worker), or, as the
    web server does (`DB_SESSION_TIMEOUTS`), on a connection whose session starts with the limits, where
    a read declared `atomic=False` runs without a transaction. The connection reopens either way."""
    settings.DB_SESSION_TIMEOUTS = request.param
    if request.param:
        settings.DB_STATEMENT_TIMEOUT_MS = TIMEOUT_MS  # the session's limits are the default ones
    connection.close()
    yield request.param
    connection.close()


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize(
    "make_slow", [slow_stats, slow_funnel, slow_lead_list], ids=["stats", "funnel", "leads"]
)
def test_read_past_its_timeout_is_503_after_two_logged_attempts_and_the_connection_is_clean(
    make_slow, session_limits, monkeypatch, settings, caplog
):
    member = TenantMemberFactory()
    LeadOfferFactory(offer=OfferFactory(tenant=member.tenant))
    client = bearer_client(member.user)
    assert client.get("/api/portal/billing/balance").status_code == 200  # the token's first-use write
    before = session_state()
    calls: list[int] = []
    path, query_name = make_slow(monkeypatch, settings, calls)
    caplog.set_level(logging.INFO, logger="converzia.db")

    response = client.get(path)

    assert response.status_code == 503, response.content
    error = assert_error_shape(response, "query_timeout")
    assert error["details"] == {"query": query_name}
    assert int(response["Retry-After"]) > 0
    assert len(calls) == 2, "exactly two attempts"
    lines = [record for record in caplog.records if record.name == "converzia.db"]
    assert [(r.query_name, r.attempt, r.outcome) for r in lines] == [
        (query_name, 1, "timeout"),
        (query_name, 2, "timeout"),
    ]
    assert {r.request_id for r in lines} == {response["X-Request-ID"]}
    assert {r.timeout_ms for r in lines} == {TIMEOUT_MS}

    # The same connection, back at its session's defaults: SET LOCAL died with the transaction, or
    # (session limits) nothing was set at all.
    assert session_state() == before
    if session_limits:
        assert before[1:] == (f"{TIMEOUT_MS}ms", f"{TIMEOUT_MS // 2}ms")
    monkeypatch.undo()
    assert client.get(path).status_code == 200
    assert session_state() == before
