"""Reads of the leads domain. Every selector takes the tenant first and starts from `scoped()`."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass

from django.db.models import Count, QuerySet

from converzia.errors import NotFound
from converzia.models import Tenant
from converzia.tenancy import scoped
from leads.funnel import STAGE_KEYS, conversion_rate, stage_count_aggregates
from leads.models import LeadOffer, Offer


@dataclass(frozen=True)
class FunnelCounts:
    """Lead_offer counts per funnel stage; `total == sum(stages.values())` by construction (D1)."""

    total: int
    stages: dict[str, int]
    conversion_rate: float

    @classmethod
    def empty(cls) -> FunnelCounts:
        return cls(total=0, stages=dict.fromkeys(STAGE_KEYS, 0), conversion_rate=0.0)


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


def offer_funnels_for_tenant(
    *, tenant: Tenant, offer_ids: Sequence[uuid.UUID]
) -> dict[uuid.UUID, FunnelCounts]:
    """Funnel counts of the given offers in ONE grouped query (offers without leads count zero)."""
    if not offer_ids:
        return {}
    rows = (
        scoped(LeadOffer, tenant)
        .filter(offer_id__in=list(offer_ids))
        .order_by()
        .values("offer_id")
        .annotate(total=Count("pk"), **stage_count_aggregates())
    )
    funnels = {offer_id: FunnelCounts.empty() for offer_id in offer_ids}
    for row in rows:
        stages = {key: row[key] for key in STAGE_KEYS}
        funnels[row["offer_id"]] = FunnelCounts(
            total=row["total"],
            stages=stages,
            conversion_rate=conversion_rate(stages["delivered"], row["total"]),
        )
    return funnels


def offers_with_funnels(*, tenant: Tenant, offers: Sequence[Offer]) -> list[Offer]:
    """`offers`, each with a `funnel` attribute (`FunnelCounts`), for one extra query in total."""
    funnels = offer_funnels_for_tenant(tenant=tenant, offer_ids=[offer.pk for offer in offers])
    for offer in offers:
        offer.funnel = funnels[offer.pk]  # type: ignore[attr-defined]
    return list(offers)
