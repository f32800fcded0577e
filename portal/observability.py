"""Registers the portal's probes with the kernel's observability (readiness and `/metrics`)."""

from __future__ import annotations

from converzia.db.timeouts import guarded
from converzia.observability.probes import (
    QueueSnapshot,
    StatsViewSnapshot,
    register_queue_probe,
    register_stats_view_probe,
)
from portal.queue import queue_backlog_get
from portal.stats_view import stats_view_state


def queue_probe() -> QueueSnapshot:
    backlog = queue_backlog_get()
    return QueueSnapshot(
        pending_events=backlog.pending_events,
        oldest_pending_age_s=backlog.oldest_pending_age_s,
        due_deliveries=backlog.due_deliveries,
        oldest_due_age_s=backlog.oldest_due_age_s,
    )


@guarded("observability.stats_view.state", timeout_ms=2_000, retries=0)
def stats_view_probe() -> StatsViewSnapshot:
    state = stats_view_state()
    age = state.age_seconds()
    return StatsViewSnapshot(
        refreshed_at=state.refreshed_at, age_s=round(age, 1) if age is not None else None
    )


def register() -> None:
    register_queue_probe(queue_probe)
    register_stats_view_probe(stats_view_probe)
