"""Query budgets of every API endpoint, pinned exactly, and the same with 1 row as with 30.

Each endpoint is measured in one world twice: when tenant A has 1 of everything a request could walk
(lead_offers with sources, deliveries and events; offers; ledger entries; timeline events; webhook
changes in the POST), and again after it has 30. Both counts must equal the pinned budget, so a
budget that grows with the data (an N+1, a per-offer query) fails here. Cached reads are measured
cold (their read cache emptied) and warm (the next request, a hit).

Counts are of every statement on the connection inside the test's transaction: the guards' bookkeeping
(SAVEPOINT, reading and setting the limits, RELEASE) is included; in production, outside a
transaction, a guard costs BEGIN, one set_config and COMMIT instead. Each client makes one request
before measuring, so the bearer token's first-use write (`last_used_at`, at most once a minute) is
not counted, and its principal is cached (converzia.principal): as in steady state, authentication
and tenant resolution cost no query here (their cold cost is pinned in
converzia/tests/test_principal_cache.py); only staff naming a tenant read that tenant. Writes are
measured inside a savepoint that is rolled back, so both sizes see the same state.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
from django.core.cache import cache
from django.db import connection, transaction
from django.test.utils import CaptureQueriesContext
from django.urls import NoReverseMatch, resolve, reverse
from pytest_httpserver import HTTPServer

from billing.services import credit_adjust
from converzia.tests.api_world import (
    CATCH_ALL,
    World,
    api_routes,
    build_world,
    implemented_methods,
    meta_signature,
)
from deliveries.tests.factories import DeliveryFactory
from leads.models import LeadEventType, LeadOfferStatus
from leads.tests.factories import LeadEventFactory, LeadOfferFactory, LeadSourceFactory, OfferFactory
from portal.stats_view import tenant_stats_refresh

pytestmark = pytest.mark.django_db

SIZES = (1, 30)


@dataclass(frozen=True)
class Endpoint:
    caller: str
    method: str
    path: Callable[[World], str]
    body: Callable[[World, int], Any] | None = None
    cached: bool = False  # measured cold and warm
    write: bool = False  # measured in a rolled-back savepoint

    def path_for_resolve(self) -> str:
        """The path with placeholder ids, for matching it to its route."""

        class Ids:
            pk = "00000000-0000-0000-0000-000000000000"

        class Tenant:
            offer = hidden = Ids()

        class Placeholder:
            a = Tenant()

        return self.path(Placeholder()).split("?")[0]  # type: ignore[arg-type]


def _webhook_body(world: World, changes: int) -> bytes:
    entry = {
        "id": "1234",
        "time": 1764000000,
        "changes": [
            {
                "field": "leadgen",
                "value": {
                    "leadgen_id": f"77{changes:03d}{index:05d}",
                    "page_id": "1234",
                    "form_id": "555",
                    "ad_id": "120000000999",
                    "created_time": 1764000000,
                },
            }
            for index in range(changes)
        ],
    }
    return json.dumps({"object": "page", "entry": [entry]}).encode()


ENDPOINTS: dict[str, Endpoint] = {
    "health-live": Endpoint("anonymous", "GET", lambda w: "/api/health/live"),
    "health": Endpoint("anonymous", "GET", lambda w: "/api/health"),
    "metrics": Endpoint("staff", "GET", lambda w: "/metrics"),
    "auth-token": Endpoint(
        "anonymous",
        "POST",
        lambda w: "/api/auth/token",
        lambda w, n: {"email": w.a.owner.email, "password": "pass-word-123"},
        write=True,
    ),
    "leads-list": Endpoint("OWNER", "GET", lambda w: "/api/portal/leads?page_size=50"),
    "leads-list-filtered": Endpoint(
        "VIEWER", "GET", lambda w: "/api/portal/leads?page_size=50&q=a&status=QUALIFYING,SENT_TO_DEVELOPER"
    ),
    "leads-detail": Endpoint("OWNER", "GET", lambda w: f"/api/portal/leads/{w.a.hidden.pk}"),
    "leads-stats": Endpoint("OWNER", "GET", lambda w: "/api/portal/leads/stats", cached=True),
    "funnel": Endpoint("OWNER", "GET", lambda w: "/api/portal/funnel", cached=True),
    "funnel-offer": Endpoint(
        "OWNER", "GET", lambda w: f"/api/portal/funnel?offer_id={w.a.offer.pk}", cached=True
    ),
    # Offers carry the funnel's counts, read through its cache (portal.stats.offers_with_funnels).
    "offers-list": Endpoint("OWNER", "GET", lambda w: "/api/portal/offers?page_size=50", cached=True),
    "offers-detail": Endpoint("OWNER", "GET", lambda w: f"/api/portal/offers/{w.a.offer.pk}", cached=True),
    "billing-balance": Endpoint("OWNER", "GET", lambda w: "/api/portal/billing/balance"),
    "billing-ledger": Endpoint("OWNER", "GET", lambda w: "/api/portal/billing/ledger?page_size=50"),
    "destination-get": Endpoint("OWNER", "GET", lambda w: "/api/portal/delivery-destination"),
    "destination-put": Endpoint(
        "OWNER",
        "PUT",
        lambda w: "/api/portal/delivery-destination",
        lambda w, n: {"url": w.a.destination.url, "is_active": True},
        write=True,
    ),
    "destination-rotate": Endpoint(
        "OWNER", "POST", lambda w: "/api/portal/delivery-destination/rotate-secret", write=True
    ),
    "destination-test": Endpoint(
        "OWNER", "POST", lambda w: "/api/portal/delivery-destination/test", write=True
    ),
    "admin-queue": Endpoint("staff", "GET", lambda w: "/api/admin/queue"),
    "admin-revenue": Endpoint("staff", "GET", lambda w: "/api/admin/revenue", cached=True),
    # Not cached server-side by design (small summary tables; see portal.admin_stats).
    "admin-stats": Endpoint("staff", "GET", lambda w: "/api/admin/stats"),
    "ops-transition": Endpoint(
        "staff",
        "POST",
        lambda w: f"/api/ops/lead-offers/{w.a.hidden.pk}/transition",
        lambda w, n: {"to": "HUMAN_HANDOFF"},
        write=True,
    ),
    "ops-qualification": Endpoint(
        "staff",
        "POST",
        lambda w: f"/api/ops/lead-offers/{w.a.hidden.pk}/qualification",
        lambda w, n: {"score_total": 10},
        write=True,
    ),
    "webhook-verify": Endpoint(
        "anonymous",
        "GET",
        lambda w: (
            "/api/webhooks/meta-leads?hub.mode=subscribe&hub.verify_token=test-verify-token&hub.challenge=c"
        ),
    ),
    "webhook-post": Endpoint(
        "anonymous", "POST", lambda w: "/api/webhooks/meta-leads", _webhook_body, write=True
    ),
}

# Pinned budgets: {endpoint: count} or, for cached reads, {"endpoint cold": …, "endpoint warm": …}.
# Authentication and tenant resolution come from each caller's cached principal (converzia.principal):
# no query (before it: token joined to its user, then membership joined to its tenant, 2 per portal
# request, 1 per staff one). A warm cached read is no query at all.
BUDGETS: dict[str, int] = {
    "health-live": 0,
    "health": 19,  # three guarded checks (database, queue backlog, stats view), each with its bookkeeping
    "metrics": 13,  # the queue backlog and stats-view gauges refreshed per scrape
    "auth-token": 7,
    "leads-list": 6,
    "leads-list-filtered": 7,  # + the capped lookup of the leads matching `q`
    "leads-detail": 7,
    "leads-stats cold": 7,  # every live number in one statement, then the trend
    "leads-stats warm": 0,
    "funnel cold": 7,
    "funnel warm": 0,
    "funnel-offer cold": 7,
    "funnel-offer warm": 0,
    "offers-list cold": 8,
    "offers-list warm": 1,
    "offers-detail cold": 8,
    "offers-detail warm": 1,
    "billing-balance": 2,
    "billing-ledger": 1,
    "destination-get": 1,
    "destination-put": 6,
    "destination-rotate": 4,
    "destination-test": 1,
    "admin-queue": 11,
    "admin-revenue cold": 6,
    "admin-revenue warm": 0,
    "admin-stats": 8,
    "ops-transition": 10,
    "ops-qualification": 15,
    "webhook-verify": 0,
    # The event and its changes, then the drain wake-up: join the shard's queued drain (one statement),
    # or defer one inside a savepoint (SAVEPOINT, insert, RELEASE).
    "webhook-post": 11,
}

OPTIONAL = {"admin-revenue": "admin-revenue", "admin-stats": "admin-stats"}


def grow(world: World, count: int) -> None:
    """Give tenant A `count` of every row kind a request could walk (adds to what is there)."""
    a = world.a
    staff = world.users["staff"]
    for index in range(count):
        offer = OfferFactory(tenant=a.tenant)
        delivered = index % 2 == 0
        lead_offer = LeadOfferFactory(
            offer=offer if index % 3 else a.offer,
            status=LeadOfferStatus.SENT_TO_DEVELOPER if delivered else LeadOfferStatus.ENGAGED,
            lead_source=LeadSourceFactory(tenant=a.tenant),
        )
        if delivered:
            DeliveryFactory(lead_offer=lead_offer, delivered=True)
            LeadEventFactory(lead_offer=lead_offer, event_type=LeadEventType.DELIVERY_COMPLETED)
        LeadEventFactory(lead_offer=a.hidden)
        credit_adjust(tenant=a.tenant, amount=1, reason="budget", actor=staff)


def request(world: World, clients: dict[str, Any], endpoint: Endpoint, size: int) -> Any:
    client = clients[endpoint.caller]
    path = endpoint.path(world)
    body = endpoint.body(world, size) if endpoint.body else None
    if isinstance(body, bytes):
        return client.generic(
            endpoint.method,
            path,
            body,
            content_type="application/json",
            HTTP_X_HUB_SIGNATURE_256=meta_signature(body),
        )
    if body is not None:
        return client.generic(endpoint.method, path, json.dumps(body), content_type="application/json")
    return client.generic(endpoint.method, path)


def measure(
    world: World, clients: dict[str, Any], name: str, endpoint: Endpoint, size: int
) -> dict[str, int]:
    def one() -> int:
        with CaptureQueriesContext(connection) as captured:
            response = request(world, clients, endpoint, size)
        assert 200 <= response.status_code < 300, (name, size, response.status_code, response.content[:300])
        return len(captured.captured_queries)

    if endpoint.write:
        with transaction.atomic():
            count = one()
            transaction.set_rollback(True)
        cache.delete_pattern("*throttle_*")
        return {name: count}
    if endpoint.cached:
        # The read caches only (converzia.cache's tenant and revenue keys), not the principals.
        for pattern in ("tenant:*", "revenue:*"):
            cache.delete_pattern(pattern)
        cold = one()
        return {f"{name} cold": cold, f"{name} warm": one()}
    return {name: one()}


def available(name: str, endpoint: Endpoint) -> bool:
    if name not in OPTIONAL:
        return True
    try:
        reverse(OPTIONAL[name])
    except NoReverseMatch:
        return False
    return True


# Routes whose cost is not a database budget: the generated OpenAPI document and its viewer, and the
# catch-all 404 (no query).
NOT_BUDGETED = {"api-schema", "api-docs", CATCH_ALL}


def test_every_route_and_method_of_the_urlconf_has_a_budget():
    measured = {(resolve(e.path_for_resolve()).url_name, e.method) for e in ENDPOINTS.values()}
    routes = {
        (name, method)
        for name, route in api_routes().items()
        if name not in NOT_BUDGETED
        for method in implemented_methods(route.pattern)
    }
    missing = sorted(f"{name} {method}" for name, method in routes - measured)
    assert not missing, f"Routes without a query budget: {', '.join(missing)}. Add them to ENDPOINTS."


def test_every_endpoint_has_a_fixed_budget_that_does_not_grow_with_rows(httpserver: HTTPServer):
    httpserver.expect_request("/hook").respond_with_data("ok")
    cache.delete_pattern("*")
    world = build_world(httpserver.url_for("/hook"))
    # Reads of tenant_stats_materialized skip the trend query while the view was never refreshed, so
    # whether an earlier test left it populated must not change the counts: refresh it here.
    tenant_stats_refresh()
    endpoints = {name: endpoint for name, endpoint in ENDPOINTS.items() if available(name, endpoint)}
    clients = {caller: world.client(caller) for caller in {e.caller for e in endpoints.values()}}
    for endpoint in endpoints.values():  # first use of each token (its last_used_at write)
        if endpoint.caller != "anonymous":
            clients[endpoint.caller].get("/api/portal/billing/balance")

    counts: dict[int, dict[str, int]] = {}
    grown = 0
    for size in SIZES:
        grow(world, size - grown)
        grown = size
        counts[size] = {}
        for name, endpoint in endpoints.items():
            counts[size] |= measure(world, clients, name, endpoint, size)

    grew = {
        name: (counts[1][name], counts[30][name]) for name in counts[1] if counts[1][name] != counts[30][name]
    }
    assert not grew, f"Budgets that grow with the rows (1 row, 30 rows): {grew}"
    expected = {name: BUDGETS.get(name) for name in counts[1]}
    changed = {
        name: (expected[name], counts[1][name]) for name in counts[1] if counts[1][name] != expected[name]
    }
    assert not changed, f"Budgets changed (pinned, measured): {changed}"
