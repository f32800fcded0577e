"""The funnel: the one definition of how the 13 lead_offer statuses map to 5 stages (decision D1).

Every count in the system (API, materialized view, admin) is generated from this module.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TypeVar

from leads.models import LeadOfferStatus as S

K = TypeVar("K")


@dataclass(frozen=True)
class FunnelStage:
    key: str
    label: str
    statuses: tuple[str, ...]


FUNNEL_STAGES: tuple[FunnelStage, ...] = (
    FunnelStage("received", "Recibidos", (S.PENDING_MAPPING, S.TO_BE_CONTACTED)),
    FunnelStage("in_chat", "En Chat", (S.CONTACTED, S.ENGAGED, S.QUALIFYING, S.HUMAN_HANDOFF)),
    FunnelStage("qualified", "Calificados", (S.SCORED, S.LEAD_READY)),
    FunnelStage("delivered", "Entregados", (S.SENT_TO_DEVELOPER,)),
    FunnelStage("not_qualified", "No Calificados", (S.DISQUALIFIED, S.STOPPED, S.COOLING, S.REACTIVATION)),
)

STAGE_KEYS: tuple[str, ...] = tuple(stage.key for stage in FUNNEL_STAGES)
STAGE_BY_STATUS: dict[str, str] = {status: stage.key for stage in FUNNEL_STAGES for status in stage.statuses}


def stage_for_status(status: str) -> str:
    return STAGE_BY_STATUS[status]


def statuses_for_stage(stage_key: str) -> tuple[str, ...]:
    for stage in FUNNEL_STAGES:
        if stage.key == stage_key:
            return stage.statuses
    raise KeyError(stage_key)


def unmapped_statuses() -> list[str]:
    """Statuses that belong to no stage; must always be empty."""
    return [status for status in S.values if status not in STAGE_BY_STATUS]


def stage_counts(status_counts: Mapping[str, int]) -> dict[str, int]:
    """Counts per stage from counts per status (a `GROUP BY status`), through the one stage map.

    PostgreSQL counts one group per status faster than it evaluates a FILTER per stage on every row,
    and folding here keeps `sum(stages) == total` true by construction.
    """
    stages = dict.fromkeys(STAGE_KEYS, 0)
    for status, count in status_counts.items():
        stages[STAGE_BY_STATUS[status]] += count
    return stages


def status_counts_by_group(rows: Iterable[tuple[K, str, int]]) -> dict[K, dict[str, int]]:
    """`(group, status, count)` rows, as `GROUP BY group, status` returns them, nested by group."""
    grouped: dict[K, dict[str, int]] = defaultdict(dict)
    for group, status, count in rows:
        grouped[group][status] = count
    return dict(grouped)


def conversion_rate(delivered: int, total: int) -> float:
    """Delivered / total × 100, rounded to 2 places; 0 when there are no leads."""
    return round(delivered * 100 / total, 2) if total else 0.0
