"""`converzia.cache`: versioned keys, one recompute per key, and Redis outages that cost nothing but speed.

Real Redis (the test settings' REDIS_URL); the outage is a cache pointed at a port nobody listens on.
"""

from __future__ import annotations

import threading
import time
import uuid

import pytest
from django.core.cache import cache
from django.http import HttpRequest, HttpResponse

from converzia import cache as cache_module
from converzia.cache import cached_read, invalidate_tenant, tenant_stats_key, tenant_version
from converzia.metrics import CACHE_REQUESTS
from converzia.middleware import RequestIdMiddleware
from converzia.request_context import after_response

DEAD_REDIS = {
    "default": {
        "BACKEND": "django_redis.cache.RedisCache",
        "LOCATION": "redis://127.0.0.1:1/0",
        "OPTIONS": {
            "CLIENT_CLASS": "django_redis.client.DefaultClient",
            "SOCKET_CONNECT_TIMEOUT": 0.2,
            "SOCKET_TIMEOUT": 0.2,
            "IGNORE_EXCEPTIONS": True,
        },
    }
}


@pytest.fixture(autouse=True)
def closed_breaker():
    cache_module._breaker.open_until = 0.0
    yield
    cache_module._breaker.open_until = 0.0


def counter(family: str, outcome: str) -> float:
    return CACHE_REQUESTS.labels(family, outcome)._value.get()


def test_a_miss_computes_and_the_next_read_is_a_hit():
    key = f"test:{uuid.uuid4()}"
    calls: list[int] = []

    def compute() -> dict:
        calls.append(1)
        return {"total": 42}

    hits_before = counter("test", "hit")
    first = cached_read(family="test", key=key, ttl=60, compute=compute)
    second = cached_read(family="test", key=key, ttl=60, compute=compute)

    assert (first.value, first.cached) == ({"total": 42}, False)
    assert (second.value, second.cached) == ({"total": 42}, True)
    assert second.as_of == first.as_of, "as_of is when the value was computed"
    assert len(calls) == 1
    assert counter("test", "hit") == hits_before + 1


def test_fresh_recomputes_and_refreshes_the_cache():
    key = f"test:{uuid.uuid4()}"
    values = iter([1, 2])
    cached_read(family="test", key=key, ttl=60, compute=lambda: next(values))
    fresh = cached_read(family="test", key=key, ttl=60, compute=lambda: next(values), fresh=True)
    after = cached_read(family="test", key=key, ttl=60, compute=lambda: 99)
    assert (fresh.value, fresh.cached) == (2, False)
    assert (after.value, after.cached) == (2, True)


@pytest.mark.django_db
def test_invalidation_after_commit_makes_the_tenants_entries_stale(django_capture_on_commit_callbacks):
    tenant_id = uuid.uuid4()
    key = tenant_stats_key(tenant_id, 30)
    assert cached_read(family="stats", key=key, ttl=60, compute=lambda: "old").value == "old"
    with django_capture_on_commit_callbacks(execute=True):
        invalidate_tenant(tenant_id)
        before_commit = cached_read(family="stats", key=key, ttl=60, compute=lambda: "new")
        assert (before_commit.value, before_commit.cached) == ("old", True), "nothing moves before the commit"
    assert tenant_version(tenant_id) == 1
    after = cached_read(family="stats", key=key, ttl=60, compute=lambda: "new")
    assert (after.value, after.cached) == ("new", False)
    again = cached_read(family="stats", key=key, ttl=60, compute=lambda: "newer")
    assert (again.value, again.cached) == ("new", True)
    # Another tenant's entries are untouched.
    other = tenant_stats_key(uuid.uuid4(), 30)
    cached_read(family="stats", key=other, ttl=60, compute=lambda: "theirs")
    invalidate_tenant(tenant_id)
    assert cached_read(family="stats", key=other, ttl=60, compute=lambda: "x").cached


