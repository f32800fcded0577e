"""The ledger under real concurrency (TARGETS.md reliability 4, decision D7).

Real threads, each with its own PostgreSQL connection, against committed data. The pool stays well
below `max_connections` (100 on the test server, shared with other test runs), so every charge is a
real contender for the tenant's balance lock rather than a connection error.
"""

from __future__ import annotations

import queue
import threading
from collections import Counter
from collections.abc import Callable

import pytest
from django.db import connection

from billing.models import CreditLedger, CreditTransactionType
from billing.services import credit_bonus_grant, credit_consume, credit_refund
from billing.tests.invariants import assert_ledger_consistent, ledger_type_counts
from converzia.tests.factories import TenantFactory
from deliveries.tests.factories import DeliveryFactory
from leads.tests.factories import OfferFactory

T = CreditTransactionType
WORKERS = 40


def run_in_pool(calls: list[Callable[[], object]], *, workers: int = WORKERS) -> list[object]:
    """Run `calls` on `workers` threads released together; return each result or raised exception.

    Each thread keeps one connection for all its calls and closes it at the end, so the pool opens
    exactly `workers` connections.
    """
    todo: queue.Queue[int] = queue.Queue()
    for index in range(len(calls)):
        todo.put(index)
    results: list[object] = [None] * len(calls)
    start = threading.Barrier(workers)

    def worker() -> None:
        try:
            start.wait()
            while True:
                try:
                    index = todo.get_nowait()
                except queue.Empty:
                    return
                try:
                    results[index] = calls[index]()
                except Exception as exc:  # noqa: BLE001 — the outcome is what the test inspects
                    results[index] = exc
        finally:
            connection.close()

    threads = [threading.Thread(target=worker) for _ in range(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert not any(thread.is_alive() for thread in threads)
    return results


def outcomes(results: list[object]) -> Counter[str]:
    return Counter(type(result).__name__ for result in results)


def consume_call(tenant, delivery) -> Callable[[], object]:
    return lambda: credit_consume(
        tenant_id=tenant.pk, delivery_id=delivery.pk, lead_offer_id=delivery.lead_offer_id
    )


@pytest.mark.django_db(transaction=True)
def test_500_concurrent_charges_against_100_credits_charge_exactly_100():
    tenant = TenantFactory()
    credit_bonus_grant(tenant=tenant, amount=100, reason="start")
    offer = OfferFactory(tenant=tenant)
    deliveries = DeliveryFactory.create_batch(500, lead_offer__offer=offer)

    results = run_in_pool([consume_call(tenant, delivery) for delivery in deliveries])

    assert outcomes(results) == {"CreditLedger": 100, "NotEnoughCredits": 400}
    assert assert_ledger_consistent(tenant) == 0
    consumptions = CreditLedger.objects.filter(tenant=tenant, transaction_type=T.CREDIT_CONSUMPTION)
    # Each charge saw the balance the previous one left: 99, 98, ..., 0, each once.
    assert sorted(consumptions.values_list("balance_after", flat=True)) == list(range(100))
    charged = {result.delivery_id for result in results if isinstance(result, CreditLedger)}
    assert set(consumptions.values_list("delivery_id", flat=True)) == charged
    assert ledger_type_counts(tenant) == {T.CREDIT_BONUS: 1, T.CREDIT_CONSUMPTION: 100}


@pytest.mark.django_db(transaction=True)
def test_200_concurrent_charges_of_one_delivery_write_one_row():
    tenant = TenantFactory()
    credit_bonus_grant(tenant=tenant, amount=300, reason="start")
    delivery = DeliveryFactory(lead_offer__offer=OfferFactory(tenant=tenant))

    results = run_in_pool([consume_call(tenant, delivery)] * 200)

    assert outcomes(results) == {"CreditLedger": 1, "AlreadyCharged": 199}
    assert CreditLedger.objects.filter(delivery=delivery).count() == 1
    assert assert_ledger_consistent(tenant) == 299


@pytest.mark.django_db(transaction=True)
def test_concurrent_refunds_of_one_delivery_refund_once():
    tenant = TenantFactory()
    credit_bonus_grant(tenant=tenant, amount=5, reason="start")
    delivery = DeliveryFactory(lead_offer__offer=OfferFactory(tenant=tenant))
    consume_call(tenant, delivery)()

    def refund() -> object:
        return credit_refund(tenant_id=tenant.pk, delivery_id=delivery.pk, reason="spam")

    results = run_in_pool([refund] * 100)

    assert outcomes(results) == {"CreditLedger": 1, "AlreadyRefunded": 99}
    assert ledger_type_counts(tenant) == {T.CREDIT_BONUS: 1, T.CREDIT_CONSUMPTION: 1, T.CREDIT_REFUND: 1}
    assert assert_ledger_consistent(tenant) == 5


@pytest.mark.django_db(transaction=True)
def test_concurrent_mixed_writes_keep_the_chain_exact():
    """Purchases-like top-ups, charges and refunds of one tenant, all at once."""
    tenant = TenantFactory()
    credit_bonus_grant(tenant=tenant, amount=20, reason="start")
    offer = OfferFactory(tenant=tenant)
    charged = DeliveryFactory.create_batch(20, lead_offer__offer=offer)
    for delivery in charged:
        consume_call(tenant, delivery)()
    fresh = DeliveryFactory.create_batch(60, lead_offer__offer=offer)

    calls: list[Callable[[], object]] = []
    for index in range(60):
        calls.append(consume_call(tenant, fresh[index]))
        if index < 20:
            delivery = charged[index]
            calls.append(lambda d=delivery: credit_refund(tenant_id=tenant.pk, delivery_id=d.pk, reason="x"))
        if index % 3 == 0:
            calls.append(lambda: credit_bonus_grant(tenant=tenant, amount=2, reason="top-up"))

    results = run_in_pool(calls)

    counts = outcomes(results)
    # 20 refunds and 20 bonuses of 2 credits bring 60 credits to spend, and 60 charges compete for them.
    assert counts["CreditLedger"] + counts["NotEnoughCredits"] == len(calls)
    assert assert_ledger_consistent(tenant) == 60 - (counts["CreditLedger"] - 40)
