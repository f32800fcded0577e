"""The work waiting in the system (API.md `GET /api/admin/queue`; decision D5: queue depth = pending
inbox events + due deliveries). Every count is served by a partial or composite index."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from django.db.models import Count, Min, Q
from django.utils import timezone

from converzia.db.timeouts import guarded
from deliveries.models import Delivery, DeliveryBlockedReason, DeliveryStatus
from leads.models import InboxChange, InboxChangeStatus, InboxEvent, InboxEventStatus


def _age_s(oldest: dt.datetime | None, now: dt.datetime) -> float | None:
    return round((now - oldest).total_seconds(), 1) if oldest else None


@dataclass(frozen=True)
class QueueDepth:
    as_of: dt.datetime
    pending_events: int
    oldest_pending_age_s: float | None
    parked_changes: dict[str, int]
    due_deliveries: int
    oldest_due_age_s: float | None
    in_flight_deliveries: int
    failed_deliveries: int
    waiting_deliveries: dict[str, int]
    dead_letter_deliveries: int


@guarded("admin.queue.depth", timeout_ms=5_000)
def queue_depth_get() -> QueueDepth:
    """Four aggregate queries: pending inbox events (idx_inbox_events_pending), parked changes
    (idx_inbox_changes_parked), due deliveries (idx_deliveries_due) and deliveries by status
    (idx_deliveries_status_created)."""
    now = timezone.now()
    inbox = InboxEvent.objects.filter(status=InboxEventStatus.PENDING).aggregate(
        pending=Count("pk"), oldest=Min("received_at")
    )
    parked = dict(
        InboxChange.objects.filter(status__in=InboxChangeStatus.parked())
        .values("status")
        .annotate(n=Count("pk"))
        .values_list("status", "n")
    )
    due = Delivery.objects.due(now).aggregate(
        due=Count("pk"),
        oldest=Min("next_attempt_at"),
    )
    open_statuses = [DeliveryStatus.PENDING, DeliveryStatus.FAILED, DeliveryStatus.DEAD_LETTER]
    by_status = Delivery.objects.filter(status__in=open_statuses).aggregate(
        failed=Count("pk", filter=Q(status=DeliveryStatus.FAILED)),
        dead_letter=Count("pk", filter=Q(status=DeliveryStatus.DEAD_LETTER)),
        in_flight=Count("pk", filter=Q(claimed_until__gt=now)),
        **{
            reason.lower(): Count(
                "pk", filter=Q(blocked_reason=reason) & ~Q(status=DeliveryStatus.DEAD_LETTER)
            )
            for reason in DeliveryBlockedReason.values
        },
    )
    return QueueDepth(
        as_of=now,
        pending_events=inbox["pending"],
        oldest_pending_age_s=_age_s(inbox["oldest"], now),
        parked_changes={status: parked.get(status, 0) for status in InboxChangeStatus.parked()},
        due_deliveries=due["due"],
        oldest_due_age_s=_age_s(due["oldest"], now),
        in_flight_deliveries=by_status["in_flight"],
        failed_deliveries=by_status["failed"],
        waiting_deliveries={reason: by_status[reason.lower()] for reason in DeliveryBlockedReason.values},
        dead_letter_deliveries=by_status["dead_letter"],
    )
