"""Writes of the leads domain: status transitions, ad mappings. Each is one transaction."""

from __future__ import annotations

import uuid

from django.db import transaction
from django.utils import timezone

from converzia.cache import invalidate_tenant
from converzia.models import User
from converzia.request_context import current_trace_id
from leads.errors import LeadOfferInvalidTransition
from leads.models import (
    ActorType,
    AdOfferMap,
    LeadEvent,
    LeadEventType,
    LeadOffer,
    LeadOfferStatus,
    LeadSource,
)
from leads.transitions import allowed_targets, is_allowed


def lead_event_record(
    *,
    lead_offer: LeadOffer,
    event_type: str,
    details: dict[str, object] | None = None,
    actor_type: str = ActorType.SYSTEM,
    actor_id: uuid.UUID | None = None,
) -> LeadEvent:
    return LeadEvent.objects.create(
        lead_id=lead_offer.lead_id,
        lead_offer=lead_offer,
        tenant_id=lead_offer.tenant_id,
        event_type=event_type,
        details=details or {},
        actor_type=actor_type,
        actor_id=actor_id,
        trace_id=current_trace_id(),
    )


@transaction.atomic
def lead_offer_transition(
    *,
    lead_offer: LeadOffer,
    to_status: str,
    actor: User | None = None,
    actor_type: str = ActorType.SYSTEM,
    reason: str = "",
    disqualification_category: str = "",
    extra_fields: dict[str, object] | None = None,
) -> LeadOffer:
    """Move a lead_offer through the funnel, following the matrix (DOMAIN.md §2.8).

    Locks the row, re-checks the current status, records a STATUS_CHANGE event and invalidates the
    tenant's cached reads after commit. Staying in the same status is a no-op.
    """
    locked = LeadOffer.objects.select_for_update().get(pk=lead_offer.pk)
    from_status = locked.status
    if from_status == to_status:
        return locked
    if not is_allowed(from_status, to_status):
        raise LeadOfferInvalidTransition(from_status, to_status, allowed_targets(from_status))

    locked.status = to_status
    update_fields = ["status", "updated_at"]
    if to_status == LeadOfferStatus.DISQUALIFIED:
        locked.disqualification_category = disqualification_category or "OTHER"
        locked.disqualification_reason = reason
        update_fields += ["disqualification_category", "disqualification_reason"]
    for field, value in (extra_fields or {}).items():
        setattr(locked, field, value)
        update_fields.append(field)
    locked.save(update_fields=update_fields)
    locked.refresh_from_db(fields=["previous_status", "status_changed_at", "qualified_at"])

    details: dict[str, object] = {"from": from_status, "to": to_status}
    if reason:
        details["reason"] = reason
    if to_status == LeadOfferStatus.DISQUALIFIED:
        details["disqualification_category"] = locked.disqualification_category
    lead_event_record(
        lead_offer=locked,
        event_type=LeadEventType.STATUS_CHANGE,
        details=details,
        actor_type=ActorType.ADMIN if actor and actor.is_staff else actor_type,
        actor_id=actor.pk if actor else None,
    )
    invalidate_tenant(locked.tenant_id)
    return locked


@transaction.atomic
def ad_mapping_set_active(*, mapping: AdOfferMap, is_active: bool, actor: User | None = None) -> int:
    """Activate or deactivate an ad mapping.

    Activating a mapping that names an offer routes the ad's leads still waiting in PENDING_MAPPING
    to that offer (→ TO_BE_CONTACTED), each through the transition service. Activating any mapping
    also sends the ad's unrouted inbox changes through ingestion again (their jobs are deferred in
    this transaction). Returns how many lead_offers moved.
    """
    # Imported here: ingestion builds on this module's transition and event services.
    from leads.ingestion import inbox_requeue_unrouted_for_ad

    mapping = AdOfferMap.objects.select_for_update().get(pk=mapping.pk)
    mapping.is_active = is_active
    mapping.save(update_fields=["is_active", "updated_at"])
    if not is_active:
        return 0
    inbox_requeue_unrouted_for_ad(mapping.ad_id)
    if mapping.offer_id is None:
        return 0
    return route_pending_leads_for_ad(mapping=mapping, actor=actor)


def route_pending_leads_for_ad(*, mapping: AdOfferMap, actor: User | None = None) -> int:
    """Attach the ad's unmapped lead_offers to the mapping's offer and move them to TO_BE_CONTACTED.

    A lead that already has a row for that offer keeps it; its unmapped row is left for staff.
    """
    source_ids = LeadSource.objects.for_tenant(mapping.tenant_id).filter(ad_id=mapping.ad_id).values("pk")
    pending = (
        LeadOffer.objects.for_tenant(mapping.tenant_id)
        .filter(status=LeadOfferStatus.PENDING_MAPPING, offer__isnull=True, lead_source_id__in=source_ids)
        .order_by("pk")
    )
    moved = 0
    for lead_offer in pending:
        already_mapped = LeadOffer.objects.filter(
            tenant_id=lead_offer.tenant_id, lead_id=lead_offer.lead_id, offer_id=mapping.offer_id
        ).exists()
        if already_mapped:
            continue
        lead_offer_transition(
            lead_offer=lead_offer,
            to_status=LeadOfferStatus.TO_BE_CONTACTED,
            actor=actor,
            reason=f"ad {mapping.ad_id} mapped",
            extra_fields={"offer_id": mapping.offer_id, "next_attempt_at": timezone.now()},
        )
        moved += 1
    return moved


def lead_offers_transition_many(
    *,
    lead_offers: list[LeadOffer],
    to_status: str,
    extra_fields: dict[str, object] | None = None,
    details: dict[str, object] | None = None,
    actor_type: str = ActorType.SYSTEM,
) -> None:
    """Move many lead_offers, already locked by the caller (`select_for_update`), in two queries.

    The batch path of `lead_offer_transition` (delivery completion settles a hundred at a time): the
    same matrix check per row, one UPDATE, one STATUS_CHANGE event per row, one invalidation per
    tenant. The database trigger checks the matrix again and maintains the status bookkeeping.
    """
    moving = [lo for lo in lead_offers if lo.status != to_status]
    for lead_offer in moving:
        if not is_allowed(lead_offer.status, to_status):
            raise LeadOfferInvalidTransition(lead_offer.status, to_status, allowed_targets(lead_offer.status))
    if not moving:
        return
    now = timezone.now()
    LeadOffer.objects.filter(pk__in=[lo.pk for lo in moving]).update(
        status=to_status, updated_at=now, **(extra_fields or {})
    )
    trace_id = current_trace_id()
    LeadEvent.objects.bulk_create(
        [
            LeadEvent(
                lead_id=lo.lead_id,
                lead_offer_id=lo.pk,
                tenant_id=lo.tenant_id,
                event_type=LeadEventType.STATUS_CHANGE,
                details={"from": lo.status, "to": to_status, **(details or {})},
                actor_type=actor_type,
                trace_id=trace_id,
                created_at=now,
            )
            for lo in moving
        ]
    )
    for lead_offer in moving:
        lead_offer.previous_status, lead_offer.status = lead_offer.status, to_status
        for field, value in (extra_fields or {}).items():
            setattr(lead_offer, field, value)
    for tenant_id in {lo.tenant_id for lo in moving}:
        invalidate_tenant(tenant_id)
