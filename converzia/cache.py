"""Cache keys, reads and invalidation (decision D9). Every cache key is built here.

Invalidation bumps a per-tenant version after commit (no `KEYS`, no pattern deletes): each entry
carries the version it was computed under and is read together with the current one (one MGET), so
old entries are simply never trusted again and expire by TTL.

`cached_read` is the one way to serve a computed read from Redis:
- a hit answers the stored value with `cached=True` and the time it was computed (`as_of`);
- a miss computes once per key even when many requests miss together (a short lock key taken with
  `add`; the others wait briefly for the value, then compute themselves rather than wait long); the
  value is stored (and the lock released) once the response has been sent, not before it;
- Redis trouble never fails a request: the error is counted, the value computed from the database,
  and the cache is skipped for `CACHE_RETRY_AFTER_S` so an outage costs one socket timeout per
  process every few seconds, not one per request.
Hits, misses, errors and skips are counted by key family (`converzia_cache_requests_total`).
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Generic, TypeVar

from django.core.cache import cache
from django.db import transaction
from django.utils import timezone

from converzia.metrics import CACHE_REQUESTS
from converzia.request_context import after_response

logger = logging.getLogger(__name__)

T = TypeVar("T")

TTL_STATS = 60
TTL_FUNNEL = 120
TTL_REVENUE = 300
# A cached principal (converzia.principal) is trusted this long at most, even if an invalidation was
# missed (a raw SQL write, Redis unreachable during a bump): the bound on staleness of last resort.
TTL_PRINCIPAL = 60
# The token entry itself outlives TTL_PRINCIPAL: it also remembers which user the token belongs to, so
# the user's version can be read before the database is (see `principal_version`).
TTL_PRINCIPAL_ENTRY = 24 * 3600
TTL_PRINCIPAL_VERSION = 7 * 24 * 3600
# After a cache error, go straight to the database for this long (per process).
CACHE_RETRY_AFTER_S = 5.0
# One request recomputes a missing key; others wait up to this long for its value.
RECOMPUTE_LOCK_S = 10
RECOMPUTE_WAIT_S = 0.5
RECOMPUTE_POLL_S = 0.02

_MISSING = object()


class _Breaker:
    """Skips the cache for a while after an error (per process; one float, so no lock is needed)."""

    def __init__(self) -> None:
        self.open_until = 0.0

    def is_open(self) -> bool:
        return time.monotonic() < self.open_until

    def trip(self) -> None:
        self.open_until = time.monotonic() + CACHE_RETRY_AFTER_S


_breaker = _Breaker()


def _client() -> Any:
    """django-redis's client raises on a Redis error (the cache API itself ignores them, by our
    settings, which would hide an outage from the counters); other backends raise nothing anyway."""
    return getattr(cache, "client", cache)


def _cache_call(family: str, operation: str, *args: Any, **kwargs: Any) -> Any:
    """One cache operation; `_MISSING` when the cache is unavailable (counted, breaker tripped)."""
    if _breaker.is_open():
        CACHE_REQUESTS.labels(family, "skipped").inc()
        return _MISSING
    try:
        return getattr(_client(), operation)(*args, **kwargs)
    except Exception:  # noqa: BLE001 — any cache failure means "answer from the database"
        CACHE_REQUESTS.labels(family, "error").inc()
        _breaker.trip()
        logger.warning(
            "cache unavailable; answering from the database", extra={"family": family}, exc_info=True
        )
        return _MISSING


# --- keys ---------------------------------------------------------------------------------------


def tenant_version_key(tenant_id: uuid.UUID | str) -> str:
    return f"tenant:{tenant_id}:v"


def tenant_version(tenant_id: uuid.UUID | str) -> int:
    version = _cache_call("version", "get", tenant_version_key(tenant_id))
    return int(version) if version not in (None, _MISSING) else 0


@dataclass(frozen=True)
class VersionedKey:
    """A key whose entry is trusted only while `version_key` still holds the version it was computed
    under (the version is stored in the entry). One MGET reads both: one round trip per cached read,
    where a version embedded in the key name cost two (the version, then the key it names)."""

    key: str
    version_key: str


def _tenant_key(family: str, tenant_id: uuid.UUID | str, parts: tuple[object, ...]) -> VersionedKey:
    suffix = "".join(f":{part}" for part in parts)
    return VersionedKey(key=f"tenant:{tenant_id}:{family}{suffix}", version_key=tenant_version_key(tenant_id))


def tenant_stats_key(tenant_id: uuid.UUID | str, *parts: object) -> VersionedKey:
    return _tenant_key("stats", tenant_id, parts)


def tenant_funnel_key(tenant_id: uuid.UUID | str, *parts: object) -> VersionedKey:
    return _tenant_key("funnel", tenant_id, parts)


def revenue_key(start: object, end: object, tenant_id: uuid.UUID | str) -> str:
    """Admin revenue over [start, end] (ISO dates) for one tenant or "all". Not versioned: revenue
    spans tenants, so it is refreshed by its TTL (TTL_REVENUE) or `?fresh=true`, never invalidated."""
    return f"revenue:{start}:{end}:{tenant_id}"


def principal_token_key(token_digest: str) -> str:
    """A bearer token's cached principal, keyed by the token's SHA-256 digest (as `api_tokens` stores
    it): the raw token is never a key or a value."""
    return f"principal:token:{token_digest}"


def principal_version_key(user_id: uuid.UUID | str) -> str:
    """A random string replaced on every change to the user, their tokens, memberships or tenants.
    Random rather than a counter: if the key is evicted, a new value can never match an old entry."""
    return f"principal:user:{user_id}:v"


# --- reads --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CachedRead(Generic[T]):
    value: T
    cached: bool
    as_of: datetime


def cached_read(
    *, family: str, key: str | VersionedKey, ttl: int, compute: Callable[[], T], fresh: bool = False
) -> CachedRead[T]:
    """`compute()`'s value, from the cache when it has it (see the module docstring)."""
    name = key.key if isinstance(key, VersionedKey) else key
    version: Any = None
    if not fresh:
        stored, version = _read(family, key)
        if _usable(stored, version):
            CACHE_REQUESTS.labels(family, "hit").inc()
            return CachedRead(stored["value"], True, stored["as_of"])
        if stored is _MISSING:
            return _compute(compute)
    elif isinstance(key, VersionedKey):
        version = _version_of(_cache_call(family, "get", key.version_key))
        if version is _MISSING:
            return _compute(compute)
    CACHE_REQUESTS.labels(family, "miss").inc()
    lock_key = f"{name}:lock"
    # A `fresh` read (staff asking for live numbers) recomputes whatever others do: it neither waits
    # for nor holds the lock that spares the database a stampede of ordinary misses.
    locked = None if fresh else _cache_call(family, "add", lock_key, 1, timeout=RECOMPUTE_LOCK_S)
    if locked is False:
        # Someone else is computing this key: wait briefly for their value.
        deadline = time.monotonic() + RECOMPUTE_WAIT_S
        while time.monotonic() < deadline:
            time.sleep(RECOMPUTE_POLL_S)
            stored, current = _read(family, key)
            if _usable(stored, current):
                return CachedRead(stored["value"], True, stored["as_of"])
            if stored is _MISSING:
                break
    try:
        result = _compute(compute)
    except BaseException:
        # A 404 or a timeout: the next request must not wait for us.
        if locked is True:
            _cache_call(family, "delete", lock_key)
        raise
    # Stored under the version read before computing: a write that committed meanwhile has moved the
    # version on, so this entry is never trusted. After the response: the answer does not wait for it.
    entry = {"value": result.value, "as_of": result.as_of, "version": version}
    after_response(lambda: _store(family, name, entry, ttl, lock_key if locked is True else None))
    return result


