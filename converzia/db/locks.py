"""PostgreSQL advisory locks: every key in one enum, taken through one transaction-scoped helper.

Keys use the single-bigint form of the advisory-lock functions. Should per-object locks keyed by a
hash ever be needed, use the two-int4 form (`pg_advisory_xact_lock(int, int)`): PostgreSQL keeps the
two forms in separate key spaces, so they can never collide with the fixed keys below.
"""

from __future__ import annotations

import enum

from django.db import connection


class AdvisoryLock(enum.IntEnum):
    """Fixed advisory-lock keys. Never renumber or reuse a value: a running old process would then
    share a lock with new code that means something else by it. Retire a key by leaving its number
    unused."""

    TENANT_STATS_REFRESH = 1_001
    # Compaction and rebuild of the lead_offer counters (leads/counters.py; the TRUNCATE trigger of
    # leads/migrations/0008_lead_offer_counts.py takes it by number).
    LEAD_OFFER_COUNTS = 1_002


def advisory_xact_lock_try(key: AdvisoryLock) -> bool:
    """Try to take `key` until the current transaction ends; False if another session holds it.

    Transaction-scoped on purpose: the lock is released at commit or rollback, so a crash or an
    exception can never leave it held on a pooled connection.
    """
    if not connection.in_atomic_block:
        raise RuntimeError("advisory_xact_lock_try() must run inside transaction.atomic().")
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_try_advisory_xact_lock(%s)", [int(key)])
        (acquired,) = cursor.fetchone()
    return bool(acquired)
