"""The delivery dispatcher: claim due deliveries in batches, send them concurrently, settle outcomes.

One run of the `deliveries.dispatch` job loops claim → send → settle until nothing is due (or its
time budget is spent, when it wakes a successor). Claiming a full batch wakes another dispatcher,
so a backlog is worked by as many dispatchers as the worker has slots, and a slow receiver never
serialises the queue: a batch's sends are all in flight at once.

Row locks here are `FOR NO KEY UPDATE` (we never change a key): they exclude each other as
`FOR UPDATE` would, but not the `FOR KEY SHARE` that a foreign-key check takes, and Django's foreign
keys are checked at COMMIT. With `FOR UPDATE`, settler A holding a destination row and waiting for a
balance row, and settler B holding that balance row and checking its attempt rows' foreign key to the
destination at COMMIT, deadlocked under load (measured: docs/deliveries.md).

Claiming is one short transaction: `FOR UPDATE SKIP LOCKED` on the due rows (no two dispatchers
take the same delivery), a lease (`claimed_until`, also the next due time, so a dispatcher that dies
mid-send has its deliveries resent after the lease, with the same `webhook-id`), and the checks that
decide whether a delivery may be sent at all:
- its tenant is not paused (SUSPENDED, ARCHIVED: `converzia.tenancy.PAUSED_TENANT_STATUSES`); this
  one is a condition of the claim query itself, so a paused tenant's deliveries are never locked,
  attempted or charged: they stay due, untouched, and go out once the tenant is ACTIVE again;
- its lead is still LEAD_READY (else it is cancelled as a dead letter, uncharged);
- its tenant has an active destination (else it waits: NO_ACTIVE_DESTINATION);
- a chargeable lead has a credit for it: the tenant's balance row is locked and the sends already in
  flight are subtracted, so concurrent dispatchers never send more leads than the tenant can pay for
  (else it waits: INSUFFICIENT_CREDITS, or briefly, when in-flight sends may still fail).
"""

from __future__ import annotations

import logging
import time
import uuid
from collections import Counter as Tally
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import orjson
from django.conf import settings
from django.db import transaction
from django.db.models import Count, F, OuterRef, QuerySet, Subquery
from django.utils import timezone
from procrastinate import exceptions as procrastinate_exceptions

from billing.models import TenantCreditBalance
from converzia.metrics import DELIVERIES, DELIVERY_SEND_SECONDS
from converzia.request_context import current_trace_id
from converzia.tenancy import PAUSED_TENANT_STATUSES
from deliveries import outbound
from deliveries.models import (
    Delivery,
    DeliveryAttempt,
    DeliveryBlockedReason,
    DeliveryDestination,
    DeliveryStatus,
    delivery_webhook_id,
)
from deliveries.services.lifecycle import (
    SendRecord,
    _dead_letter,
    attempt_row,
    backoff_delay_s,
    deliveries_complete,
    destinations_touch,
    is_chargeable,
)
from leads.models import LeadEvent, LeadEventType, LeadOfferStatus

logger = logging.getLogger(__name__)

DISPATCH_QUEUEING_LOCK = "deliveries.dispatch"
# A delivery held back only because other sends of its tenant are in flight is looked at again soon.
HOLD_S = 2.0
EVENT_TYPE = "lead.ready"


def dispatcher_wake() -> bool:
    """Queue a dispatcher run in the caller's transaction, unless one is already waiting to start."""
    from deliveries.tasks import dispatch_deliveries

    try:
        # A savepoint: the queueing-lock conflict must not abort the caller's transaction.
        with transaction.atomic():
            dispatch_deliveries.configure(queueing_lock=DISPATCH_QUEUEING_LOCK).defer()
    except procrastinate_exceptions.AlreadyEnqueued:
        return False
    return True


def deliveries_dispatchable(now: datetime | None = None) -> QuerySet[Delivery]:
    """Due deliveries the dispatcher may send: those of tenants that are not paused.

    A join to `tenants` on its primary key, filtered there: the scan stays on idx_deliveries_due (in
    `next_attempt_at` order when many are due, so the claim's LIMIT stops early) and the small tenants
    table is read once (or probed by key). Checked by `manage.py explain_check` ("deliveries.claim").
    A paused tenant's due rows are stepped over by each scan: cheap while they are few (the leads that
    became ready while it was paused).
    """
    return Delivery.objects.due(now).exclude(tenant__status__in=PAUSED_TENANT_STATUSES)


def deliveries_due_exist() -> bool:
    # Paused tenants' deliveries stay due but must not wake a dispatcher every sweep for nothing.
    return deliveries_dispatchable().exists()


