"""Cache keys and invalidation (decision D9). Every cache key is built here.

Invalidation bumps a per-tenant version after commit (no `KEYS`, no pattern deletes): keys embed the
version, so old entries are simply never read again and expire by TTL.
"""

from __future__ import annotations

import logging
import uuid

from django.core.cache import cache
from django.db import transaction

logger = logging.getLogger(__name__)

TTL_STATS = 60
TTL_FUNNEL = 120
TTL_REVENUE = 300


def tenant_version_key(tenant_id: uuid.UUID | str) -> str:
    return f"tenant:{tenant_id}:v"


def tenant_version(tenant_id: uuid.UUID | str) -> int:
    version = cache.get(tenant_version_key(tenant_id))
    return int(version) if version is not None else 0


def tenant_stats_key(tenant_id: uuid.UUID | str) -> str:
    return f"tenant:{tenant_id}:stats:v{tenant_version(tenant_id)}"


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
