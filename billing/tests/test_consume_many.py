"""`credit_consume_many`: the dispatcher's batched consumption keeps every rule of `credit_consume`."""

from __future__ import annotations

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from billing.errors import AlreadyCharged, NotEnoughCredits
from billing.models import CreditAlert, CreditAlertType, CreditLedger, TenantCreditBalance
from billing.services import Charge, credit_bonus_grant, credit_consume, credit_consume_many
from billing.tests.invariants import assert_ledger_consistent
from converzia.tests.factories import TenantFactory
from deliveries.tests.factories import DeliveryFactory

pytestmark = pytest.mark.django_db


def charge_for(delivery) -> Charge:
    return Charge(tenant_id=delivery.tenant_id, delivery_id=delivery.pk, lead_offer_id=delivery.lead_offer_id)


def test_a_batch_over_several_tenants_charges_each_delivery_once_with_exact_running_balances():
    rich, poor, broke = TenantFactory(), TenantFactory(), TenantFactory()
    credit_bonus_grant(tenant=rich, amount=20, reason="test")
    credit_bonus_grant(tenant=poor, amount=2, reason="test")
    rich_deliveries = [DeliveryFactory(lead_offer__offer__tenant=rich) for _ in range(3)]
    poor_deliveries = [DeliveryFactory(lead_offer__offer__tenant=poor) for _ in range(3)]
    broke_delivery = DeliveryFactory(lead_offer__offer__tenant=broke)
    earlier = rich_deliveries[0]
    credit_consume(tenant_id=rich.pk, delivery_id=earlier.pk, lead_offer_id=earlier.lead_offer_id)

    charges = [charge_for(d) for d in rich_deliveries + poor_deliveries + [broke_delivery]]
    # The same delivery twice in one batch is charged once.
    charges.append(charge_for(rich_deliveries[1]))
    results = credit_consume_many(charges)

    assert isinstance(results[earlier.pk], AlreadyCharged)
    assert all(isinstance(results[d.pk], CreditLedger) for d in rich_deliveries[1:] + poor_deliveries[:2])
    assert isinstance(results[poor_deliveries[2].pk], NotEnoughCredits)
    assert isinstance(results[broke_delivery.pk], NotEnoughCredits)
    assert results[rich_deliveries[1].pk].pk == charges[1].entry_id, "the row carries the id chosen up front"
    balances = dict(TenantCreditBalance.objects.values_list("tenant_id", "balance"))
    assert (balances[rich.pk], balances[poor.pk], balances[broke.pk]) == (17, 0, 0)
    for tenant in (rich, poor, broke):
        assert_ledger_consistent(tenant)
    assert (
        CreditLedger.objects.filter(
            delivery__in=rich_deliveries, transaction_type="CREDIT_CONSUMPTION"
        ).count()
        == 3
    )
    # The poor tenant reached 0 in this batch: one ZERO_CREDITS alert, on its last entry.
    alert = CreditAlert.objects.get(tenant=poor)
    assert (alert.alert_type, alert.balance, alert.ledger_entry_id) == (
        CreditAlertType.ZERO_CREDITS,
        0,
        results[poor_deliveries[1].pk].pk,
    )


def test_a_batch_costs_the_same_few_statements_whatever_its_size():
    tenants = [TenantFactory() for _ in range(3)]
    for tenant in tenants:
        credit_bonus_grant(tenant=tenant, amount=100, reason="test")
    small = [charge_for(DeliveryFactory(lead_offer__offer__tenant=t)) for t in tenants]
    large = [charge_for(DeliveryFactory(lead_offer__offer__tenant=t)) for t in tenants for _ in range(20)]

    with CaptureQueriesContext(connection) as small_run:
        credit_consume_many(small)
    with CaptureQueriesContext(connection) as large_run:
        credit_consume_many(large)

    # Lock balances, "already charged?", INSERT ledger rows, UPDATE balances (+ savepoint pair).
    assert len(large_run) == len(small_run) <= 6
