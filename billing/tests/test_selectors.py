"""billing.selectors: the balance summary and the ledger list (and the index that serves it)."""

from __future__ import annotations

import dataclasses
import datetime as dt
from decimal import Decimal

import pytest
from django.db import connection, transaction
from django.utils import timezone

from billing.models import CreditLedger, CreditTransactionType
from billing.selectors import BalanceSummary, balance_summary_get, ledger_list
from billing.services import (
    _TOTAL_FIELD,
    credit_adjust,
    credit_bonus_grant,
    credit_consume,
    credit_purchase_record,
    credit_refund,
)
from billing.tests.factories import TenantPricingFactory
from converzia.tests.factories import StaffUserFactory, TenantFactory
from deliveries.tests.factories import DeliveryFactory
from leads.tests.factories import OfferFactory

pytestmark = pytest.mark.django_db
T = CreditTransactionType


def test_summary_of_a_tenant_without_balance_or_pricing_rows(django_assert_num_queries):
    tenant = TenantFactory()

    with django_assert_num_queries(2):
        summary = balance_summary_get(tenant=tenant)

    assert summary == BalanceSummary(
        balance=0,
        low_credit_threshold=10,
        total_purchased=0,
        total_consumed=0,
        total_refunded=0,
        total_bonus=0,
        total_adjusted=0,
        cost_per_lead=Decimal("10.00"),
        currency="USD",
    )


def test_summary_reads_the_balance_row_and_the_pricing_row():
    tenant = TenantFactory()
    TenantPricingFactory(
        tenant=tenant, low_credit_threshold=4, cost_per_lead=Decimal("12.50"), currency="ARS"
    )
    credit_purchase_record(tenant=tenant, credits=10, total=Decimal("80"))
    credit_bonus_grant(tenant=tenant, amount=3, reason="gift")
    deliveries = DeliveryFactory.create_batch(3, lead_offer__offer=OfferFactory(tenant=tenant))
    for delivery in deliveries:
        credit_consume(tenant_id=tenant.pk, delivery_id=delivery.pk, lead_offer_id=delivery.lead_offer_id)
    credit_refund(tenant_id=tenant.pk, delivery_id=deliveries[0].pk, reason="spam")
    credit_adjust(tenant=tenant, amount=-2, reason="fix", actor=StaffUserFactory())
    other = TenantFactory()
    credit_bonus_grant(tenant=other, amount=99, reason="not mine")

    assert balance_summary_get(tenant=tenant) == BalanceSummary(
        balance=9,
        low_credit_threshold=4,
        total_purchased=10,
        total_consumed=3,
        total_refunded=1,
        total_bonus=3,
        total_adjusted=-2,
        cost_per_lead=Decimal("12.50"),
        currency="ARS",
    )


def test_summary_carries_every_running_total_so_the_balance_reconciles():
    # A total left out of the summary is a balance the tenant cannot add up (issue 14.6).
    assert set(_TOTAL_FIELD.values()) <= {field.name for field in dataclasses.fields(BalanceSummary)}


def test_ledger_list_is_the_tenants_entries_newest_first_with_ties_broken_by_id():
    tenant, other = TenantFactory(), TenantFactory()
    moment = timezone.now() - dt.timedelta(days=1)
    # Rows written directly (the selector does not care how): two share a created_at, the id decides.
    moments = [moment, moment, moment - dt.timedelta(seconds=1), moment + dt.timedelta(seconds=1), moment]
    rows = CreditLedger.objects.bulk_create(
        CreditLedger(
            tenant=tenant, transaction_type=T.CREDIT_BONUS, amount=1, balance_after=n + 1, created_at=at
        )
        for n, at in enumerate(moments)
    )
    credit_bonus_grant(tenant=other, amount=5, reason="not mine")

    listed = list(ledger_list(tenant=tenant))

    expected = sorted(rows, key=lambda entry: (entry.created_at, entry.pk), reverse=True)
    assert [entry.pk for entry in listed] == [entry.pk for entry in expected]


def test_ledger_list_filters_by_transaction_types():
    tenant = TenantFactory()
    credit_purchase_record(tenant=tenant, credits=5, total=Decimal("40"))
    credit_bonus_grant(tenant=tenant, amount=1, reason="x")
    credit_adjust(tenant=tenant, amount=-1, reason="x", actor=StaffUserFactory())

    purchases = ledger_list(tenant=tenant, transaction_types=[T.CREDIT_PURCHASE])
    two_kinds = ledger_list(tenant=tenant, transaction_types=[T.CREDIT_BONUS, T.CREDIT_ADJUSTMENT])
    none = ledger_list(tenant=tenant, transaction_types=[T.CREDIT_REFUND])

    assert [entry.transaction_type for entry in purchases] == [T.CREDIT_PURCHASE]
    assert [entry.transaction_type for entry in two_kinds] == [T.CREDIT_ADJUSTMENT, T.CREDIT_BONUS]
    assert list(none) == []


def test_a_ledger_page_is_an_index_scan_without_a_sort():
    tenant = TenantFactory()
    for _ in range(3):
        credit_bonus_grant(tenant=tenant, amount=1, reason="x")
    page = ledger_list(tenant=tenant)[:51]

    with transaction.atomic(), connection.cursor() as cursor:
        # A tiny test table would be read sequentially; what matters is that the index can serve the
        # order, so the planner is told to avoid a sequential scan if it can.
        cursor.execute("SET LOCAL enable_seqscan = off")
        plan = page.explain()

    assert "idx_credit_ledger_tenant_created" in plan
    assert "Sort" not in plan
