"""The measured requests and their targets (TARGETS.md "Latency" and "Framework overhead"; the guide's
"Response Time Targets").

Framework overhead is judged in multiples of `GET /api/health/live`'s p50 in the same run: the request
that does nothing but go through the server, so the unit scales with the machine. `health.live` is
therefore the first scenario, and it always runs.

Uncached variants ask with `?fresh=true`, which only staff may do, so they run as staff naming the
tenant with `X-Tenant-ID`; cached variants run as the tenant's owner after a warm-up has filled the
cache. Scenarios of routes the server does not have are left out (and listed as skipped).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any
from urllib.parse import urlencode

from django.urls import NoReverseMatch, reverse

from converzia.bench.fixture import BenchFixture, MeasuredTenant
from converzia.bench.http import HttpRequest


@dataclass(frozen=True)
class Targets:
    guide_ms: tuple[float, float, float] | None  # p50, p95, p99
    ours_ms: tuple[float, float] | None  # p50, p99


class OverheadBasis(StrEnum):
    """What a scenario's framework overhead is measured as."""

    # API p50 − the raw p50 of the SQL the request runs (captured and replayed on bare psycopg).
    API_MINUS_SQL = "api-sql"
    # The whole p50: the request runs no SQL (cached reads, liveness), or TARGETS.md judges its whole
    # p50 against liveness (webhook ack, ops transition).
    WHOLE_P50 = "p50"
    # The whole p50 of requests whose SQL was not timed on its own: an upper bound of the overhead.
    UPPER_BOUND = "p50-with-sql"


@dataclass(frozen=True)
class Scenario:
    name: str
    description: str
    route: str  # URL name, to skip routes the server does not have
    requests: list[HttpRequest]
    targets: Targets
    # The request whose SQL is timed raw (None: not meaningful, e.g. a cached read runs no SQL).
    raw_sql_request: HttpRequest | None = None
    # Which overhead-ratio target applies (TARGETS.md: ≤ 2 for leads and stats).
    ratio_target: float | None = None
    # Framework overhead target, in multiples of the liveness p50 (None: reported, not judged).
    overhead_target_x: float | None = None


@dataclass(frozen=True)
class Flow:
    """A scenario that is more than a list of requests cycled closed-loop (sessions, writes, ingestion):
    it runs itself and returns its result."""

    name: str
    description: str
    run: Callable[[], Any]  # () -> report.ScenarioResult (report imports this module)
    # How its overhead is measured (None: its latencies are not requests', e.g. end to end ingestion)
    # and its target in multiples of the liveness p50 (None: reported, not judged).
    overhead_basis: OverheadBasis | None = None
    overhead_target_x: float | None = None


LIST_TARGETS = Targets(guide_ms=(100, 300, 500), ours_ms=(10, 30))
DASHBOARD_GUIDE_MS = (300, 1000, 2000)
STATS_WHALE_UNCACHED = Targets(DASHBOARD_GUIDE_MS, (30, 60))
STATS_SMALL_UNCACHED = Targets(DASHBOARD_GUIDE_MS, (5, 15))
CACHED_TARGETS = Targets(DASHBOARD_GUIDE_MS, (3, 8))
FUNNEL_UNCACHED = Targets(DASHBOARD_GUIDE_MS, (30, 100))
ADMIN_STATS_TARGETS = Targets(DASHBOARD_GUIDE_MS, (10, 30))
REVENUE_UNCACHED = Targets(DASHBOARD_GUIDE_MS, (50, 200))
NO_TARGET = Targets(None, None)
WRITE_TARGETS = Targets(guide_ms=(200, 500, 1000), ours_ms=(10, 40))
OVERHEAD_RATIO_TARGET = 2.0
# Framework overhead targets, × the liveness p50 (TARGETS.md "Framework overhead").
OVERHEAD_X_LIVE_READ = 3.0  # API p50 − raw SQL p50 of the leads list, detail, live stats and funnel, billing
OVERHEAD_X_CACHED = 2.0  # the whole p50 of a cached read: it runs no SQL
OVERHEAD_X_ACK = 2.0  # the whole p50 of the webhook ack
OVERHEAD_X_WRITE = 3.0  # the whole p50 of the ops transition
LIVENESS_SCENARIO = "health.live"
LIVENESS_PATH = "/api/health/live"


def _get(path: str, params: dict[str, object] | None, headers: dict[str, str]) -> HttpRequest:
    query = f"?{urlencode(params)}" if params else ""
    return HttpRequest("GET", path + query, headers)


