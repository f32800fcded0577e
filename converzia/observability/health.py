"""Readiness (`GET /api/health`, API.md "Health"): can this instance serve, and how is it doing?

- database: `SELECT 1` under its own short statement timeout (HEALTH_DB_TIMEOUT_MS) and the connection's
  connect timeout (DB_CONNECT_TIMEOUT_S). Unreachable → 503 `unavailable`: nothing else is checked.
- cache: a PING on the Redis client itself, with the cache's short socket timeouts. It bypasses the
  cache's breaker and its ignore-exceptions setting on purpose: readiness reports Redis as it is now,
  not as this process last found it. Down → `degraded` (the API still answers, from the database).
- queue: pending inbox events, due deliveries and the oldest pending event's age (portal's probe).
- stats_view: when tenant_stats_materialized was last refreshed; older than HEALTH_STATS_VIEW_MAX_AGE_S
  (or never refreshed) → `degraded`.

The body names no secret, setting or environment variable.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.core.cache import caches
from django.db import connection
from django.utils import timezone

from converzia.db.timeouts import guarded
from converzia.observability.probes import queue_snapshot, stats_view_snapshot

OK = "ok"
DEGRADED = "degraded"
UNAVAILABLE = "unavailable"


@dataclass(frozen=True)
class Readiness:
    http_status: int
    body: dict[str, Any]


def _ms(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 1)


def database_check() -> dict[str, Any]:
    started = time.perf_counter()
    try:
        with (
            guarded("health.database", timeout_ms=settings.HEALTH_DB_TIMEOUT_MS, retries=0),
            connection.cursor() as cursor,
        ):
            cursor.execute("SELECT 1")
            cursor.fetchone()
    except Exception:  # noqa: BLE001 — unreachable, refused, timed out: all mean "not ready"
        return {"status": "error", "latency_ms": _ms(started)}
    return {"status": OK, "latency_ms": _ms(started)}


def cache_check() -> dict[str, Any]:
    started = time.perf_counter()
    cache = caches["default"]
    try:
        client = getattr(cache, "client", None)
        if client is not None and hasattr(client, "get_client"):
            # django-redis: the redis-py client, which raises (the cache API would swallow the error).
            client.get_client(write=True).ping()
        else:
            # The local-memory cache of `make run` without Redis: nothing to reach.
            cache.get("health:probe")
    except Exception:  # noqa: BLE001 — any failure means the cache is not usable right now
        return {"status": "error", "latency_ms": _ms(started)}
    return {"status": OK, "latency_ms": _ms(started)}


def queue_check() -> dict[str, Any] | None:
    started = time.perf_counter()
    try:
        queue = queue_snapshot()
    except Exception:  # noqa: BLE001
        return {"status": "error", "latency_ms": _ms(started)}
    if queue is None:
        return None
    return {
        "status": OK,
        "pending_events": queue.pending_events,
        "due_deliveries": queue.due_deliveries,
        "oldest_pending_age_s": queue.oldest_pending_age_s,
        "latency_ms": _ms(started),
    }


def stats_view_check() -> dict[str, Any] | None:
    started = time.perf_counter()
    try:
        state = stats_view_snapshot()
    except Exception:  # noqa: BLE001
        return {"status": "error", "refreshed_at": None, "age_s": None, "latency_ms": _ms(started)}
    if state is None:
        return None
    if state.age_s is None:
        status = "never_refreshed"
    elif state.age_s > settings.HEALTH_STATS_VIEW_MAX_AGE_S:
        status = "stale"
    else:
        status = OK
    return {
        "status": status,
        "refreshed_at": state.refreshed_at,
        "age_s": state.age_s,
        "latency_ms": _ms(started),
    }


def release_version() -> str:
    """The first 7 characters of the deploy's commit SHA, or the release name as given."""
    version = str(settings.RELEASE_VERSION)
    is_sha = len(version) >= 7 and all(c in "0123456789abcdef" for c in version.lower())
    return version[:7] if is_sha else version


def readiness() -> Readiness:
    body: dict[str, Any] = {"status": OK, "version": release_version(), "time": timezone.now()}
    database = database_check()
    cache = cache_check()
    if database["status"] != OK:
        body["status"] = UNAVAILABLE
        body["checks"] = {"database": database, "cache": cache, "queue": None, "stats_view": None}
        return Readiness(http_status=503, body=body)
    checks = {"database": database, "cache": cache, "queue": queue_check(), "stats_view": stats_view_check()}
    body["checks"] = checks
    if any(check is not None and check["status"] != OK for check in checks.values()):
        body["status"] = DEGRADED
    return Readiness(http_status=200, body=body)
