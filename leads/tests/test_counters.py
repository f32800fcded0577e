"""The maintained lead_offer counters (leads/counters.py) always equal a `GROUP BY` of lead_offers.

Real PostgreSQL: the trigger, compaction and the one-statement read are SQL; the concurrency tests
commit from several threads (each with its own connection) while compactions run.
"""

from __future__ import annotations

import random
import threading
from collections import Counter

import pytest
from django.db import connection, transaction
from django.test.utils import CaptureQueriesContext

from converzia.db.locks import AdvisoryLock, advisory_xact_lock_try
from converzia.tests.factories import TenantFactory
from leads import counters
from leads.counters import (
    lead_offer_counts_compact,
    lead_offer_counts_for_tenant,
    lead_offer_counts_rebuild,
)
from leads.models import (
    DisqualificationCategory,
    LeadOffer,
    LeadOfferCount,
    LeadOfferCountDelta,
    LeadOfferStatus,
)
from leads.services import lead_offer_transition
from leads.tasks import compact_lead_offer_counts
from leads.tests.factories import LeadOfferFactory, OfferFactory

S = LeadOfferStatus
DQ = DisqualificationCategory


def sql_counts(tenant) -> tuple[dict[str, int], dict[str, int]]:
    """By status, and DISQUALIFIED rows by category, counted from lead_offers."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT status, count(*) FROM lead_offers WHERE tenant_id = %s GROUP BY 1", [tenant.pk]
        )
        by_status = dict(cursor.fetchall())
        cursor.execute(
            "SELECT disqualification_category, count(*) FROM lead_offers"
            " WHERE tenant_id = %s AND status = 'DISQUALIFIED' GROUP BY 1",
            [tenant.pk],
        )
        return by_status, dict(cursor.fetchall())


def counter_counts(tenant) -> tuple[dict[str, int], dict[str, int]]:
    counts = lead_offer_counts_for_tenant(tenant=tenant)
    return counts.by_status, counts.disqualified_by_category


def assert_exact(*tenants) -> None:
    for tenant in tenants:
        assert counter_counts(tenant) == sql_counts(tenant), tenant.pk


def assert_exact_before_and_after_compaction(*tenants) -> None:
    assert_exact(*tenants)
    lead_offer_counts_compact()
    assert not LeadOfferCountDelta.objects.exists()
    assert_exact(*tenants)


# --- single-connection changes ----------------------------------------------------------------------


@pytest.mark.django_db
def test_inserts_count_per_tenant_and_status():
    offer, other = OfferFactory(), OfferFactory()
    LeadOfferFactory.create_batch(3, offer=offer)
    LeadOfferFactory.create_batch(2, offer=offer, status=S.PENDING_MAPPING)
    LeadOfferFactory(offer=other, status=S.DISQUALIFIED, disqualification_category=DQ.WRONG_ZONE)
    LeadOfferFactory(offer=None, tenant=offer.tenant)  # unmapped rows count too

    assert counter_counts(offer.tenant) == ({S.TO_BE_CONTACTED: 4, S.PENDING_MAPPING: 2}, {})
    assert counter_counts(other.tenant) == ({S.DISQUALIFIED: 1}, {DQ.WRONG_ZONE: 1})
    assert_exact_before_and_after_compaction(offer.tenant, other.tenant)


@pytest.mark.django_db
def test_transitions_and_disqualification_categories_move_the_counts():
    offer = OfferFactory()
    rows = LeadOfferFactory.create_batch(4, offer=offer)
    tenant = offer.tenant
    lead_offer_transition(lead_offer=rows[0], to_status=S.CONTACTED)
    lead_offer_transition(
        lead_offer=rows[1], to_status=S.DISQUALIFIED, disqualification_category=DQ.NO_RESPONSE
    )
    lead_offer_transition(lead_offer=rows[2], to_status=S.DISQUALIFIED)  # OTHER by default
    assert_exact(tenant)
    lead_offer_counts_compact()

    # A category edit of a DISQUALIFIED row moves it between categories…
    LeadOffer.objects.filter(pk=rows[1].pk).update(disqualification_category=DQ.PRICE_TOO_HIGH)
    # …one of another status writes nothing (categories are only counted for DISQUALIFIED rows)…
    before = LeadOfferCountDelta.objects.count()
    LeadOffer.objects.filter(pk=rows[0].pk).update(disqualification_category=DQ.DUPLICATE)
    # …and neither does an update of columns the counters ignore.
    LeadOffer.objects.filter(tenant=tenant).update(contact_attempts=3)
    assert LeadOfferCountDelta.objects.count() == before
    # Leaving DISQUALIFIED takes the row out of its category.
    lead_offer_transition(lead_offer=rows[2], to_status=S.REACTIVATION)

    assert counter_counts(tenant) == (
        {S.CONTACTED: 1, S.DISQUALIFIED: 1, S.REACTIVATION: 1, S.TO_BE_CONTACTED: 1},
        {DQ.PRICE_TOO_HIGH: 1},
    )
    assert_exact_before_and_after_compaction(tenant)


@pytest.mark.django_db
def test_a_bulk_update_and_a_tenant_move_are_counted():
    offer, other = OfferFactory(), OfferFactory()
    rows = LeadOfferFactory.create_batch(5, offer=offer)
    LeadOffer.objects.filter(pk__in=[r.pk for r in rows[:3]]).update(status=S.CONTACTED)
    LeadOffer.objects.filter(pk=rows[4].pk).update(tenant=other.tenant, offer=other)
    assert counter_counts(offer.tenant) == ({S.CONTACTED: 3, S.TO_BE_CONTACTED: 1}, {})
    assert counter_counts(other.tenant) == ({S.TO_BE_CONTACTED: 1}, {})
    assert_exact_before_and_after_compaction(offer.tenant, other.tenant)


@pytest.mark.django_db
def test_deletes_and_truncate_are_counted():
    offer = OfferFactory()
    rows = LeadOfferFactory.create_batch(4, offer=offer, status=S.DISQUALIFIED, disqualification_category="")
    lead_offer_counts_compact()
    rows[0].delete()
    LeadOffer.objects.filter(pk__in=[rows[1].pk, rows[2].pk]).delete()
    assert counter_counts(offer.tenant) == ({S.DISQUALIFIED: 1}, {"": 1})
    assert_exact_before_and_after_compaction(offer.tenant)

    # TRUNCATE fires no row trigger; its statement trigger empties the counters.
    with connection.cursor() as cursor:
        cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")  # no deferred FK checks may be pending
        cursor.execute("TRUNCATE lead_offers CASCADE")
    assert not LeadOfferCount.objects.exists() and not LeadOfferCountDelta.objects.exists()
    assert counter_counts(offer.tenant) == ({}, {})


@pytest.mark.django_db
def test_a_rolled_back_transaction_leaves_no_count():
    offer = OfferFactory()
    LeadOfferFactory(offer=offer)
    with pytest.raises(RuntimeError), transaction.atomic():
        LeadOfferFactory.create_batch(3, offer=offer)
        LeadOffer.objects.filter(tenant=offer.tenant).update(status=S.CONTACTED)
        raise RuntimeError("roll back")
    assert counter_counts(offer.tenant) == ({S.TO_BE_CONTACTED: 1}, {})
    assert_exact_before_and_after_compaction(offer.tenant)


@pytest.mark.django_db
def test_compaction_folds_in_batches_and_drops_zero_sums():
    offer = OfferFactory()
    rows = LeadOfferFactory.create_batch(7, offer=offer)
    LeadOffer.objects.filter(pk__in=[r.pk for r in rows[:2]]).update(status=S.CONTACTED)
    assert LeadOfferCountDelta.objects.count() == 11

    assert lead_offer_counts_compact(batch=3) == 11
    assert not LeadOfferCountDelta.objects.exists()
    assert dict(LeadOfferCount.objects.filter(tenant=offer.tenant).values_list("status", "n")) == {
        S.TO_BE_CONTACTED: 5,
        S.CONTACTED: 2,
    }
    # +1 and -1 for the same counter in one batch fold to nothing: no row is written.
    LeadOfferFactory(offer=offer, status=S.SCORED).delete()
    assert lead_offer_counts_compact() == 2
    assert not LeadOfferCount.objects.filter(status=S.SCORED).exists()
    assert_exact(offer.tenant)


@pytest.mark.django_db
def test_rebuild_recounts_rows_written_without_triggers():
    offer = OfferFactory()
    LeadOfferFactory.create_batch(2, offer=offer)
    with connection.cursor() as cursor:
        # What seed_demo's COPY does: no trigger fires.
        cursor.execute("SET LOCAL session_replication_role = replica")
        LeadOfferFactory.create_batch(
            3, offer=offer, status=S.DISQUALIFIED, disqualification_category=DQ.OTHER
        )
        cursor.execute("SET LOCAL session_replication_role = origin")
    assert counter_counts(offer.tenant) == ({S.TO_BE_CONTACTED: 2}, {})

    lead_offer_counts_rebuild()

    assert not LeadOfferCountDelta.objects.exists()
    assert counter_counts(offer.tenant) == ({S.TO_BE_CONTACTED: 2, S.DISQUALIFIED: 3}, {DQ.OTHER: 3})
    assert_exact(offer.tenant)


@pytest.mark.django_db
def test_the_read_is_one_statement():
    tenant = OfferFactory().tenant
    with CaptureQueriesContext(connection) as queries:
        lead_offer_counts_for_tenant(tenant=tenant)
    assert len(queries) == 1
    assert "lead_offer_counts" in queries[0]["sql"] and "lead_offer_count_deltas" in queries[0]["sql"]


# --- concurrency ----------------------------------------------------------------------------------

# Each path is legal in the transition matrix; every step is one committed transaction.
PATHS = [
    [S.CONTACTED, S.ENGAGED, S.QUALIFYING, S.SCORED, S.LEAD_READY, S.SENT_TO_DEVELOPER],
    [S.CONTACTED, S.DISQUALIFIED, S.REACTIVATION, S.ENGAGED, S.DISQUALIFIED],
    [S.COOLING, S.REACTIVATION, S.CONTACTED, S.COOLING, S.STOPPED],
    [S.CONTACTED, S.ENGAGED, S.HUMAN_HANDOFF, S.QUALIFYING, S.DISQUALIFIED, S.REACTIVATION],
]


def _in_thread(errors: list[BaseException], fn, *args) -> threading.Thread:
    def run() -> None:
        try:
            fn(*args)
        except BaseException as exc:  # noqa: BLE001 — reported by the test thread
            errors.append(exc)
        finally:
            connection.close()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def _compact_statement_without_the_lock(batch: int) -> None:
    # The compaction statement alone, so two of them really overlap (the function's advisory lock
    # would make one of them skip): exactness must not depend on that lock.
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(counters._COMPACT_SQL, {"batch": batch})


@pytest.mark.django_db(transaction=True)
def test_concurrent_transitions_inserts_and_compactions_stay_exact():
    tenant, other = TenantFactory(), TenantFactory()
    offer, other_offer = OfferFactory(tenant=tenant), OfferFactory(tenant=other)
    rows = LeadOfferFactory.create_batch(24, offer=offer)
    stop = threading.Event()
    errors: list[BaseException] = []
    snapshot_checks = Counter()

    def walk(chunk: list[LeadOffer], seed: int) -> None:
        rnd = random.Random(seed)
        for position, row in enumerate(chunk):
            for to_status in PATHS[(seed + position) % len(PATHS)]:
                category = rnd.choice(DQ.values) if to_status == S.DISQUALIFIED else ""
                lead_offer_transition(lead_offer=row, to_status=to_status, disqualification_category=category)
            # Some rows leave, and new ones arrive, for both tenants.
            if position % 3 == 0:
                # An explicit phone: factory sequences are not thread-safe.
                LeadOfferFactory(
                    offer=rnd.choice([offer, other_offer]), lead__phone=f"+549117{seed}{position:06d}"
                )
            if position % 4 == 1:
                LeadOffer.objects.filter(pk=row.pk).delete()

    def compact_forever(raw: bool) -> None:
        while not stop.is_set():
            if raw:
                _compact_statement_without_the_lock(batch=5)
            else:
                lead_offer_counts_compact(batch=7)

    def check_snapshots_forever() -> None:
        # Counters and GROUP BY under ONE snapshot must agree at every instant, mid-compaction too.
        while not stop.is_set():
            with transaction.atomic():
                with connection.cursor() as cursor:
                    cursor.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
                for each in (tenant, other):
                    assert counter_counts(each) == sql_counts(each)
                    snapshot_checks[each.pk] += 1

    background = [
        _in_thread(errors, compact_forever, True),
        _in_thread(errors, compact_forever, True),
        _in_thread(errors, compact_forever, False),
        _in_thread(errors, check_snapshots_forever),
    ]
    walkers = [_in_thread(errors, walk, rows[i::4], i) for i in range(4)]
    for thread in walkers:
        thread.join(timeout=120)
    stop.set()
    for thread in background:
        thread.join(timeout=30)

    assert errors == []
    assert not any(thread.is_alive() for thread in walkers + background)
    assert snapshot_checks[tenant.pk] > 0
    assert_exact_before_and_after_compaction(tenant, other)
    assert sum(counter_counts(tenant)[0].values()) == LeadOffer.objects.filter(tenant=tenant).count()


@pytest.mark.django_db(transaction=True)
def test_opposite_transitions_in_open_transactions_never_wait_on_each_other():
    """With one counter row per status, A (TO_BE_CONTACTED → CONTACTED, then CONTACTED → ENGAGED)
    and B (CONTACTED → ENGAGED, then TO_BE_CONTACTED → CONTACTED) would lock the CONTACTED counter
    in opposite orders and one would wait (then deadlock); deltas are appended, so neither waits."""
    offer = OfferFactory()
    waiting = LeadOfferFactory.create_batch(2, offer=offer)
    contacted = LeadOfferFactory.create_batch(2, offer=offer, status=S.CONTACTED)
    both_moved_once = threading.Barrier(2, timeout=10)
    errors: list[BaseException] = []

    def mover(first: tuple[LeadOffer, str], second: tuple[LeadOffer, str]) -> None:
        with transaction.atomic():
            with connection.cursor() as cursor:
                cursor.execute("SET LOCAL lock_timeout = '5s'")
            lead_offer_transition(lead_offer=first[0], to_status=first[1])
            both_moved_once.wait()  # both transactions are open and have moved one row
            lead_offer_transition(lead_offer=second[0], to_status=second[1])

    threads = [
        _in_thread(errors, mover, (waiting[0], S.CONTACTED), (contacted[0], S.ENGAGED)),
        _in_thread(errors, mover, (contacted[1], S.ENGAGED), (waiting[1], S.CONTACTED)),
    ]
    for thread in threads:
        thread.join(timeout=30)

    assert errors == []
    assert counter_counts(offer.tenant) == ({S.CONTACTED: 2, S.ENGAGED: 2}, {})
    assert_exact_before_and_after_compaction(offer.tenant)


# --- the periodic job -----------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_the_periodic_job_folds_the_deltas_and_skips_while_the_lock_is_held():
    offer = OfferFactory()
    LeadOfferFactory.create_batch(3, offer=offer)
    held, release = threading.Event(), threading.Event()
    errors: list[BaseException] = []

    def hold_the_lock() -> None:
        with transaction.atomic():
            assert advisory_xact_lock_try(AdvisoryLock.LEAD_OFFER_COUNTS)
            held.set()
            release.wait(10)

    holder = _in_thread(errors, hold_the_lock)
    assert held.wait(10)
    assert compact_lead_offer_counts(timestamp=0) is None  # a compaction (or rebuild) is running
    release.set()
    holder.join(10)

    assert compact_lead_offer_counts(timestamp=0) == 3
    assert errors == [] and not LeadOfferCountDelta.objects.exists()
    assert_exact(offer.tenant)
