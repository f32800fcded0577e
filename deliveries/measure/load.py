"""Data and polling for `manage.py measure_deliveries` (kept apart so the command stays thin)."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field

from django.db import transaction
from django.db.models import Count
from django.utils import timezone

from billing.models import CreditLedger, CreditTransactionType
from billing.services import credit_bonus_grant
from converzia.models import Tenant, TenantStatus
from deliveries.models import Delivery, DeliveryDestination, DeliveryStatus
from deliveries.services.lifecycle import delivery_payload_build
from leads.models import Lead, LeadOffer, Offer, OfferStatus

TENANT_SLUG_PREFIX = "measure-deliveries-"


def measure_tenants_ensure(*, count: int, receiver_url: str, credits: int) -> list[Tenant]:
    """`count` measurement tenants, each with an offer, an active destination at `receiver_url` and at
    least `credits` credits."""
    tenants = []
    for n in range(count):
        tenant, _ = Tenant.objects.get_or_create(
            slug=f"{TENANT_SLUG_PREFIX}{n}",
            defaults={"name": f"Measure deliveries {n}", "status": TenantStatus.ACTIVE},
        )
        Offer.objects.get_or_create(
            tenant=tenant, slug="measure", defaults={"name": "Measure offer", "status": OfferStatus.ACTIVE}
        )
        DeliveryDestination.objects.update_or_create(
            tenant=tenant, defaults={"url": receiver_url, "is_active": True, "disabled_at": None}
        )
        balance = getattr(getattr(tenant, "credit_balance", None), "balance", 0)
        if balance < credits:
            credit_bonus_grant(tenant=tenant, amount=credits - balance, reason="measure_deliveries")
        tenants.append(tenant)
    return tenants


def _next_phone_numbers(count: int) -> list[str]:
    # Valid Buenos Aires mobiles, never used before in this database.
    first = 20_000_000 + Lead.objects.count()
    return [f"+54911{first + i}" for i in range(count)]


@transaction.atomic
def lead_offers_create(*, tenants: list[Tenant], count: int, status: str) -> list[LeadOffer]:
    """`count` new people, each with a lead_offer in `status`, spread round-robin over `tenants`."""
    offers = {o.tenant_id: o for o in Offer.objects.filter(tenant__in=tenants, slug="measure")}
    leads = Lead.objects.bulk_create(
        [
            Lead(phone=phone, full_name=f"Measure {phone[-6:]}", email=f"m{phone[-8:]}@example.com")
            for phone in _next_phone_numbers(count)
        ]
    )
    lead_offers = [
        LeadOffer(
            lead=lead,
            tenant=tenants[i % len(tenants)],
            offer=offers[tenants[i % len(tenants)].pk],
            status=status,
            score_total=90,
            qualification_fields={"name": lead.full_name, "zone": ["Palermo"], "timing": "3 months"},
        )
        for i, lead in enumerate(leads)
    ]
    return LeadOffer.objects.bulk_create(lead_offers)


@transaction.atomic
def deliveries_create(*, lead_offers: list[LeadOffer], due: bool) -> list[uuid.UUID]:
    """A PENDING delivery per LEAD_READY lead_offer, with its real payload; due now or parked."""
    now = timezone.now()
    deliveries = [
        Delivery(
            lead_offer=lo,
            tenant_id=lo.tenant_id,
            offer_id=lo.offer_id,
            payload=delivery_payload_build(lo),
            next_attempt_at=now if due else None,
        )
        for lo in lead_offers
    ]
    return [d.pk for d in Delivery.objects.bulk_create(deliveries)]


@dataclass
class DrainResult:
    delivered: int
    statuses: dict[str, int]
    last_delivered_at: float | None
    timed_out: bool
    consumptions: int = 0
    double_charges: int = 0
    delivered_at: dict[str, float] = field(default_factory=dict)


def wait_delivered(*, delivery_ids: list[uuid.UUID], timeout_s: float, poll_s: float = 0.2) -> DrainResult:
    deadline = time.monotonic() + timeout_s
    rows = Delivery.objects.filter(pk__in=delivery_ids)
    while True:
        delivered = rows.filter(status=DeliveryStatus.DELIVERED).count()
        if delivered == len(delivery_ids) or time.monotonic() > deadline:
            break
        time.sleep(poll_s)
    statuses = dict(rows.values("status").annotate(n=Count("pk")).values_list("status", "n"))
    delivered_at = {
        str(pk): ts.timestamp()
        for pk, ts in rows.filter(delivered_at__isnull=False).values_list("pk", "delivered_at")
    }
    charges = (
        CreditLedger.objects.filter(
            delivery_id__in=delivery_ids, transaction_type=CreditTransactionType.CREDIT_CONSUMPTION
        )
        .values("delivery_id")
        .annotate(n=Count("pk"))
    )
    return DrainResult(
        delivered=delivered,
        statuses=statuses,
        last_delivered_at=max(delivered_at.values(), default=None),
        timed_out=delivered < len(delivery_ids),
        consumptions=sum(c["n"] for c in charges),
        double_charges=sum(1 for c in charges if c["n"] > 1),
        delivered_at=delivered_at,
    )
