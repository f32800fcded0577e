"""Read-only probes that other apps plug in, so the kernel can report on them without importing them.

`portal` registers the queue-depth and stats-view probes in its `AppConfig.ready()` (nothing in the
kernel imports from `portal/`). Readiness and the scrape-time metrics call them; an unregistered probe
reads as None.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class QueueSnapshot:
    """The work waiting (decision D5): pending inbox events and due deliveries, with their oldest ages."""

    pending_events: int
    oldest_pending_age_s: float | None
    due_deliveries: int
    oldest_due_age_s: float | None


@dataclass(frozen=True)
class StatsViewSnapshot:
    """When tenant_stats_materialized was last refreshed (None: never)."""

    refreshed_at: dt.datetime | None
    age_s: float | None


QueueProbe = Callable[[], QueueSnapshot]
StatsViewProbe = Callable[[], StatsViewSnapshot]

_probes: dict[str, Callable[[], object]] = {}


def register_queue_probe(probe: QueueProbe) -> None:
    _probes["queue"] = probe


def register_stats_view_probe(probe: StatsViewProbe) -> None:
    _probes["stats_view"] = probe


def queue_snapshot() -> QueueSnapshot | None:
    probe = _probes.get("queue")
    return probe() if probe else None  # type: ignore[return-value]


def stats_view_snapshot() -> StatsViewSnapshot | None:
    probe = _probes.get("stats_view")
    return probe() if probe else None  # type: ignore[return-value]
