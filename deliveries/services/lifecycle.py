"""A lead's way from LEAD_READY to its tenant, and the money that moves with it (decisions D6, D7).

The cross-domain writes live here, the highest domain they touch (spec README §3): a lead becoming
ready creates its delivery; a delivery succeeding consumes a credit and marks the lead delivered.
The ops API, the admin and the dispatcher all call these functions.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from billing.models import CreditLedger
from billing.services import Charge, credit_consume_many, credit_refund
from converzia.cache import invalidate_tenant
from converzia.errors import Conflict, InvalidInput, InvalidTransition
from converzia.metrics import DELIVERIES
from converzia.models import User
from converzia.observability.sentry import report_dead_letter
from converzia.request_context import current_trace_id
from deliveries.models import (
    Delivery,
    DeliveryAttempt,
    DeliveryBlockedReason,
    DeliveryDestination,
    DeliveryStatus,
    NoChargeReason,
    delivery_webhook_id,
)
from leads.errors import LeadOfferInvalidTransition
from leads.models import (
    ActorType,
    BillingEligibility,
    LeadEvent,
    LeadEventType,
    LeadOffer,
    LeadOfferStatus,
)
from leads.services import lead_event_record, lead_offer_transition, lead_offers_transition_many
from leads.transitions import allowed_targets

logger = logging.getLogger(__name__)
S = LeadOfferStatus

# Billing eligibility → why a delivered lead is not charged. Anything else (PENDING, CHARGEABLE) pays.
_NOT_CHARGED = {
    BillingEligibility.NOT_CHARGEABLE_DUPLICATE: NoChargeReason.DUPLICATE,
    BillingEligibility.NOT_CHARGEABLE_SPAM: NoChargeReason.SPAM,
    BillingEligibility.NOT_CHARGEABLE_INCOMPLETE: NoChargeReason.INCOMPLETE,
    BillingEligibility.NOT_CHARGEABLE_OUT_OF_ZONE: NoChargeReason.OUT_OF_ZONE,
}
# Statuses the qualification endpoint scores from (SCORED may be re-scored).
QUALIFIABLE = frozenset({S.QUALIFYING, S.HUMAN_HANDOFF, S.SCORED})
# Set only by a successful delivery, never by hand: that is where the credit is charged.
DELIVERY_ONLY_TARGETS = frozenset({S.SENT_TO_DEVELOPER})


def _actor_type(actor: User | None) -> str:
    """Staff act as ADMIN (as in `lead_offer_transition`); anyone else through the ops API as OPERATOR."""
    return ActorType.ADMIN if actor is not None and actor.is_staff else ActorType.OPERATOR


def is_chargeable(billing_eligibility: str) -> bool:
    return billing_eligibility not in _NOT_CHARGED


# --- Creation -------------------------------------------------------------------------------------


def delivery_payload_build(lead_offer: LeadOffer) -> dict[str, Any]:
    """The snapshot a tenant receives (DOMAIN.md §5.4, without the conversation summary)."""
    lead = lead_offer.lead
    source = lead_offer.lead_source
    offer = lead_offer.offer
    fields = lead_offer.qualification_fields or {}
    return {
        "lead_offer_id": str(lead_offer.pk),
        "tenant_id": str(lead_offer.tenant_id),
        "lead": {
            "name": lead.full_name or " ".join(p for p in (lead.first_name, lead.last_name) if p),
            "phone": lead.phone,
            "email": lead.email,
        },
        "qualification": fields,
        "score": {
            "total": lead_offer.score_total,
            "breakdown": lead_offer.score_breakdown or {},
            "explanation": fields.get("score_explanation", ""),
        },
        "recommended_offer": {"id": str(offer.pk), "name": offer.name} if offer else None,
        "alternatives": fields.get("alternatives", []),
        "source": (
            {
                "platform": source.platform,
                "ad_id": source.ad_id,
                "campaign_id": source.campaign_id,
                "form_id": source.form_id,
            }
            if source
            else None
        ),
    }


def delivery_create_for_ready(*, lead_offer: LeadOffer) -> Delivery | None:
    """Create the lead_offer's one delivery and wake the dispatcher, in the caller's transaction.

    Idempotent: the unique lead_offer key makes a second call a no-op (returns None).
    """
    from deliveries.services.dispatch import dispatcher_wake

    lead_offer = LeadOffer.objects.select_related("lead", "lead_source", "offer").get(pk=lead_offer.pk)
    delivery = Delivery(
        lead_offer=lead_offer,
        tenant_id=lead_offer.tenant_id,
        offer_id=lead_offer.offer_id,
        payload=delivery_payload_build(lead_offer),
        next_attempt_at=timezone.now(),
        trace_id=current_trace_id(),
    )
    created = Delivery.objects.bulk_create([delivery], ignore_conflicts=True)
    # With ignore_conflicts PostgreSQL reports nothing back; look for the row we meant to write.
    if not Delivery.objects.filter(pk=created[0].pk).exists():
        return None
    lead_event_record(
        lead_offer=lead_offer,
        event_type=LeadEventType.DELIVERY_ATTEMPTED,
        details={"delivery_id": str(delivery.pk), "score": lead_offer.score_total},
    )
    dispatcher_wake()
    return delivery


# --- Funnel moves that may create or cancel a delivery ---------------------------------------------


@transaction.atomic
def lead_offer_advance(
    *,
    lead_offer: LeadOffer,
    to_status: str,
    actor: User | None = None,
    reason: str = "",
    disqualification_category: str = "",
) -> LeadOffer:
    """The ops transition: the matrix, plus what a move means for the lead's delivery.

    Reaching LEAD_READY creates the delivery. Leaving LEAD_READY before delivery (STOPPED,
    DISQUALIFIED) ends a waiting delivery as a dead letter, uncharged. SENT_TO_DEVELOPER is refused:
    only a successful delivery sets it, because that is where the credit is charged.
    """
    if to_status in DELIVERY_ONLY_TARGETS:
        locked = LeadOffer.objects.get(pk=lead_offer.pk)
        raise LeadOfferInvalidTransition(
            locked.status,
            to_status,
            [s for s in allowed_targets(locked.status) if s not in DELIVERY_ONLY_TARGETS],
        )
    updated = lead_offer_transition(
        lead_offer=lead_offer,
        to_status=to_status,
        actor=actor,
        actor_type=ActorType.OPERATOR,
        reason=reason,
        disqualification_category=disqualification_category,
    )
    if updated.status == S.LEAD_READY:
        delivery_create_for_ready(lead_offer=updated)
    elif updated.previous_status == S.LEAD_READY:
        _delivery_cancel_for(lead_offer=updated, reason=f"lead moved to {updated.status}")
    return updated


@transaction.atomic
def lead_offer_qualify(
    *,
    lead_offer: LeadOffer,
    score_total: int,
    qualification_fields: dict[str, Any] | None = None,
    score_breakdown: dict[str, Any] | None = None,
    actor: User | None = None,
) -> LeadOffer:
    """Store a qualification: fields merged into what is stored, the score, then SCORED or LEAD_READY.

    At or above the tenant's `default_score_threshold` the lead becomes LEAD_READY (creating its
    delivery); below it, SCORED. A HUMAN_HANDOFF lead below the threshold goes back through
    QUALIFYING (the matrix has no HUMAN_HANDOFF → SCORED).
    """
    if not 0 <= score_total <= 100:
        raise InvalidInput("The score must be between 0 and 100.", details={"score_total": ["0–100."]})
    locked = LeadOffer.objects.select_for_update(no_key=True).select_related("tenant").get(pk=lead_offer.pk)
    if locked.status not in QUALIFIABLE:
        raise LeadOfferNotQualifiable(locked.status)
    now = timezone.now()
    merged = {**(locked.qualification_fields or {}), **(qualification_fields or {})}
    locked.qualification_fields = merged
    locked.score_total = score_total
    if score_breakdown is not None:
        locked.score_breakdown = score_breakdown
    locked.scored_at = now
    locked.save(
        update_fields=["qualification_fields", "score_total", "score_breakdown", "scored_at", "updated_at"]
    )
    lead_event_record(
        lead_offer=locked,
        event_type=LeadEventType.SCORE_CALCULATED,
        details={
            "score_total": score_total,
            "threshold": locked.tenant.default_score_threshold,
            "fields_updated": sorted((qualification_fields or {}).keys()),
        },
        actor_type=_actor_type(actor),
        actor_id=actor.pk if actor else None,
    )
    # A re-score of a SCORED lead changes no status, but the stored score changed.
    invalidate_tenant(locked.tenant_id)
    ready = score_total >= locked.tenant.default_score_threshold
    target = S.LEAD_READY if ready else S.SCORED
    if locked.status == S.HUMAN_HANDOFF and target == S.SCORED:
        locked = lead_offer_transition(
            lead_offer=locked, to_status=S.QUALIFYING, actor=actor, actor_type=ActorType.OPERATOR
        )
    return lead_offer_advance(lead_offer=locked, to_status=target, actor=actor)


class LeadOfferNotQualifiable(InvalidTransition):
    def __init__(self, status: str) -> None:
        qualifiable = [s for s in S.values if s in QUALIFIABLE]
        super().__init__(
            f"A {status} lead cannot be qualified; qualification applies to {', '.join(qualifiable)} leads.",
            details={"from": status, "qualifiable_from": qualifiable, "allowed": allowed_targets(status)},
        )


def _delivery_cancel_for(*, lead_offer: LeadOffer, reason: str) -> None:
    delivery = Delivery.objects.select_for_update(no_key=True).filter(lead_offer=lead_offer).first()
    if delivery is None or delivery.status not in (DeliveryStatus.PENDING, DeliveryStatus.FAILED):
        return
    _dead_letter(delivery, reason=f"Cancelled before delivery: {reason}.")


def _dead_letter(delivery: Delivery, *, reason: str) -> None:
    now = timezone.now()
    delivery.status = DeliveryStatus.DEAD_LETTER
    delivery.dead_letter_at = now
    delivery.dead_letter_reason = reason
    delivery.next_attempt_at = None
    delivery.claimed_until = None
    delivery.save(
        update_fields=[
            "status",
            "dead_letter_at",
            "dead_letter_reason",
            "next_attempt_at",
            "claimed_until",
            "updated_at",
        ]
    )
    LeadEvent.objects.create(
        lead_id=delivery.lead_offer.lead_id,
        lead_offer_id=delivery.lead_offer_id,
        tenant_id=delivery.tenant_id,
        event_type=LeadEventType.DELIVERY_DEAD_LETTER,
        details={"delivery_id": str(delivery.pk), "reason": reason},
        trace_id=current_trace_id(),
    )
    DELIVERIES.labels("dead_letter").inc()
    logger.warning(
        "delivery dead-lettered",
        extra={"delivery_id": str(delivery.pk), "tenant_id": str(delivery.tenant_id), "reason": reason},
    )
    report_dead_letter(delivery_id=delivery.pk, tenant_id=delivery.tenant_id, reason=reason)  # Sentry


# --- Completion: the one place a delivery is charged ----------------------------------------------


@dataclass(frozen=True)
class SendRecord:
    """What one send of a delivery produced (the attempt row's content)."""

    delivery_id: uuid.UUID
    attempt_number: int
    destination_id: uuid.UUID | None
    url: str
    status_code: int | None
    duration_ms: int
    error: str = ""
    response_excerpt: str = ""


@dataclass(frozen=True)
class Completion:
    delivery_id: uuid.UUID
    newly_delivered: bool
    charged: bool
    ledger_entry_id: uuid.UUID | None


def attempt_row(record: SendRecord, *, succeeded: bool) -> DeliveryAttempt:
    return DeliveryAttempt(
        delivery_id=record.delivery_id,
        attempt_number=record.attempt_number,
        destination_id=record.destination_id,
        url=record.url[:500],
        status_code=record.status_code,
        duration_ms=record.duration_ms,
        succeeded=succeeded,
        error=record.error,
        response_excerpt=record.response_excerpt,
    )


@transaction.atomic
def deliveries_complete(records: list[SendRecord]) -> list[Completion]:
    """Settle successful sends, in one transaction: each delivery DELIVERED and charged exactly once.

    Locks the deliveries, then their lead_offers (each in id order, so two settlers never deadlock),
    writes everything that does not depend on the money, and charges last: `credit_consume_many` locks
    the tenants' balance rows, so they are held only for the final few statements, and concurrent
    dispatchers of the same tenants wait on each other as briefly as possible.

    A delivery already delivered is left alone (a repeat send after a lost lease, or a second caller):
    the status check under the row lock is the first line, the partial unique index on consumptions the
    last. A lead whose billing eligibility says NOT_CHARGEABLE_* is delivered uncharged and keeps it.
    """
    if not records:
        return []
    by_id = {r.delivery_id: r for r in records}
    deliveries = list(
        Delivery.objects.select_for_update(no_key=True).filter(pk__in=list(by_id)).order_by("pk")
    )
    open_deliveries = [d for d in deliveries if d.status in (DeliveryStatus.PENDING, DeliveryStatus.FAILED)]
    lead_offers = {
        lo.pk: lo
        for lo in LeadOffer.objects.select_for_update(no_key=True)
        .filter(pk__in=[d.lead_offer_id for d in open_deliveries])
        .order_by("pk")
    }
    now = timezone.now()
    # The charge each delivery will get (its ledger row id is known before the row is written).
    charges = {
        d.pk: Charge(tenant_id=d.tenant_id, delivery_id=d.pk, lead_offer_id=d.lead_offer_id)
        for d in open_deliveries
        if is_chargeable(lead_offers[d.lead_offer_id].billing_eligibility)
    }

    # 1. Deliveries, lead_offers, attempts and destinations, as if every charge succeeds.
    by_reason: dict[str, list[uuid.UUID]] = {}
    for delivery in open_deliveries:
        reason = _NOT_CHARGED.get(lead_offers[delivery.lead_offer_id].billing_eligibility, "")
        by_reason.setdefault(reason, []).append(delivery.pk)
    for no_charge_reason, ids in by_reason.items():
        Delivery.objects.filter(pk__in=ids).update(
            status=DeliveryStatus.DELIVERED,
            delivered_at=now,
            next_attempt_at=None,
            claimed_until=None,
            blocked_reason="",
            error_message="",
            no_charge_reason=no_charge_reason,
            updated_at=now,
        )
    ready = [
        lead_offers[d.lead_offer_id]
        for d in open_deliveries
        if lead_offers[d.lead_offer_id].status == S.LEAD_READY
    ]
    charged_ids = {c.lead_offer_id for c in charges.values()}
    previous_eligibility = {lo.pk: lo.billing_eligibility for lo in ready}
    lead_offers_transition_many(
        lead_offers=[lo for lo in ready if lo.pk in charged_ids],
        to_status=S.SENT_TO_DEVELOPER,
        extra_fields={"billing_eligibility": BillingEligibility.CHARGEABLE},
        details={"reason": "delivered"},
    )
    lead_offers_transition_many(
        lead_offers=[lo for lo in ready if lo.pk not in charged_ids],
        to_status=S.SENT_TO_DEVELOPER,
        details={"reason": "delivered"},
    )
    # Attempt rows of repeat sends are kept too (the receiver did answer them).
    DeliveryAttempt.objects.bulk_create(
        [attempt_row(r, succeeded=True) for r in records if r.attempt_number > 0], ignore_conflicts=True
    )
    destinations_touch(
        destination_ids={r.destination_id for r in records if r.destination_id},
        field="last_success_at",
        now=now,
    )

    # 2. The money, last.
    outcomes = credit_consume_many(list(charges.values()))
    uncharged = [pk for pk, outcome in outcomes.items() if not isinstance(outcome, CreditLedger)]
    if uncharged:
        # The dispatcher reserves credits before sending, so only a concurrent staff adjustment lands
        # here. The tenant has the lead: record it as delivered, uncharged, and say so loudly.
        Delivery.objects.filter(pk__in=uncharged).update(no_charge_reason=NoChargeReason.WAIVED)
        for delivery_id in uncharged:
            lead_offer = lead_offers[charges[delivery_id].lead_offer_id]
            LeadOffer.objects.filter(pk=lead_offer.pk).update(
                billing_eligibility=previous_eligibility.get(lead_offer.pk, lead_offer.billing_eligibility),
                billing_notes="Delivered without a credit to charge.",
            )
            logger.error(
                "delivery completed without a credit to charge",
                extra={"delivery_id": str(delivery_id), "tenant_id": str(charges[delivery_id].tenant_id)},
            )

    # 3. The audit trail, with the ledger rows it points at.
    trace_id = current_trace_id()
    events: list[LeadEvent] = []
    completions: list[Completion] = []
    for delivery in deliveries:
        lead_offer = lead_offers.get(delivery.lead_offer_id)
        if lead_offer is None:
            completions.append(Completion(delivery.pk, False, False, None))
            continue
        outcome = outcomes.get(delivery.pk)
        entry_id = outcome.pk if isinstance(outcome, CreditLedger) else None
        no_charge = (
            NoChargeReason.WAIVED
            if delivery.pk in uncharged
            else _NOT_CHARGED.get(lead_offer.billing_eligibility, "")
        )
        record = by_id[delivery.pk]
        events.append(
            LeadEvent(
                lead_id=lead_offer.lead_id,
                lead_offer_id=lead_offer.pk,
                tenant_id=delivery.tenant_id,
                event_type=LeadEventType.DELIVERY_COMPLETED,
                details={
                    "delivery_id": str(delivery.pk),
                    "webhook_id": delivery_webhook_id(delivery.pk),
                    "attempt": record.attempt_number,
                    "status_code": record.status_code,
                    "credit_consumed": entry_id is not None,
                    "ledger_entry_id": str(entry_id) if entry_id else None,
                    "no_charge_reason": no_charge or None,
                },
                trace_id=trace_id,
                created_at=now,
            )
        )
        completions.append(Completion(delivery.pk, True, entry_id is not None, entry_id))
    LeadEvent.objects.bulk_create(events)
    delivered = len(open_deliveries)
    if delivered:
        transaction.on_commit(lambda: DELIVERIES.labels("delivered").inc(delivered))
    return completions


def destinations_touch(*, destination_ids: set[uuid.UUID | None], field: str, now: Any) -> None:
    """Stamp `last_success_at` / `last_failure_at` on the destinations of a batch.

    The rows another settler is stamping right now are skipped (`SKIP LOCKED`): it writes about the
    same instant, and waiting for it (or locking in a different order) could only cost time or a
    deadlock. The columns are for staff, not for accounting.
    """
    ids = sorted(d for d in destination_ids if d)
    if not ids:
        return
    free = list(
        DeliveryDestination.objects.select_for_update(skip_locked=True, no_key=True)
        .filter(pk__in=ids)
        .order_by("pk")
        .values_list("pk", flat=True)
    )
    if free:
        DeliveryDestination.objects.filter(pk__in=free).update(**{field: now})


def delivery_complete(record: SendRecord) -> Completion:
    """Settle one successful send (see `deliveries_complete`)."""
    (completion,) = deliveries_complete([record])
    return completion


# --- Failures, waiting and resuming ------------------------------------------------------------------


def backoff_delay_s(attempts_used: int, *, rng: Any = None) -> float:
    """Seconds before the next attempt after `attempts_used` failed ones: base × factorⁿ⁻¹, ±20 %."""
    import random

    rng = rng or random
    delay = settings.DELIVERY_BACKOFF_BASE_S * settings.DELIVERY_BACKOFF_FACTOR ** max(0, attempts_used - 1)
    delay = min(delay, settings.DELIVERY_BACKOFF_MAX_S)
    return delay * rng.uniform(0.8, 1.2)


@transaction.atomic
def deliveries_resume_blocked(*, tenant_id: uuid.UUID, reason: str) -> int:
    """Deliveries waiting for `reason` (no destination, no credits) become due now; wakes the dispatcher."""
    from deliveries.services.dispatch import dispatcher_wake

    resumed = (
        Delivery.objects.for_tenant(tenant_id)
        .filter(blocked_reason=reason, status__in=[DeliveryStatus.PENDING, DeliveryStatus.FAILED])
        .update(blocked_reason="", next_attempt_at=timezone.now(), updated_at=timezone.now())
    )
    if resumed:
        logger.info(
            "deliveries resumed",
            extra={"tenant_id": str(tenant_id), "reason": reason, "resumed": resumed},
        )
        dispatcher_wake()
    return resumed


def on_balance_increased(sender: Any, *, tenant_id: uuid.UUID, **kwargs: Any) -> None:
    """Credits arrived (purchase, bonus, refund, adjustment): resume deliveries waiting for them."""
    deliveries_resume_blocked(tenant_id=tenant_id, reason=DeliveryBlockedReason.INSUFFICIENT_CREDITS)


# --- Staff actions --------------------------------------------------------------------------------


class DeliveryNotRetryable(Conflict):
    message = "Only a failed or dead-letter delivery can be retried."


class DeliveryNotRefundable(Conflict):
    message = "Only a delivered (charged) delivery can be refunded."


@transaction.atomic
def delivery_retry(*, delivery: Delivery, actor: User | None = None) -> Delivery:
    """Staff retry: a dead letter (or a failed delivery) is due now, with a fresh set of attempts."""
    from deliveries.services.dispatch import dispatcher_wake

    locked = Delivery.objects.select_for_update(no_key=True).select_related("lead_offer").get(pk=delivery.pk)
    if locked.status not in (DeliveryStatus.DEAD_LETTER, DeliveryStatus.FAILED):
        raise DeliveryNotRetryable(details={"status": locked.status})
    if locked.lead_offer.status != S.LEAD_READY:
        raise DeliveryNotRetryable(
            f"The lead is {locked.lead_offer.status}, no longer LEAD_READY; nothing to deliver.",
            details={"lead_offer_status": locked.lead_offer.status},
        )
    locked.status = DeliveryStatus.PENDING
    locked.attempt_budget_start = locked.attempt_count
    locked.next_attempt_at = timezone.now()
    locked.claimed_until = None
    locked.blocked_reason = ""
    locked.dead_letter_at = None
    locked.dead_letter_reason = ""
    locked.save(
        update_fields=[
            "status",
            "attempt_budget_start",
            "next_attempt_at",
            "claimed_until",
            "blocked_reason",
            "dead_letter_at",
            "dead_letter_reason",
            "updated_at",
        ]
    )
    lead_event_record(
        lead_offer=locked.lead_offer,
        event_type=LeadEventType.MANUAL_ACTION,
        details={"action": "DELIVERY_RETRY", "delivery_id": str(locked.pk)},
        actor_type=ActorType.ADMIN,
        actor_id=actor.pk if actor else None,
    )
    dispatcher_wake()
    return locked


@transaction.atomic
def delivery_refund(*, delivery: Delivery, reason: str, actor: User | None = None) -> CreditLedger:
    """Staff refund of a delivered lead: the credit back, delivery REFUNDED, the lead's billing PENDING."""
    if not reason.strip():
        raise InvalidInput("A refund needs a reason.", details={"reason": ["This field is required."]})
    locked = Delivery.objects.select_for_update(no_key=True).select_related("lead_offer").get(pk=delivery.pk)
    if locked.status not in (DeliveryStatus.DELIVERED, DeliveryStatus.PARTIAL):
        raise DeliveryNotRefundable(details={"status": locked.status})
    entry = credit_refund(tenant_id=locked.tenant_id, delivery_id=locked.pk, reason=reason, actor=actor)
    now = timezone.now()
    locked.status = DeliveryStatus.REFUNDED
    locked.refunded_at = now
    locked.save(update_fields=["status", "refunded_at", "updated_at"])
    LeadOffer.objects.filter(pk=locked.lead_offer_id).update(
        billing_eligibility=BillingEligibility.PENDING, billing_notes=f"Refunded: {reason}", updated_at=now
    )
    lead_event_record(
        lead_offer=locked.lead_offer,
        event_type=LeadEventType.CREDIT_REFUNDED,
        details={"delivery_id": str(locked.pk), "ledger_entry_id": str(entry.pk), "reason": reason},
        actor_type=ActorType.ADMIN,
        actor_id=actor.pk if actor else None,
    )
    return entry