def _store(family: str, key: str, entry: dict[str, Any], ttl: int, lock_key: str | None) -> None:
    _cache_call(family, "set", key, entry, timeout=ttl)
    if lock_key is not None:
        _cache_call(family, "delete", lock_key)


def _version_of(raw: Any) -> Any:
    """A version key's value as stored (an int once bumped; absent: 0), or `_MISSING`."""
    return _MISSING if raw is _MISSING else int(raw or 0)


def _read(family: str, key: str | VersionedKey) -> tuple[Any, Any]:
    """(the stored entry or None or `_MISSING`, the current version or None for an unversioned key)."""
    if not isinstance(key, VersionedKey):
        return _cache_call(family, "get", key), None
    found = _cache_call(family, "get_many", [key.version_key, key.key])
    if found is _MISSING:
        return _MISSING, _MISSING
    return found.get(key.key), _version_of(found.get(key.version_key))


def _usable(stored: Any, version: Any) -> bool:
    return isinstance(stored, dict) and "value" in stored and stored.get("version") == version


def _compute(compute: Callable[[], T]) -> CachedRead[T]:
    as_of = timezone.now()
    return CachedRead(compute(), False, as_of)


# --- invalidation -------------------------------------------------------------------------------


def _bump_tenant_version(tenant_id: uuid.UUID | str) -> None:
    key = tenant_version_key(tenant_id)
    try:
        # add() is a no-op when the key exists; incr() is atomic in Redis.
        cache.add(key, 0, timeout=None)
        cache.incr(key)
    except ValueError:
        # The key expired or was evicted between add and incr; start the version again.
        cache.set(key, 1, timeout=None)
    except Exception:  # noqa: BLE001 — a cache outage must never fail a write
        logger.warning("cache invalidation failed for tenant %s", tenant_id, exc_info=True)


