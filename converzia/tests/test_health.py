"""Readiness `GET /api/health` and liveness `GET /api/health/live` (API.md "Health"): real PostgreSQL
and Redis, and real outages (a closed port for Redis, then for the database)."""

from __future__ import annotations

import datetime as dt

import pytest
from django.test import override_settings

from converzia.settings.base import cache_settings
from converzia.tests.outages import closed_port, database_down
from portal.stats_view import tenant_stats_refresh

pytestmark = pytest.mark.django_db

CHECKS = {"database", "cache", "queue", "stats_view"}
# Nothing about configuration may leak from an unauthenticated endpoint.
FORBIDDEN_TEXT = ("SECRET", "DATABASE_URL", "REDIS_URL", "postgres://", "redis://", "password", "META_")


def assert_discreet(response) -> None:
    text = response.content.decode()
    for forbidden in FORBIDDEN_TEXT:
        assert forbidden not in text


def test_ready_when_everything_answers(api_client):
    tenant_stats_refresh()

    response = api_client.get("/api/health")

    assert response.status_code == 200, response.content
    assert response["Cache-Control"] == "no-store"
    body = response.json()
    assert body["status"] == "ok", body
    assert set(body) == {"status", "version", "time", "checks"}
    dt.datetime.fromisoformat(body["time"])
    assert set(body["checks"]) == CHECKS
    for name in ("database", "cache"):
        assert body["checks"][name]["status"] == "ok"
        assert body["checks"][name]["latency_ms"] >= 0
    queue = body["checks"]["queue"]
    assert {"pending_events", "due_deliveries", "oldest_pending_age_s", "latency_ms"} <= set(queue)
    assert isinstance(queue["pending_events"], int) and isinstance(queue["due_deliveries"], int)
    stats_view = body["checks"]["stats_view"]
    assert stats_view["status"] == "ok"
    assert 0 <= stats_view["age_s"] < 60
    dt.datetime.fromisoformat(stats_view["refreshed_at"])
    assert_discreet(response)


def test_needs_no_authentication_and_ignores_a_bad_token(api_client):
    api_client.credentials(HTTP_AUTHORIZATION="Bearer not-a-real-token")

    assert api_client.get("/api/health").status_code == 200


def test_a_stale_stats_view_is_degraded(api_client, settings):
    tenant_stats_refresh()
    settings.HEALTH_STATS_VIEW_MAX_AGE_S = -1

    response = api_client.get("/api/health")

    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "degraded"
    assert body["checks"]["stats_view"]["status"] == "stale"
    assert body["checks"]["database"]["status"] == "ok"


def test_redis_down_is_degraded_but_still_200(api_client):
    tenant_stats_refresh()

    with override_settings(CACHES=cache_settings(f"redis://127.0.0.1:{closed_port()}/0", "health-test")):
        response = api_client.get("/api/health")

    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "degraded"
    assert body["checks"]["cache"]["status"] == "error"
    assert body["checks"]["database"]["status"] == "ok"
    assert body["checks"]["queue"]["status"] == "ok"
    assert_discreet(response)


@pytest.fixture
def database_unreachable():
    """Point the default connection at a closed port for the test; restore it after."""
    with database_down():
        yield


@pytest.mark.django_db(transaction=True)
def test_database_unreachable_is_503_unavailable(api_client, database_unreachable):
    response = api_client.get("/api/health")

    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "unavailable"
    assert body["checks"]["database"]["status"] == "error"
    assert body["checks"]["cache"]["status"] == "ok"
    assert body["checks"]["queue"] is None and body["checks"]["stats_view"] is None
    assert "error" not in body  # readiness answers its own shape, not an API error
    assert_discreet(response)


@pytest.mark.django_db(transaction=True)
def test_liveness_does_not_depend_on_the_database(api_client, database_unreachable):
    response = api_client.get("/api/health/live")

    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


def test_the_version_is_a_short_commit_sha(api_client, settings):
    settings.RELEASE_VERSION = "0123456789abcdef0123456789abcdef01234567"

    assert api_client.get("/api/health").json()["version"] == "0123456"


def test_only_get(api_client):
    assert api_client.post("/api/health").status_code == 405