@dataclass
class Claimed:
    delivery_id: uuid.UUID
    tenant_id: uuid.UUID
    attempt_number: int
    destination_id: uuid.UUID
    url: str
    secret: str
    body: bytes


@dataclass
class ClaimReport:
    claimed: list[Claimed] = field(default_factory=list)
    rows: int = 0
    outcomes: Tally[str] = field(default_factory=Tally)


def delivery_body(delivery_id: uuid.UUID, created_at: Any, payload: dict[str, Any]) -> bytes:
    """The JSON a receiver gets; the same bytes on every retry (only the timestamp header moves)."""
    return orjson.dumps(
        {
            "type": EVENT_TYPE,
            "timestamp": created_at.isoformat(),
            "delivery_id": str(delivery_id),
            "data": payload,
        }
    )


@transaction.atomic
def deliveries_claim(*, limit: int) -> ClaimReport:
    """Claim up to `limit` due deliveries and decide, for each, send / wait / cancel (see module doc)."""
    now = timezone.now()
    lease_until = now + timedelta(seconds=settings.DELIVERY_LEASE_S)
    due = list(
        deliveries_dispatchable(now)
        .select_for_update(skip_locked=True, of=("self",), no_key=True)
        .select_related("lead_offer")
        .only(
            "id",
            "tenant_id",
            "status",
            "payload",
            "created_at",
            "attempt_count",
            "lead_offer__id",
            "lead_offer__lead_id",
            "lead_offer__status",
            "lead_offer__billing_eligibility",
        )
        .order_by("next_attempt_at")[:limit]
    )
    report = ClaimReport(rows=len(due))
    if not due:
        return report
    tenant_ids = {d.tenant_id for d in due}
    destinations = {
        row["tenant_id"]: row
        for row in DeliveryDestination.objects.filter(tenant_id__in=tenant_ids, is_active=True).values(
            "tenant_id", "id", "url", "secret"
        )
    }
    cancelled = [d for d in due if d.lead_offer.status != LeadOfferStatus.LEAD_READY]
    live = [d for d in due if d.lead_offer.status == LeadOfferStatus.LEAD_READY]
    waiting_destination = [d for d in live if d.tenant_id not in destinations]
    candidates = [d for d in live if d.tenant_id in destinations]

    paying_tenants = sorted(
        {d.tenant_id for d in candidates if is_chargeable(d.lead_offer.billing_eligibility)}
    )
    available: dict[uuid.UUID, int] = {}
    in_flight: dict[uuid.UUID, int] = {}
    if paying_tenants:
        # Lock order: tenant id. Completion and ledger writes lock one balance row at a time.
        available = dict(
            TenantCreditBalance.objects.select_for_update()
            .filter(tenant_id__in=paying_tenants)
            .order_by("tenant_id")
            .values_list("tenant_id", "balance")
        )
        in_flight = dict(
            Delivery.objects.filter(tenant_id__in=paying_tenants, claimed_until__gt=now)
            .exclude(pk__in=[d.pk for d in due])
            .values("tenant_id")
            .annotate(n=Count("id"))
            .values_list("tenant_id", "n")
        )
    sendable: list[Delivery] = []
    waiting_credits: list[Delivery] = []
    held: list[Delivery] = []
    for delivery in candidates:
        if is_chargeable(delivery.lead_offer.billing_eligibility):
            tenant_id = delivery.tenant_id
            free = available.get(tenant_id, 0) - in_flight.get(tenant_id, 0)
            if free < 1:
                (held if in_flight.get(tenant_id, 0) else waiting_credits).append(delivery)
                continue
            in_flight[tenant_id] = in_flight.get(tenant_id, 0) + 1
        sendable.append(delivery)

    for delivery in sendable:
        destination = destinations[delivery.tenant_id]
        report.claimed.append(
            Claimed(
                delivery_id=delivery.pk,
                tenant_id=delivery.tenant_id,
                attempt_number=delivery.attempt_count + 1,
                destination_id=destination["id"],
                url=destination["url"],
                secret=destination["secret"],
                body=delivery_body(delivery.pk, delivery.created_at, delivery.payload),
            )
        )
    if sendable:
        # One UPDATE for the batch; each row takes its tenant's active destination (the one the
        # request goes to: the destination rows are read in this same transaction).
        Delivery.objects.filter(pk__in=[d.pk for d in sendable]).update(
            attempt_count=F("attempt_count") + 1,
            last_attempt_at=now,
            claimed_until=lease_until,
            next_attempt_at=lease_until,
            blocked_reason="",
            destination_id=Subquery(
                DeliveryDestination.objects.filter(tenant_id=OuterRef("tenant_id"), is_active=True).values(
                    "pk"
                )[:1]
            ),
            updated_at=now,
        )
    _wait(waiting_destination, DeliveryBlockedReason.NO_ACTIVE_DESTINATION, "No active delivery destination.")
    _wait(waiting_credits, DeliveryBlockedReason.INSUFFICIENT_CREDITS, "Insufficient credits.")
    if held:
        Delivery.objects.filter(pk__in=[d.pk for d in held]).update(
            next_attempt_at=now + timedelta(seconds=HOLD_S), updated_at=now
        )
    for delivery in cancelled:
        _dead_letter(
            delivery,
            reason=f"Cancelled before delivery: the lead is {delivery.lead_offer.status}, not LEAD_READY.",
        )
    report.outcomes.update(
        {
            "claimed": len(sendable),
            "blocked_no_destination": len(waiting_destination),
            "blocked_no_credits": len(waiting_credits),
            "held": len(held),
            "cancelled": len(cancelled),
        }
    )
    for outcome in ("blocked_no_destination", "blocked_no_credits"):
        if report.outcomes[outcome]:
            DELIVERIES.labels(outcome).inc(report.outcomes[outcome])
    return report