def invalidate_tenant(tenant_id: uuid.UUID | str) -> None:
    """Invalidate a tenant's cached reads once the current transaction commits."""
    transaction.on_commit(lambda: _bump_tenant_version(tenant_id))


# --- cached principals (converzia.principal) ------------------------------------------------------


def principal_entry_get(token_digest: str) -> dict[str, Any] | None:
    """The stored entry of a token (whatever its version), or None when absent or Redis is away."""
    entry = _cache_call("principal", "get", principal_token_key(token_digest))
    return entry if isinstance(entry, dict) else None


def principal_cache_available() -> bool:
    """False while the breaker is open (after an error, for CACHE_RETRY_AFTER_S)."""
    return not _breaker.is_open()


def principal_version(user_id: uuid.UUID | str, *, mint: bool) -> str | None:
    """The user's current principal version; with `mint`, one is created when there is none.

    None when Redis is unavailable, or (without `mint`) when the user has no version: nothing cached
    for them can then be trusted, and nothing should be stored.
    """
    key = principal_version_key(user_id)
    version = _cache_call("principal", "get", key)
    if version is _MISSING:
        return None
    if version is None and mint:
        _cache_call("principal", "add", key, uuid.uuid4().hex, timeout=TTL_PRINCIPAL_VERSION)
        version = _cache_call("principal", "get", key)
    return version if isinstance(version, str) else None


def principal_entry_set(token_digest: str, entry: dict[str, Any]) -> None:
    _cache_call("principal", "set", principal_token_key(token_digest), entry, timeout=TTL_PRINCIPAL_ENTRY)


def principal_counted(outcome: str) -> None:
    CACHE_REQUESTS.labels("principal", outcome).inc()


def _bump_principal_versions(user_ids: frozenset[str]) -> None:
    # Always tried, even while the breaker is open: a skipped bump would leave a stale principal
    # trusted for up to TTL_PRINCIPAL once Redis answers again.
    try:
        _client().set_many(
            {principal_version_key(user_id): uuid.uuid4().hex for user_id in user_ids},
            timeout=TTL_PRINCIPAL_VERSION,
        )
    except Exception:  # noqa: BLE001 — a cache outage must never fail a write
        CACHE_REQUESTS.labels("principal", "error").inc()
        _breaker.trip()
        logger.warning("principal invalidation failed for %d user(s)", len(user_ids), exc_info=True)


def invalidate_principals(user_ids: Any) -> None:
    """Invalidate the cached principals of `user_ids` (every token of theirs) now and after commit.

    Now, so the writer's own next request (and a test inside one transaction) sees the change; after
    commit as well, because a concurrent request may have read the old rows and the new version in
    between (it stores under a version that this second bump makes stale).
    """
    ids = frozenset(str(user_id) for user_id in user_ids if user_id is not None)
    if not ids:
        return
    _bump_principal_versions(ids)
    if transaction.get_connection().in_atomic_block:
        transaction.on_commit(lambda: _bump_principal_versions(ids))