def _headers(token: str, tenant: MeasuredTenant | None = None) -> dict[str, str]:
    headers = {"Authorization": f"Bearer {token}", "Accept": "application/json"}
    if tenant is not None:
        headers["X-Tenant-ID"] = str(tenant.tenant.pk)
    return headers


def _route_exists(name: str, kwargs: dict[str, object] | None = None) -> bool:
    try:
        reverse(name, kwargs=kwargs)
    except NoReverseMatch:
        return False
    return True


def read_scenarios(fixture: BenchFixture) -> tuple[list[Scenario], list[str]]:
    """(the scenarios to run, the names skipped because the server lacks their route)."""
    whale, small = fixture.whale, fixture.small
    owner = _headers(whale.owner_token, whale)
    staff_whale = _headers(fixture.staff_token, whale)
    staff_small = _headers(fixture.staff_token, small)
    small_owner = _headers(small.owner_token, small)
    staff = _headers(fixture.staff_token)
    leads = "/api/portal/leads"
    last_30 = {
        "created_from": (fixture.today - dt.timedelta(days=29)).isoformat(),
        "created_to": fixture.today.isoformat(),
    }
    fresh = {"fresh": "true"}

    def leads_get(params: dict[str, object] | None = None) -> HttpRequest:
        return _get(leads, {"page_size": 50, **(params or {})}, owner)

    filtered = [
        {"status": "LEAD_READY"},
        {"status": "SENT_TO_DEVELOPER,DISQUALIFIED"},
        {"stage": "in_chat"},
        last_30,
        *([{"offer_id": str(whale.top_offer_id)}] if whale.top_offer_id else []),
    ]
    builders: list[tuple[str, Callable[[], Scenario]]] = [
        ("api-health-live", lambda: Scenario(
            LIVENESS_SCENARIO, "liveness, no auth, no SQL: the unit of framework overhead",
            "api-health-live", [HttpRequest("GET", LIVENESS_PATH, {"Accept": "application/json"})],
            NO_TARGET)),
        ("portal-leads-list", lambda: Scenario(
            "leads.first_page", "leads list, whale, newest 50", "portal-leads-list",
            [leads_get()], LIST_TARGETS, leads_get(), OVERHEAD_RATIO_TARGET, OVERHEAD_X_LIVE_READ)),
        ("portal-leads-list", lambda: Scenario(
            "leads.filtered", "leads list, whale, status/stage/offer/date filters in turn",
            "portal-leads-list", [leads_get(params) for params in filtered], LIST_TARGETS,
            leads_get(filtered[0]), OVERHEAD_RATIO_TARGET, OVERHEAD_X_LIVE_READ)),
        ("portal-leads-list", lambda: Scenario(
            "leads.deep_page", "leads list, whale, pages at depth "
            + "/".join(f"{depth:,}" for depth in whale.deep_cursors), "portal-leads-list",
            [leads_get({"cursor": cursor}) for cursor in whale.deep_cursors.values()], LIST_TARGETS,
            leads_get({"cursor": list(whale.deep_cursors.values())[-1]}) if whale.deep_cursors else None,
            OVERHEAD_RATIO_TARGET, OVERHEAD_X_LIVE_READ)),
        ("portal-leads-list", lambda: Scenario(
            "leads.search", "leads list, whale, q=<surname>", "portal-leads-list",
            [leads_get({"q": name}) for name in ("garcía", "pereyra", "luna")], LIST_TARGETS,
            leads_get({"q": "garcía"}), OVERHEAD_RATIO_TARGET)),
        ("portal-leads-detail", lambda: Scenario(
            "leads.detail", "one lead_offer with delivery and timeline", "portal-leads-detail",
            [_get(f"{leads}/{pk}", None, owner) for pk in whale.lead_offer_ids], LIST_TARGETS,
            _get(f"{leads}/{whale.lead_offer_ids[0]}", None, owner) if whale.lead_offer_ids else None,
            overhead_target_x=OVERHEAD_X_LIVE_READ)),
        ("portal-leads-stats", lambda: Scenario(
            "stats.whale.uncached", f"stats, whale ({whale.lead_offers:,} lead_offers), fresh",
            "portal-leads-stats", [_get("/api/portal/leads/stats", fresh, staff_whale)],
            STATS_WHALE_UNCACHED, _get("/api/portal/leads/stats", fresh, staff_whale),
            OVERHEAD_RATIO_TARGET, OVERHEAD_X_LIVE_READ)),
        ("portal-leads-stats", lambda: Scenario(
            "stats.small.uncached", f"stats, {small.lead_offers:,}-lead tenant, fresh",
            "portal-leads-stats", [_get("/api/portal/leads/stats", fresh, staff_small)],
            STATS_SMALL_UNCACHED, _get("/api/portal/leads/stats", fresh, staff_small),
            OVERHEAD_RATIO_TARGET, OVERHEAD_X_LIVE_READ)),
        ("portal-leads-stats", lambda: Scenario(
            "stats.whale.cached", "stats, whale, from the cache", "portal-leads-stats",
            [_get("/api/portal/leads/stats", None, owner)], CACHED_TARGETS,
            overhead_target_x=OVERHEAD_X_CACHED)),
        ("portal-leads-stats", lambda: Scenario(
            "stats.small.cached", "stats, small tenant, from the cache", "portal-leads-stats",
            [_get("/api/portal/leads/stats", None, small_owner)], CACHED_TARGETS,
            overhead_target_x=OVERHEAD_X_CACHED)),
        ("portal-funnel", lambda: Scenario(
            "funnel.whale.uncached", "funnel, whale, last 30 days, all offers, fresh", "portal-funnel",
            [_get("/api/portal/funnel", {**last_30, **fresh}, staff_whale)], FUNNEL_UNCACHED,
            _get("/api/portal/funnel", {**last_30, **fresh}, staff_whale),
            overhead_target_x=OVERHEAD_X_LIVE_READ)),
        ("portal-funnel", lambda: Scenario(
            "funnel.whale.cached", "funnel, whale, last 30 days, from the cache", "portal-funnel",
            [_get("/api/portal/funnel", last_30, owner)], CACHED_TARGETS,
            overhead_target_x=OVERHEAD_X_CACHED)),
        ("portal-offers-list", lambda: Scenario(
            "offers.list", "the whale's offers with funnel counts", "portal-offers-list",
            [_get("/api/portal/offers", None, owner)], NO_TARGET,
            _get("/api/portal/offers", None, owner))),
        ("portal-billing-ledger", lambda: Scenario(
            "billing.ledger", "the whale's ledger, newest 50", "portal-billing-ledger",
            [_get("/api/portal/billing/ledger", None, owner)], NO_TARGET,
            _get("/api/portal/billing/ledger", None, owner), overhead_target_x=OVERHEAD_X_LIVE_READ)),
        ("portal-billing-balance", lambda: Scenario(
            "billing.balance", "the whale's balance and totals", "portal-billing-balance",
            [_get("/api/portal/billing/balance", None, owner)], NO_TARGET,
            _get("/api/portal/billing/balance", None, owner), overhead_target_x=OVERHEAD_X_LIVE_READ)),
        ("admin-stats", lambda: Scenario(
            "admin.stats", "platform dashboard, all tenants, 30-day trend", "admin-stats",
            [_get("/api/admin/stats", None, staff)], ADMIN_STATS_TARGETS,
            _get("/api/admin/stats", None, staff))),
        ("admin-revenue", lambda: Scenario(
            "admin.revenue.uncached", "revenue, last 30 days, all tenants, fresh", "admin-revenue",
            [_get("/api/admin/revenue", fresh, staff)], REVENUE_UNCACHED,
            _get("/api/admin/revenue", fresh, staff))),
        ("admin-revenue", lambda: Scenario(
            "admin.revenue.cached", "revenue, last 30 days, all tenants, from the cache", "admin-revenue",
            [_get("/api/admin/revenue", None, staff)], CACHED_TARGETS, overhead_target_x=OVERHEAD_X_CACHED)),
        ("admin-queue", lambda: Scenario(
            "admin.queue", "queue depth and oldest ages (live)", "admin-queue",
            [_get("/api/admin/queue", None, staff)], NO_TARGET, _get("/api/admin/queue", None, staff))),
    ]  # fmt: skip
    scenarios, skipped = [], []
    for route, build in builders:
        kwargs = (
            {"pk": whale.lead_offer_ids[0]}
            if route == "portal-leads-detail" and whale.lead_offer_ids
            else None
        )
        if _route_exists(route, kwargs):
            scenario = build()
            if scenario.requests:
                scenarios.append(scenario)
                continue
        skipped.append(route)
    return scenarios, skipped
