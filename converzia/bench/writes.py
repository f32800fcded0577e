"""The ops write: `POST /api/ops/lead-offers/{id}/transition` as staff (TARGETS.md "writes").

It changes data, so it only makes moves that can be undone and undoes them: each picked lead_offer of
the measured tenant goes to a partner status and back (QUALIFYING ⇄ HUMAN_HANDOFF, SCORED ⇄ QUALIFYING:
the pairs of the matrix whose moves touch no delivery, credit or disqualification field), and any row
a stopped run left at its partner status is moved back afterwards. What stays: two STATUS_CHANGE events
per round trip, and the rows' `updated_at`, `status_changed_at` and `previous_status`.

Each client thread owns its rows, so a row's two moves are never in flight at once.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass

import orjson

from converzia.bench.fixture import MeasuredTenant
from converzia.bench.http import HttpRequest, LoadResult, SessionScript, _Client, run_sessions
from leads.models import LeadOffer
from leads.models import LeadOfferStatus as S
from leads.transitions import ALLOWED_TRANSITIONS

# Statuses whose entry or exit has side effects beyond the row (a delivery, a charge, the
# disqualification fields): never used by the benchmark.
_SIDE_EFFECTS = frozenset({S.LEAD_READY, S.SENT_TO_DEVELOPER, S.DISQUALIFIED})
ROWS_PER_CLIENT = 4
REASON = "bench: reversible transition"


def reversible_partners() -> dict[str, str]:
    """For each status that has one, a status it can move to and come back from (from the matrix)."""
    partners = {}
    for status, targets in ALLOWED_TRANSITIONS.items():
        if status in _SIDE_EFFECTS:
            continue
        back = sorted(
            target
            for target in targets
            if target not in _SIDE_EFFECTS and status in ALLOWED_TRANSITIONS.get(target, ())
        )
        if back:
            partners[status] = back[0]
    return partners


@dataclass(frozen=True)
class TransitionRun:
    load: LoadResult
    restored: int  # rows the run left at their partner status, moved back afterwards


@dataclass(frozen=True)
class TransitionRow:
    id: uuid.UUID
    status: str  # where it is, and must end
    partner: str


def transition_rows(tenant: MeasuredTenant, count: int) -> list[TransitionRow]:
    """Up to `count` of the tenant's lead_offers in a status with a reversible partner."""
    partners = reversible_partners()
    rows = (
        LeadOffer.objects.for_tenant(tenant.tenant)
        .filter(status__in=list(partners))
        .order_by()  # any rows will do: no sort over the whale's lead_offers
        .values_list("id", "status")[:count]
    )
    return [TransitionRow(id=pk, status=status, partner=partners[status]) for pk, status in rows]


def _transition(row_id: uuid.UUID, to: str, token: str) -> HttpRequest:
    return HttpRequest(
        "POST",
        f"/api/ops/lead-offers/{row_id}/transition",
        {
            "Authorization": f"Bearer {token}",
            "Accept": "application/json",
            "Content-Type": "application/json",
        },
        orjson.dumps({"to": to, "reason": REASON}),
    )


def _round_trips(rows: list[TransitionRow], token: str) -> Callable[[], SessionScript]:
    def script() -> SessionScript:
        while True:
            for row in rows:
                yield _transition(row.id, row.partner, token)
                yield _transition(row.id, row.status, token)

    return script


def run_transitions(
    base_url: str,
    rows: list[TransitionRow],
    staff_token: str,
    *,
    total: int,
    concurrency: int,
    max_seconds: float | None,
) -> TransitionRun:
    """`total` transitions from `concurrency` clients, then every row put back where it was."""
    clients = max(1, min(concurrency, len(rows)))
    scripts = [_round_trips(rows[index::clients], staff_token) for index in range(clients)]
    load = run_sessions(base_url, scripts, total=total, max_seconds=max_seconds)
    return TransitionRun(load=load, restored=_restore(base_url, rows, staff_token, load))


def _restore(base_url: str, rows: list[TransitionRow], token: str, load: LoadResult) -> int:
    """Move back (untimed) every row the run stopped between its two moves; a failure counts."""
    now = dict(LeadOffer.objects.filter(pk__in=[row.id for row in rows]).values_list("id", "status"))
    client = _Client(base_url, 30.0)
    restored = 0
    try:
        for row in rows:
            if now.get(row.id) == row.status:
                continue
            status, body = client.send(_transition(row.id, row.status, token))
            if status == 200:
                restored += 1
            else:
                load.errors["restore failed"] += 1
                load.first_failure = load.first_failure or f"restoring {row.id}: {status} {body[:300]!r}"
    finally:
        client.close()
    return restored
