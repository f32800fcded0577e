"""The lead_offer transition matrix (DOMAIN.md §2.8).

The database enforces the same matrix with a trigger (leads migration 0002), so `QuerySet.update()`
cannot make an illegal move either; a test checks that the two agree pair by pair.
"""

from __future__ import annotations

from leads.models import LeadOfferStatus as S

ALLOWED_TRANSITIONS: dict[str, frozenset[str]] = {
    S.PENDING_MAPPING: frozenset({S.TO_BE_CONTACTED, S.DISQUALIFIED, S.STOPPED}),
    S.TO_BE_CONTACTED: frozenset({S.CONTACTED, S.COOLING, S.STOPPED, S.DISQUALIFIED}),
    S.CONTACTED: frozenset({S.ENGAGED, S.COOLING, S.STOPPED, S.DISQUALIFIED}),
    S.ENGAGED: frozenset({S.QUALIFYING, S.COOLING, S.STOPPED, S.DISQUALIFIED, S.HUMAN_HANDOFF}),
    S.QUALIFYING: frozenset({S.SCORED, S.LEAD_READY, S.COOLING, S.STOPPED, S.DISQUALIFIED, S.HUMAN_HANDOFF}),
    S.SCORED: frozenset({S.LEAD_READY, S.QUALIFYING, S.COOLING, S.STOPPED, S.DISQUALIFIED}),
    S.LEAD_READY: frozenset({S.SENT_TO_DEVELOPER, S.STOPPED, S.DISQUALIFIED}),
    S.SENT_TO_DEVELOPER: frozenset({S.STOPPED}),
    S.COOLING: frozenset({S.REACTIVATION, S.STOPPED, S.DISQUALIFIED}),
    S.REACTIVATION: frozenset({S.CONTACTED, S.ENGAGED, S.STOPPED, S.DISQUALIFIED}),
    S.DISQUALIFIED: frozenset({S.REACTIVATION}),
    S.STOPPED: frozenset(),
    S.HUMAN_HANDOFF: frozenset({S.QUALIFYING, S.LEAD_READY, S.STOPPED, S.DISQUALIFIED}),
}


def is_allowed(from_status: str, to_status: str) -> bool:
    """Keeping the same status is always allowed; any change must be in the matrix."""
    return from_status == to_status or to_status in ALLOWED_TRANSITIONS[from_status]


def allowed_targets(from_status: str) -> list[str]:
    """The allowed targets in the enum's declared order, for error messages."""
    return [status for status in S.values if status in ALLOWED_TRANSITIONS[from_status]]
