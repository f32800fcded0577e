"""Reads of the billing domain: a tenant's balance summary and its ledger, newest first."""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from django.db.models import QuerySet

from billing.models import CreditLedger, TenantCreditBalance, TenantPricing
from converzia.api.pagination import keyset_page
from converzia.db.prepared import PreparedQuery
from converzia.models import Tenant

_BALANCE_FIELDS = (
    "balance",
    "total_purchased",
    "total_consumed",
    "total_refunded",
    "total_bonus",
    "total_adjusted",
)
_PRICING_FIELDS = ("low_credit_threshold", "cost_per_lead", "currency")


@dataclass(frozen=True)
class BalanceSummary:
    """A tenant's balance with every running total, so the balance reconciles from the totals alone:

        balance == total_purchased - total_consumed + total_refunded + total_bonus + total_adjusted

    One total per ledger transaction type (`billing.services._TOTAL_FIELD`). `total_consumed` counts
    credits charged (a positive number, subtracted); `total_bonus` includes the trial credits (a
    CREDIT_BONUS entry described "Trial credits"); `total_adjusted` keeps its sign.
    """

    balance: int
    low_credit_threshold: int
    total_purchased: int
    total_consumed: int
    total_refunded: int
    total_bonus: int
    total_adjusted: int
    cost_per_lead: Decimal
    currency: str


# One row per tenant each (primary keys): compiled once per process (converzia.db.prepared).
_BALANCE_ROW = PreparedQuery(
    "billing.balance",
    lambda tenant_id: TenantCreditBalance.objects.for_tenant(tenant_id).values(*_BALANCE_FIELDS)[:1],
)
_PRICING_ROW = PreparedQuery(
    "billing.pricing",
    lambda tenant_id: TenantPricing.objects.for_tenant(tenant_id).values(*_PRICING_FIELDS)[:1],
)


def _pricing_defaults() -> dict[str, object]:
    fields = TenantPricing._meta
    return {name: fields.get_field(name).get_default() for name in _PRICING_FIELDS}


def balance_summary_get(*, tenant: Tenant) -> BalanceSummary:
    """The tenant's balance and running totals with its pricing, in two primary-key lookups.

    A tenant with no ledger entry yet reads 0 everywhere; one with no pricing row reads the model
    defaults (threshold 10, 10.00 USD per lead), exactly what the ledger services assume.
    """
    balance = _BALANCE_ROW.first(tenant_id=tenant.pk)
    pricing = _PRICING_ROW.first(tenant_id=tenant.pk)
    return BalanceSummary(
        **(balance or dict.fromkeys(_BALANCE_FIELDS, 0)),
        **(pricing or _pricing_defaults()),
    )


def ledger_list(
    *, tenant: Tenant | uuid.UUID, transaction_types: Iterable[str] | None = None
) -> QuerySet[CreditLedger]:
    """The tenant's ledger entries, newest first, optionally of some transaction types only.

    The order `(-created_at, -id)` is exactly idx_credit_ledger_tenant_created, so a page is an index
    range scan with no sort, however long the ledger.
    """
    entries = CreditLedger.objects.for_tenant(tenant)
    if transaction_types is not None:
        entries = entries.filter(transaction_type__in=list(transaction_types))
    return entries.order_by("-created_at", "-id")


LEDGER_ENTRY_FIELDS = (
    "id",
    "transaction_type",
    "amount",
    "balance_after",
    "description",
    "delivery_id",
    "lead_offer_id",
    "created_at",
)


def _ledger_page_query(
    *,
    tenant_id: uuid.UUID,
    transaction_types: Sequence[str] | None,
    order: Sequence[str],
    after: Sequence[Any] | None,
    limit: int,
) -> QuerySet[Any]:
    entries = ledger_list(tenant=tenant_id, transaction_types=transaction_types)
    return keyset_page(entries.values(*LEDGER_ENTRY_FIELDS), order, after, limit)


# A ledger page as `LEDGER_ENTRY_FIELDS` dicts, for the keyset paginator's `paginate_prepared`.
LEDGER_PAGE = PreparedQuery("billing.ledger.page", _ledger_page_query)
