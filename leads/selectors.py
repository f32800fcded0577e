"""Reads of the leads domain. Every selector takes the tenant first and starts from `scoped()`."""

from __future__ import annotations

import datetime as dt
import re
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from django.db.models import Q, QuerySet

from converzia.errors import NotFound
from converzia.models import Tenant
from converzia.tenancy import scoped
from leads.errors import InvalidPhone
from leads.funnel import STAGE_KEYS, conversion_rate, stage_counts
from leads.models import LeadEvent, LeadOffer, Offer
from leads.phones import normalize_phone
from leads.privacy import pii_visible_q


@dataclass(frozen=True)
class FunnelCounts:
    """Lead_offer counts per funnel stage; `total == sum(stages.values())` by construction (D1)."""

    total: int
    stages: dict[str, int]
    conversion_rate: float

    @classmethod
    def empty(cls) -> FunnelCounts:
        return cls(total=0, stages=dict.fromkeys(STAGE_KEYS, 0), conversion_rate=0.0)

    @classmethod
    def from_status_counts(cls, status_counts: Mapping[str, int]) -> FunnelCounts:
        stages = stage_counts(status_counts)
        total = sum(status_counts.values())
        return cls(total=total, stages=stages, conversion_rate=conversion_rate(stages["delivered"], total))


# --- offers --------------------------------------------------------------------------------------


def offer_list_for_tenant(*, tenant: Tenant, statuses: Sequence[str] | None = None) -> QuerySet[Offer]:
    """The tenant's offers, optionally only those in `statuses`. Ordering is left to the paginator."""
    queryset = scoped(Offer, tenant)
    if statuses:
        queryset = queryset.filter(status__in=list(statuses))
    return queryset


def offer_get_for_tenant(*, tenant: Tenant, offer_id: uuid.UUID | str) -> Offer:
    """One of the tenant's offers. Missing and foreign offers raise the same `NotFound`."""
    try:
        offer_uuid = offer_id if isinstance(offer_id, uuid.UUID) else uuid.UUID(str(offer_id))
    except ValueError:
        raise NotFound() from None
    offer = scoped(Offer, tenant).filter(pk=offer_uuid).first()
    if offer is None:
        raise NotFound()
    return offer


# --- lead_offers ---------------------------------------------------------------------------------

# What a lead list row needs, fetched in the page query itself: the joins are to primary keys of at
# most `page_size + 1` rows, walked in the order of idx_lead_offers_tenant[_status]_updated.
LEAD_OFFER_LIST_FIELDS: tuple[str, ...] = (
    "id",
    "status",
    "offer_id",
    "offer__name",
    "lead__full_name",
    "lead__first_name",
    "lead__last_name",
    "lead__phone",
    "lead__email",
    "score_total",
    "billing_eligibility",
    "lead_source__platform",
    "lead_source__ad_id",
    "lead_source__form_id",
    "lead_source__campaign_id",
    "created_at",
    "updated_at",
    "status_changed_at",
)

# Fewer digits than this in `q` would match most phones; such a `q` searches names and emails only.
_MIN_PHONE_DIGITS = 4


def lead_offer_list_for_tenant(
    *,
    tenant: Tenant,
    statuses: Sequence[str] | None = None,
    stage_statuses: Sequence[str] | None = None,
    offer_id: uuid.UUID | None = None,
    created_from: dt.datetime | None = None,
    created_before: dt.datetime | None = None,
    q: str | None = None,
    can_view_details: bool = False,
) -> QuerySet[LeadOffer]:
    """The tenant's lead_offers as `LEAD_OFFER_LIST_FIELDS` dicts. Ordering is left to the paginator.

    `created_before` is exclusive. `q` matches name, email or phone, but only among lead_offers
    whose PII the caller may see (leads.privacy); a foreign `offer_id` simply matches nothing.
    """
    queryset = scoped(LeadOffer, tenant)
    if statuses:
        queryset = queryset.filter(status__in=list(statuses))
    if stage_statuses:
        queryset = queryset.filter(status__in=list(stage_statuses))
    if offer_id is not None:
        queryset = queryset.filter(offer_id=offer_id)
    if created_from is not None:
        queryset = queryset.filter(created_at__gte=created_from)
    if created_before is not None:
        queryset = queryset.filter(created_at__lt=created_before)
    if q:
        queryset = queryset.filter(lead_search_q(q) & pii_visible_q(can_view_details=can_view_details))
    return queryset.values(*LEAD_OFFER_LIST_FIELDS)


def lead_search_q(q: str, *, prefix: str = "lead__") -> Q:
    """Name/email substring, or phone: the E.164 form of `q` when it reads as a phone, else its digits."""
    match = (
        Q(**{f"{prefix}full_name__icontains": q})
        | Q(**{f"{prefix}first_name__icontains": q})
        | Q(**{f"{prefix}last_name__icontains": q})
        | Q(**{f"{prefix}email__icontains": q})
    )
    digits = re.sub(r"\D", "", q)
    if len(digits) >= _MIN_PHONE_DIGITS:
        match |= Q(**{f"{prefix}phone__contains": digits})
        try:
            match |= Q(**{f"{prefix}phone": normalize_phone(q)})
        except InvalidPhone:
            pass
    return match


def lead_offer_get_for_tenant(
    *,
    tenant: Tenant,
    lead_offer_id: uuid.UUID | str,
    related: Sequence[str] = ("lead", "offer", "lead_source"),
) -> LeadOffer:
    """One of the tenant's lead_offers with `related` joined. Missing and foreign raise the same
    `NotFound`."""
    try:
        pk = lead_offer_id if isinstance(lead_offer_id, uuid.UUID) else uuid.UUID(str(lead_offer_id))
    except ValueError:
        raise NotFound() from None
    lead_offer = scoped(LeadOffer, tenant).select_related(*related).filter(pk=pk).first()
    if lead_offer is None:
        raise NotFound()
    return lead_offer


def lead_offer_timeline(
    *, tenant: Tenant, lead_offer_id: uuid.UUID, limit: int = 200
) -> list[dict[str, Any]]:
    """The lead_offer's most recent `limit` events, oldest first (idx_lead_events_lead_offer_created)."""
    rows = list(
        scoped(LeadEvent, tenant)
        .filter(lead_offer_id=lead_offer_id)
        .order_by("-created_at", "-id")
        .values("event_type", "created_at", "actor_type", "details")[:limit]
    )
    rows.reverse()
    return rows


def lead_offer_get_for_staff(*, lead_offer_id: str | uuid.UUID) -> LeadOffer:
    """A lead_offer of any tenant, for staff APIs only (tenant-facing reads use the `_for_tenant`
    selectors). Loads the id and tenant: the services lock and re-read the row themselves. A malformed
    or unknown id is `NotFound`."""
    try:
        pk = lead_offer_id if isinstance(lead_offer_id, uuid.UUID) else uuid.UUID(str(lead_offer_id))
    except ValueError:
        raise NotFound() from None
    lead_offer = LeadOffer.objects.only("id", "tenant_id").filter(pk=pk).first()
    if lead_offer is None:
        raise NotFound()
    return lead_offer