def _wait(deliveries: list[Delivery], reason: str, message: str) -> None:
    """Park deliveries until something changes (a destination configured, credits bought)."""
    if not deliveries:
        return
    Delivery.objects.filter(pk__in=[d.pk for d in deliveries]).update(
        blocked_reason=reason,
        error_message=message,
        next_attempt_at=None,
        claimed_until=None,
        updated_at=timezone.now(),
    )
    logger.info(
        "deliveries waiting",
        extra={
            "reason": reason,
            "count": len(deliveries),
            "tenant_ids": sorted({str(d.tenant_id) for d in deliveries}),
        },
    )


def deliveries_send(claimed: list[Claimed]) -> list[tuple[Claimed, outbound.OutboundResult]]:
    """Send a claimed batch, all at once, signed (Standard Webhooks)."""
    requests = [
        outbound.OutboundRequest(
            url=c.url,
            body=c.body,
            headers=outbound.signed_headers(
                secret=c.secret, message_id=delivery_webhook_id(c.delivery_id), body=c.body
            ),
        )
        for c in claimed
    ]
    results = outbound.send(requests)
    for result in results:
        DELIVERY_SEND_SECONDS.observe(result.duration_ms / 1000)
    return list(zip(claimed, results, strict=True))


def _record(claimed: Claimed, result: outbound.OutboundResult) -> SendRecord:
    return SendRecord(
        delivery_id=claimed.delivery_id,
        attempt_number=claimed.attempt_number,
        destination_id=claimed.destination_id,
        url=claimed.url,
        status_code=result.status_code,
        duration_ms=result.duration_ms,
        error=result.error or ("" if result.succeeded else f"HTTP {result.status_code}"),
        response_excerpt="" if result.succeeded else result.response_excerpt,
    )


