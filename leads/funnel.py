"""The funnel: the one definition of how the 13 lead_offer statuses map to 5 stages (decision D1).

Every count in the system (API, materialized view, admin) is generated from this module.
"""

from __future__ import annotations

from dataclasses import dataclass

from django.db.models import Count, Q

from leads.models import LeadOfferStatus as S


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


def stage_count_aggregates(status_field: str = "status") -> dict[str, Count]:
    """One `Count(filter=...)` per stage, for `.aggregate()` or `.annotate()` over lead_offers."""
    # Counting the status column (never NULL) rather than the primary key lets PostgreSQL answer
    # from idx_lead_offers_tenant_status_offer alone (an index-only scan).
    return {
        stage.key: Count(status_field, filter=Q(**{f"{status_field}__in": stage.statuses}))
        for stage in FUNNEL_STAGES
    }


def conversion_rate(delivered: int, total: int) -> float:
    """Delivered / total × 100, rounded to 2 places; 0 when there are no leads."""
    return round(delivered * 100 / total, 2) if total else 0.0