def test_a_value_computed_while_a_write_commits_is_never_trusted():
    """The entry carries the version read before computing: a bump in between makes it stale."""
    tenant_id = uuid.uuid4()
    key = tenant_stats_key(tenant_id, 7)

    def compute_during_a_write() -> str:
        cache_module._bump_tenant_version(tenant_id)  # a write commits while we compute
        return "computed before the write was visible"

    first = cached_read(family="stats", key=key, ttl=60, compute=compute_during_a_write)
    assert first.cached is False
    second = cached_read(family="stats", key=key, ttl=60, compute=lambda: "after the write")
    assert (second.value, second.cached) == ("after the write", False)


def test_a_versioned_hit_costs_one_redis_round_trip(monkeypatch):
    key = tenant_stats_key(uuid.uuid4(), 30)
    cached_read(family="stats", key=key, ttl=60, compute=lambda: "v")
    operations: list[str] = []
    original = cache_module._cache_call
    monkeypatch.setattr(
        cache_module,
        "_cache_call",
        lambda family, operation, *a, **k: (
            operations.append(operation) or original(family, operation, *a, **k)
        ),
    )
    assert cached_read(family="stats", key=key, ttl=60, compute=lambda: "w").cached
    assert operations == ["get_many"]


def test_many_concurrent_misses_compute_once():
    key = f"test:{uuid.uuid4()}"
    calls: list[int] = []
    results: list[object] = []
    barrier = threading.Barrier(20)

    def compute() -> str:
        calls.append(1)
        time.sleep(0.2)
        return "value"

    def read() -> None:
        barrier.wait(10)
        results.append(cached_read(family="test", key=key, ttl=60, compute=compute).value)

    threads = [threading.Thread(target=read) for _ in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == ["value"] * 20
    assert len(calls) == 1, "one recompute per key"


def test_redis_down_answers_from_the_source_and_stops_trying_for_a_while(settings):
    settings.CACHES = DEAD_REDIS
    errors_before, skipped_before = counter("test", "error"), counter("test", "skipped")

    reads = [
        cached_read(family="test", key="test:down", ttl=60, compute=lambda: "from the database")
        for _ in range(20)
    ]

    assert {(r.value, r.cached) for r in reads} == {("from the database", False)}
    assert counter("test", "error") == errors_before + 1, "one failed attempt opens the breaker"
    assert counter("test", "skipped") >= skipped_before + 19, "the other reads do not even try"
    cache.close()


def test_the_breaker_closes_again():
    cache_module._breaker.trip()
    assert cached_read(family="test", key=f"test:{uuid.uuid4()}", ttl=60, compute=lambda: 1).cached is False
    cache_module._breaker.open_until = 0.0
    key = f"test:{uuid.uuid4()}"
    cached_read(family="test", key=key, ttl=60, compute=lambda: 1)
    assert cached_read(family="test", key=key, ttl=60, compute=lambda: 2).cached is True


def test_a_failing_compute_releases_the_recompute_lock():
    key = f"test:{uuid.uuid4()}"

    def broken() -> None:
        raise RuntimeError("database said no")

    with pytest.raises(RuntimeError):
        cached_read(family="test", key=key, ttl=60, compute=broken)
    assert cache.get(f"{key}:lock") is None


def test_inside_a_request_the_value_is_stored_once_the_response_has_been_sent(rf):
    key = f"test:{uuid.uuid4()}"

    def view(request: HttpRequest) -> HttpResponse:
        assert cached_read(family="test", key=key, ttl=60, compute=lambda: "v").value == "v"
        return HttpResponse("ok")

    response = RequestIdMiddleware(view)(rf.get("/"))
    assert cache.get(key) is None, "nothing stored while the response is on its way"
    response.close()  # what the WSGI server does once the body is sent
    assert cache.get(key)["value"] == "v"
    assert cached_read(family="test", key=key, ttl=60, compute=lambda: "w").cached


def test_work_after_the_response_that_fails_is_logged_and_the_rest_still_runs(rf, caplog):
    ran: list[str] = []

    def view(request: HttpRequest) -> HttpResponse:
        after_response(lambda: 1 / 0)
        after_response(lambda: ran.append("second"))
        return HttpResponse("ok")

    response = RequestIdMiddleware(view)(rf.get("/"))
    assert ran == []
    response.close()
    assert ran == ["second"]
    assert "work after the response failed" in caplog.text
    after_response(lambda: ran.append("outside a request: at once"))
    assert ran[-1] == "outside a request: at once"