@transaction.atomic
def deliveries_fail(outcomes: list[tuple[SendRecord, outbound.OutboundResult]]) -> Tally[str]:
    """Settle failed sends: an attempt row each, then retry later, wait, or dead-letter.

    A send whose delivery was claimed again meanwhile (its lease ran out) only leaves its attempt row:
    the newer claim owns the delivery's state.
    """
    tally: Tally[str] = Tally()
    if not outcomes:
        return tally
    now = timezone.now()
    records = {record.delivery_id: (record, result) for record, result in outcomes}
    deliveries = list(
        Delivery.objects.select_for_update(of=("self",), no_key=True)
        .select_related("lead_offer")
        .filter(pk__in=list(records))
        .order_by("pk")
    )
    gone_destinations: set[uuid.UUID] = set()
    failed_destinations: set[uuid.UUID] = set()
    events: list[LeadEvent] = []
    changed: list[Delivery] = []
    trace_id = current_trace_id()
    for delivery in deliveries:
        record, result = records[delivery.pk]
        if record.destination_id:
            failed_destinations.add(record.destination_id)
        current = (
            delivery.status in (DeliveryStatus.PENDING, DeliveryStatus.FAILED)
            and delivery.attempt_count == record.attempt_number
        )
        if not current:
            tally["stale"] += 1
            continue
        attempts_used = delivery.attempt_count - delivery.attempt_budget_start
        delivery.status = DeliveryStatus.FAILED
        delivery.updated_at = now
        delivery.claimed_until = None
        delivery.error_message = record.error[:2000]
        if result.status_code == 410:
            # The receiver says the endpoint is gone for good: stop sending anything there.
            gone_destinations.add(record.destination_id)
            delivery.blocked_reason = DeliveryBlockedReason.NO_ACTIVE_DESTINATION
            delivery.next_attempt_at = None
            outcome = "destination_disabled"
        elif attempts_used >= settings.DELIVERY_MAX_ATTEMPTS:
            changed.append(delivery)
            _dead_letter(
                delivery,
                reason=f"Gave up after {attempts_used} attempts. Last error: {record.error}"[:2000],
            )
            tally["dead_letter"] += 1
            continue
        else:
            honoured = result.retry_after_s if result.status_code in (429, 503) else None
            delay = max(1, honoured) if honoured is not None else backoff_delay_s(attempts_used)
            delivery.next_attempt_at = now + timedelta(seconds=delay)
            outcome = "refused" if result.refused else "failed"
        tally[outcome] += 1
        changed.append(delivery)
        events.append(
            LeadEvent(
                lead_id=delivery.lead_offer.lead_id,
                lead_offer_id=delivery.lead_offer_id,
                tenant_id=delivery.tenant_id,
                event_type=LeadEventType.DELIVERY_FAILED,
                details={
                    "delivery_id": str(delivery.pk),
                    "attempt": record.attempt_number,
                    "status_code": record.status_code,
                    "error": record.error[:300],
                    "next_attempt_at": delivery.next_attempt_at.isoformat()
                    if delivery.next_attempt_at
                    else None,
                },
                trace_id=trace_id,
                created_at=now,
            )
        )
    retrying = [d for d in changed if d.status == DeliveryStatus.FAILED]
    if retrying:
        Delivery.objects.bulk_update(
            retrying,
            ["status", "claimed_until", "error_message", "blocked_reason", "next_attempt_at", "updated_at"],
        )
    DeliveryAttempt.objects.bulk_create(
        [attempt_row(record, succeeded=False) for record, _ in outcomes],
        ignore_conflicts=True,
    )
    LeadEvent.objects.bulk_create(events)
    destinations_touch(destination_ids=failed_destinations, field="last_failure_at", now=now)
    if gone_destinations:
        # Locked in id order (a rare path; it must not be skipped like the timestamps above).
        list(
            DeliveryDestination.objects.select_for_update(no_key=True)
            .filter(pk__in=gone_destinations)
            .order_by("pk")
        )
        disabled = DeliveryDestination.objects.filter(pk__in=gone_destinations, is_active=True).update(
            is_active=False,
            disabled_at=now,
            disabled_reason="The receiver answered 410 Gone; deliveries wait until it is enabled again.",
            updated_at=now,
        )
        if disabled:
            logger.warning(
                "delivery destination disabled after 410", extra={"destinations": len(gone_destinations)}
            )
    for outcome, count in tally.items():
        if outcome != "stale":
            DELIVERIES.labels(outcome).inc(count)
    return tally


@dataclass
class DispatchReport:
    batches: int = 0
    outcomes: Tally[str] = field(default_factory=Tally)


def deliveries_dispatch(
    *, time_budget_s: float | None = None, batch_size: int | None = None
) -> DispatchReport:
    """One dispatcher run (the job body): claim → send → settle until nothing is due or time is up."""
    batch_size = batch_size or settings.DELIVERY_BATCH_SIZE
    # Leave the lease room: a claimed batch must be settled long before its lease runs out.
    budget = time_budget_s if time_budget_s is not None else max(1.0, settings.DELIVERY_LEASE_S / 2)
    deadline = time.monotonic() + budget
    report = DispatchReport()
    while True:
        claim = deliveries_claim(limit=batch_size)
        report.outcomes.update(claim.outcomes)
        if not claim.rows:
            break
        report.batches += 1
        if claim.rows >= batch_size:
            # More may be due: let another dispatcher claim the next batch while this one sends.
            dispatcher_wake()
        sent = deliveries_send(claim.claimed)
        successes = [_record(c, r) for c, r in sent if r.succeeded]
        failures = [(_record(c, r), r) for c, r in sent if not r.succeeded]
        completions = deliveries_complete(successes)
        report.outcomes["delivered"] += sum(1 for c in completions if c.newly_delivered)
        report.outcomes.update(deliveries_fail(failures))
        if time.monotonic() >= deadline:
            if claim.rows >= batch_size:
                dispatcher_wake()
            break
    return report
