"""Reads of the leads domain. Every selector takes the tenant first and starts from `scoped()`."""

from __future__ import annotations

import datetime as dt
import re
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from django.db.models import F, Func, Q, QuerySet, TextField, Value
from django.db.models.functions import Upper

from converzia.db.prepared import PreparedQuery, Shape
from converzia.errors import NotFound
from converzia.models import Tenant
from converzia.tenancy import scoped
from leads.errors import InvalidPhone
from leads.funnel import STAGE_KEYS, conversion_rate, stage_counts
from leads.models import AdOfferMap, AdPlatform, Lead, LeadEvent, LeadOffer, Offer, OfferStatus
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


def offer_list_for_tenant(
    *, tenant: Tenant | uuid.UUID, statuses: Sequence[str] | None = None
) -> QuerySet[Offer]:
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
# A search matching at most this many leads (platform-wide) filters the list by their ids.
SEARCH_PREFILTER_CAP = 2_000


def lead_offer_list_for_tenant(
    *,
    tenant: Tenant | uuid.UUID,
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
        ids = lead_ids_matching(q)
        by_lead = Q(lead_id__in=ids) if ids is not None else Q(lead__in=leads_matching(q).values("id"))
        queryset = queryset.filter(by_lead & pii_visible_q(can_view_details=can_view_details))
    return queryset.values(*LEAD_OFFER_LIST_FIELDS)


class LeadSearchText(Func):
    """`lead_search_text(...)` (leads migration 0007): the upper-cased text a lead search matches,
    indexed by idx_leads_search_trgm."""

    function = "lead_search_text"
    output_field = TextField()

    def __init__(self) -> None:
        super().__init__(*(F(name) for name in ("full_name", "first_name", "last_name", "email", "phone")))


def lead_search_match(q: str) -> Q:
    """Leads matching `q` (annotated `search_text=LeadSearchText()`): a substring of the name parts or
    the email, or a phone: the digits of `q` inside the phone, or its E.164 form."""
    match = Q(search_text__contains=Upper(Value(q)))
    digits = re.sub(r"\D", "", q)
    if len(digits) >= _MIN_PHONE_DIGITS:
        match |= Q(search_text__contains=Value(digits))
        try:
            match |= Q(phone=normalize_phone(q))
        except InvalidPhone:
            pass
    return match


def leads_matching(q: str) -> QuerySet[Lead]:
    return Lead.objects.annotate(search_text=LeadSearchText()).filter(lead_search_match(q))


def lead_ids_matching(q: str, *, cap: int | None = None) -> list[uuid.UUID] | None:
    """The ids of every lead matching `q`, or None when more than `cap` (default
    `SEARCH_PREFILTER_CAP`) do (a common name).

    Few matches: the lead list then probes lead_offers by these ids, a few milliseconds at any size.
    Many: it joins instead, which at that density finds a page early in the tenant's newest rows.
    Either way the trigram index finds the leads; only the second step differs.
    """
    cap = SEARCH_PREFILTER_CAP if cap is None else cap
    ids = list(leads_matching(q).values_list("id", flat=True)[: cap + 1])
    return None if len(ids) > cap else ids


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


# The fields of one lead_offer's detail: the list row, its qualification, and its delivery if any
# (reverse one-to-one: NULLs without one). `lead_offer_detail_row` reads them in one statement.
LEAD_OFFER_DETAIL_FIELDS: tuple[str, ...] = (
    *LEAD_OFFER_LIST_FIELDS,
    "qualification_fields",
    "score_breakdown",
    "delivery__id",
    "delivery__status",
    "delivery__attempt_count",
    "delivery__delivered_at",
    "delivery__blocked_reason",
)

_DETAIL_ROW = PreparedQuery(
    "leads.lead_offer.detail",
    lambda *, tenant_id, lead_offer_id: (
        scoped(LeadOffer, tenant_id).filter(pk=lead_offer_id).values(*LEAD_OFFER_DETAIL_FIELDS)
    ),
)
_TIMELINE = PreparedQuery(
    "leads.lead_offer.timeline",
    lambda *, tenant_id, lead_offer_id, limit: (
        scoped(LeadEvent, tenant_id)
        .filter(lead_offer_id=lead_offer_id)
        .order_by("-created_at", "-id")
        .values("event_type", "created_at", "actor_type", "details")[:limit]
    ),
)


def lead_offer_detail_row(*, tenant: Tenant, lead_offer_id: uuid.UUID) -> dict[str, Any]:
    """One of the tenant's lead_offers as a `LEAD_OFFER_DETAIL_FIELDS` dict, its lead, offer, source
    and delivery joined. Missing and foreign raise the same `NotFound`."""
    row = _DETAIL_ROW.first(tenant_id=tenant.pk, lead_offer_id=lead_offer_id)
    if row is None:
        raise NotFound()
    return row


def lead_offer_timeline(
    *, tenant: Tenant, lead_offer_id: uuid.UUID, limit: int = 200
) -> list[dict[str, Any]]:
    """The lead_offer's most recent `limit` events, oldest first (idx_lead_events_lead_offer_created)."""
    rows = _TIMELINE.rows(tenant_id=tenant.pk, lead_offer_id=lead_offer_id, limit=Shape(limit))
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


def routable_meta_ad(tenant: Tenant) -> AdOfferMap | None:
    """The tenant's oldest active Meta ad whose offer is ACTIVE: a lead on it is routed straight to an
    offer (not parked as unmapped). `manage.py send_test_lead` posts its test leads on it."""
    return (
        scoped(AdOfferMap, tenant)
        .filter(
            is_active=True,
            platform=AdPlatform.META,
            offer__isnull=False,
            offer__status=OfferStatus.ACTIVE,
        )
        .select_related("offer")
        .order_by("created_at", "ad_id")
        .first()
    )
