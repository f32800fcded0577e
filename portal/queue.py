"""The work waiting in the system (API.md `GET /api/admin/queue`; decision D5: queue depth = pending
inbox events + due deliveries). Every count is served by a partial or composite index."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from django.db.models import Count, Min
from django.utils import timezone

from converzia.db.timeouts import guarded
from deliveries.models import Delivery, DeliveryBlockedReason, DeliveryStatus
from leads.models import InboxChange, InboxChangeStatus, InboxEvent, InboxEventStatus


def _age_s(oldest: dt.datetime | None, now: dt.datetime) -> float | None:
    return round((now - oldest).total_seconds(), 1) if oldest else None


@dataclass(frozen=True)
class QueueBacklog:
    """Queue depth (D5) and its oldest ages: what readiness and `/metrics` report."""

    as_of: dt.datetime
    pending_events: int
    oldest_pending_age_s: float | None
    due_deliveries: int
    oldest_due_age_s: float | None


def _backlog(now: dt.datetime) -> QueueBacklog:
    """Two aggregate queries: pending inbox events (idx_inbox_events_pending) and due deliveries
    (idx_deliveries_due)."""
    inbox = InboxEvent.objects.filter(status=InboxEventStatus.PENDING).aggregate(
        pending=Count("pk"), oldest=Min("received_at")
    )
    due = Delivery.objects.due(now).aggregate(due=Count("pk"), oldest=Min("next_attempt_at"))
    return QueueBacklog(
        as_of=now,
        pending_events=inbox["pending"],
        oldest_pending_age_s=_age_s(inbox["oldest"], now),
        due_deliveries=due["due"],
        oldest_due_age_s=_age_s(due["oldest"], now),
    )


@guarded("queue.backlog", timeout_ms=2_000, retries=0)
def queue_backlog_get() -> QueueBacklog:
    """The backlog alone, for probes polled every few seconds (no retry: the next poll is one)."""
    return _backlog(timezone.now())


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
    """Six aggregate queries, each on its own index: pending inbox events (idx_inbox_events_pending),
    parked changes (idx_inbox_changes_parked), due deliveries (idx_deliveries_due), failed and dead
    deliveries (idx_deliveries_status_created), waiting ones by reason and those in flight."""
    now = timezone.now()
    backlog = _backlog(now)
    parked = dict(
        InboxChange.objects.filter(status__in=InboxChangeStatus.parked())
        .values("status")
        .annotate(n=Count("pk"))
        .values_list("status", "n")
    )
    # Each count reads only the index built for it: a single aggregate over the open statuses would
    # read the whole table once dead letters pile up (a parallel seq scan at 256k deliveries).
    settled = dict(
        Delivery.objects.filter(status__in=[DeliveryStatus.FAILED, DeliveryStatus.DEAD_LETTER])
        .values_list("status")
        .annotate(n=Count("*"))
    )  # index-only on idx_deliveries_status_created
    waiting = dict(
        Delivery.objects.filter(status__in=[DeliveryStatus.PENDING, DeliveryStatus.FAILED])
        .exclude(blocked_reason="")
        .values_list("blocked_reason")
        .annotate(n=Count("*"))
    )  # the rows of idx_deliveries_due (partial on PENDING and FAILED)
    in_flight = Delivery.objects.filter(claimed_until__gt=now).count()  # idx_deliveries_in_flight
    return QueueDepth(
        as_of=now,
        pending_events=backlog.pending_events,
        oldest_pending_age_s=backlog.oldest_pending_age_s,
        parked_changes={status: parked.get(status, 0) for status in InboxChangeStatus.parked()},
        due_deliveries=backlog.due_deliveries,
        oldest_due_age_s=backlog.oldest_due_age_s,
        in_flight_deliveries=in_flight,
        failed_deliveries=settled.get(DeliveryStatus.FAILED, 0),
        waiting_deliveries={reason: waiting.get(reason, 0) for reason in DeliveryBlockedReason.values},
        dead_letter_deliveries=settled.get(DeliveryStatus.DEAD_LETTER, 0),
    )
