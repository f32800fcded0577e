"""Exact per-tenant lead_offer counts by status and DISQUALIFIED category, maintained, not counted.

Counting a whale's 500,000 index entries per stats read cost ~65 ms; these read ~20 rows.

- Writes: the `lead_offer_counts_track` trigger (leads/migrations/0008_lead_offer_counts.py) appends
  a -1 row for the old (status, category) and a +1 row for the new one to `lead_offer_count_deltas`
  on every insert, delete and counter-moving update of lead_offers, in the writer's transaction.
  Append-only: no two transactions ever update the same row, so no waits and no deadlocks.
- Compaction (`lead_offer_counts_compact`, a periodic job) folds deltas into `lead_offer_counts`.
- Reads (`lead_offer_counts_for_tenant`) sum both tables in ONE statement. `COUNTS_READ_SQL` is that
  statement for readers that embed it in a larger one (portal.stats reads every live number at once),
  and `lead_offer_counts_from_rows` folds its rows: one definition either way.

Why the read is exact under READ COMMITTED: one statement reads both tables under one snapshot. A
writer's deltas commit with its lead_offers rows, so they are visible exactly when those rows are. A
compaction deletes deltas and adds them to the totals in one statement of one transaction: the
snapshot sees either the deltas (and the totals without them) or the totals with them, never both
or neither. So the sum equals `SELECT status, count(*) ... GROUP BY` under the same snapshot.

Why compaction is exact even when two run at once (the advisory lock makes that rare; the statement
does not rely on it): `FOR UPDATE SKIP LOCKED` gives each compaction a disjoint set of delta rows, and
a row is added by the compaction whose DELETE removed it and that committed; a rolled-back one leaves
its rows in place. `ON CONFLICT DO UPDATE SET n = n + excluded.n` adds to the latest committed total
(READ COMMITTED re-reads the conflicting row after waiting for its locker), so increments commute;
the totals are upserted in key order, so two compactions wait on each other but cannot deadlock.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from django.db import connection, transaction

from converzia.db.locks import AdvisoryLock, advisory_xact_lock_try
from converzia.models import Tenant
from leads.models import LeadOfferStatus

# Deltas folded per transaction: bounds a compaction's locks and WAL burst after a bulk update.
COMPACT_BATCH = 50_000

# Rows of (status, disqualification_category, n) for the tenant `%(tenant)s`, under one snapshot.
COUNTS_READ_SQL = """
SELECT status, disqualification_category, sum(n)::bigint AS n
FROM (
    SELECT status, disqualification_category, n FROM lead_offer_counts WHERE tenant_id = %(tenant)s
    UNION ALL
    SELECT status, disqualification_category, delta FROM lead_offer_count_deltas WHERE tenant_id = %(tenant)s
) AS counts
GROUP BY status, disqualification_category
"""

_COMPACT_SQL = """
WITH moved AS (
    DELETE FROM lead_offer_count_deltas
    WHERE id IN (
        SELECT id FROM lead_offer_count_deltas ORDER BY id LIMIT %(batch)s FOR UPDATE SKIP LOCKED
    )
    RETURNING tenant_id, status, disqualification_category, delta
), folded AS (
    INSERT INTO lead_offer_counts AS total (tenant_id, status, disqualification_category, n)
    SELECT tenant_id, status, disqualification_category, sum(delta)
    FROM moved
    GROUP BY tenant_id, status, disqualification_category
    HAVING sum(delta) <> 0
    ORDER BY tenant_id, status, disqualification_category
    ON CONFLICT (tenant_id, status, disqualification_category) DO UPDATE SET n = total.n + excluded.n
    RETURNING 1
)
SELECT (SELECT count(*) FROM moved), (SELECT count(*) FROM folded)
"""

# SHARE on lead_offers waits for every open writer (their deltas are then committed) and keeps new
# ones out until commit; readers are not blocked.
_REBUILD_SQL = (
    "LOCK TABLE lead_offers IN SHARE MODE",
    "DELETE FROM lead_offer_count_deltas",
    "DELETE FROM lead_offer_counts",
    """
    INSERT INTO lead_offer_counts (tenant_id, status, disqualification_category, n)
    SELECT tenant_id, status,
           CASE WHEN status = 'DISQUALIFIED' THEN disqualification_category ELSE '' END, count(*)
    FROM lead_offers
    GROUP BY 1, 2, 3
    """,
)


@dataclass(frozen=True)
class LeadOfferCounts:
    """A tenant's lead_offers: how many per status, and DISQUALIFIED ones per stored category
    (the raw value: '' or an unknown category is the caller's to fold)."""

    by_status: dict[str, int]
    disqualified_by_category: dict[str, int]

    @property
    def total(self) -> int:
        return sum(self.by_status.values())


def lead_offer_counts_for_tenant(*, tenant: Tenant) -> LeadOfferCounts:
    """One statement, ~20 rows whatever the tenant's size (the primary key of lead_offer_counts and
    idx_lead_offer_deltas_tenant). Zero counts are left out."""
    with connection.cursor() as cursor:
        cursor.execute(COUNTS_READ_SQL, {"tenant": tenant.pk})
        return lead_offer_counts_from_rows(cursor.fetchall())


def lead_offer_counts_from_rows(rows: Iterable[Sequence[Any]]) -> LeadOfferCounts:
    """The counts from the rows of `COUNTS_READ_SQL`. Zero counts are left out."""
    by_status: dict[str, int] = {}
    by_category: dict[str, int] = {}
    for status, category, n in rows:
        if not n:
            continue
        by_status[status] = by_status.get(status, 0) + n
        if status == LeadOfferStatus.DISQUALIFIED:
            by_category[category] = n
    return LeadOfferCounts(by_status=by_status, disqualified_by_category=by_category)


def lead_offer_counts_compact(*, batch: int = COMPACT_BATCH) -> int | None:
    """Fold every pending delta into the totals, `batch` at a time (one transaction each).

    Returns the number of deltas folded, or None when another compaction or a rebuild held the lock
    (it folds the same deltas).
    """
    folded = 0
    while True:
        with transaction.atomic():
            if not advisory_xact_lock_try(AdvisoryLock.LEAD_OFFER_COUNTS):
                return folded or None
            with connection.cursor() as cursor:
                cursor.execute(_COMPACT_SQL, {"batch": batch})
                moved, _groups = cursor.fetchone()
        folded += moved
        if moved < batch:
            return folded


def lead_offer_counts_rebuild() -> None:
    """Recount the totals from lead_offers and drop every delta: after a load that bypassed the
    trigger (seed_demo's `session_replication_role = replica`), or to repair. Blocks lead_offers
    writes (not reads) while it counts: about a second at 2M rows."""
    with transaction.atomic(), connection.cursor() as cursor:
        # Waits for a compaction in flight rather than racing it over the same rows.
        cursor.execute("SELECT pg_advisory_xact_lock(%s)", [int(AdvisoryLock.LEAD_OFFER_COUNTS)])
        for statement in _REBUILD_SQL:
            cursor.execute(statement)


__all__ = [
    "COUNTS_READ_SQL",
    "LeadOfferCounts",
    "lead_offer_counts_compact",
    "lead_offer_counts_for_tenant",
    "lead_offer_counts_from_rows",
    "lead_offer_counts_rebuild",
]
