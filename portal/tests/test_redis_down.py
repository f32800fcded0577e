"""Redis stopped under portal load (TARGETS.md "Reliability" 3): every read answers 200 from the database.

The outage is the cache pointed at a port that was just bound and closed, so nothing listens there and
every connection is refused at once. Each read is made twice, with Redis up and then down, and must give
the same body (but for when and whether it was cached); cacheable reads count the cache error
(`converzia_cache_requests_total{outcome="error"}`); writes whose invalidation cannot reach Redis
still commit and answer as usual.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from django.core.cache import cache
from django.urls import Resolver404, resolve, reverse
from django.urls.exceptions import NoReverseMatch
from pytest_httpserver import HTTPServer

from converzia import cache as cache_module
from converzia.metrics import CACHE_REQUESTS
from converzia.tests.api_world import World, build_world, meta_signature
from converzia.tests.outages import dead_redis_caches
from converzia.views import api_not_found
from leads.models import LeadOffer, LeadOfferStatus

pytestmark = pytest.mark.django_db

# Keys whose values depend on when or from where a read was made, not on the data.
VOLATILE_KEYS = {"as_of", "cached", "time", "latency_ms", "refreshed_at"}


@pytest.fixture
def dead_redis(settings) -> Iterator[dict[str, Any]]:
    """Settings that point the cache at a closed port (apply with `settings.CACHES = dead_redis`)."""
    dead = dead_redis_caches(settings.CACHES)
    yield dead
    cache.close()


@pytest.fixture(autouse=True)
def closed_breaker() -> Iterator[None]:
    cache_module._breaker.open_until = 0.0
    yield
    cache_module._breaker.open_until = 0.0


@pytest.fixture
def world(httpserver: HTTPServer) -> World:
    httpserver.expect_request("/hook").respond_with_data("ok")
    cache.delete_pattern("*throttle_*")
    return build_world(httpserver.url_for("/hook"))


def cache_errors() -> float:
    return sum(
        sample.value
        for metric in CACHE_REQUESTS.collect()
        for sample in metric.samples
        if sample.name.endswith("_total") and sample.labels.get("outcome") == "error"
    )


def stable(value: Any) -> Any:
    """The body without the keys that change between two reads of the same data."""
    if isinstance(value, dict):
        return {
            key: stable(item)
            for key, item in value.items()
            if key not in VOLATILE_KEYS and not key.endswith("age_s")
        }
    if isinstance(value, list):
        return [stable(item) for item in value]
    return value


def route_exists(path: str) -> bool:
    try:
        return resolve(path).func is not api_not_found
    except Resolver404:
        return False


def read_endpoints(world: World) -> list[tuple[str, str, bool]]:
    """(caller, path, cacheable) for every GET read, the optional admin routes when they exist."""
    a = world.a
    reads = [
        ("anonymous", "/api/health/live", False),
        ("OWNER", "/api/portal/leads", False),
        ("OWNER", f"/api/portal/leads/{a.hidden.pk}", False),
        ("OWNER", "/api/portal/leads/stats", True),
        ("OWNER", "/api/portal/funnel", True),
        ("OWNER", f"/api/portal/funnel?offer_id={a.offer.pk}", True),
        ("OWNER", "/api/portal/offers", False),
        ("OWNER", f"/api/portal/offers/{a.offer.pk}", False),
        ("OWNER", "/api/portal/billing/balance", False),
        ("OWNER", "/api/portal/billing/ledger", False),
        ("OWNER", "/api/portal/delivery-destination", False),
        ("VIEWER", "/api/portal/leads", False),
        ("staff", "/api/portal/leads/stats?fresh=true", False),
        ("staff", "/api/admin/queue", False),
    ]
    for name, cacheable in (("admin-revenue", True), ("admin-stats", False)):  # stats: never cached
        try:
            reads.append(("staff", reverse(name), cacheable))
        except NoReverseMatch:
            pass  # not built yet (see converzia/tests/test_permission_matrix.py)
    if route_exists("/api/health"):
        reads.append(("anonymous", "/api/health", False))
    return reads


def test_every_read_answers_200_with_the_same_data_when_redis_is_down(world, settings, dead_redis):
    reads = read_endpoints(world)
    clients = {caller: world.client(caller) for caller in {caller for caller, _, _ in reads}}
    cache.delete_pattern("*")  # cold: the bodies below are computed, not left over
    with_redis = {}
    for caller, path, _ in reads:
        response = clients[caller].get(path)
        assert response.status_code == 200, (path, response.content[:300])
        with_redis[path, caller] = response.json()

    settings.CACHES = dead_redis
    for caller, path, cacheable in reads:
        cache_module._breaker.open_until = 0.0  # each read meets the outage itself
        errors_before = cache_errors()

        response = clients[caller].get(path)

        assert response.status_code == 200, (path, response.content[:300])
        body = response.json()
        if path.startswith("/api/health") and path != "/api/health/live":
            assert body["status"] == "degraded", body
            assert body["checks"]["cache"]["status"] != "ok", body
            continue
        assert stable(body) == stable(with_redis[path, caller]), path
        if cacheable:
            assert body["cached"] is False, path
            assert cache_errors() > errors_before, f"{path}: the cache error was not counted"


def test_cacheable_reads_stop_trying_redis_while_the_breaker_is_open(world, settings, dead_redis):
    settings.CACHES = dead_redis
    client = world.client("OWNER")
    errors_before = cache_errors()

    bodies = [client.get("/api/portal/leads/stats").json() for _ in range(5)]

    assert {body["total"] for body in bodies} == {2}
    assert {body["cached"] for body in bodies} == {False}
    assert cache_errors() == errors_before + 1, "one failed attempt opens the breaker for the rest"


def test_writes_commit_when_their_cache_invalidation_cannot_reach_redis(
    world, settings, dead_redis, django_capture_on_commit_callbacks
):
    settings.CACHES = dead_redis
    staff, owner = world.client("staff"), world.client("OWNER")
    lead_offer = world.a.hidden
    raw = json.dumps({"object": "instagram", "entry": []}).encode()

    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        qualified = staff.post(
            f"/api/ops/lead-offers/{lead_offer.pk}/qualification", {"score_total": 10}, format="json"
        )
        configured = owner.put(
            "/api/portal/delivery-destination",
            {"url": world.a.destination.url, "is_active": True},
            format="json",
        )
        rotated = owner.post("/api/portal/delivery-destination/rotate-secret")
        tested = owner.post("/api/portal/delivery-destination/test")  # throttled in Redis: not enforced now
        token = owner.post(
            "/api/auth/token", {"email": world.a.owner.email, "password": "pass-word-123"}, format="json"
        )
        webhook = owner.generic(
            "POST",
            "/api/webhooks/meta-leads",
            raw,
            content_type="application/json",
            HTTP_X_HUB_SIGNATURE_256=meta_signature(raw),
        )

    for response in (qualified, configured, rotated, tested, token, webhook):
        assert response.status_code == 200, response.content[:300]
    assert callbacks, "the lead change scheduled its cache invalidation"
    assert LeadOffer.objects.get(pk=lead_offer.pk).status == LeadOfferStatus.SCORED
    stats = owner.get("/api/portal/leads/stats").json()
    assert stats["statuses"]["SCORED"] == 1
    assert stats["statuses"]["QUALIFYING"] == 0
