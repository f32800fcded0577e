"""Portal reads that compose several domains (leads, deliveries) into API-shaped rows.

Rows are built as plain dicts: the lead list is the portal's hot path, and a ModelSerializer per row
costs more than the query. PII goes through leads.privacy, the one visibility rule. Every main query
runs inside `guarded` (decision D3).
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from django.db.models import QuerySet

from converzia.api.pagination import keyset_page
from converzia.db.prepared import PreparedQuery
from converzia.db.timeouts import guarded
from converzia.models import Tenant
from leads.funnel import stage_for_status, statuses_for_stage
from leads.models import LeadOffer
from leads.privacy import lead_contact, pii_visible, redact_pii
from leads.selectors import lead_offer_detail_row, lead_offer_list_for_tenant, lead_offer_timeline
from portal.stats_view import tenant_local_midnight

TIMELINE_LIMIT = 200


@dataclass(frozen=True)
class LeadFilters:
    statuses: Sequence[str] | None = None
    stage: str | None = None
    offer_id: uuid.UUID | None = None
    created_from: dt.date | None = None
    created_to: dt.date | None = None  # inclusive
    q: str | None = None


def portal_lead_offers(*, tenant: Tenant, filters: LeadFilters, can_view_details: bool) -> QuerySet[Any]:
    """The (lazy) filtered list query; dates become the tenant's local-midnight bounds."""
    return lead_offer_list_for_tenant(
        tenant=tenant,
        statuses=filters.statuses,
        stage_statuses=statuses_for_stage(filters.stage) if filters.stage else None,
        offer_id=filters.offer_id,
        **_created_bounds(tenant, filters),
        q=filters.q,
        can_view_details=can_view_details,
    )


def _lead_page_query(
    *,
    tenant_id: uuid.UUID,
    statuses: Sequence[str] | None,
    stage_statuses: Sequence[str] | None,
    offer_id: uuid.UUID | None,
    created_from: dt.datetime | None,
    created_before: dt.datetime | None,
    can_view_details: bool,
    order: Sequence[str],
    after: Sequence[Any] | None,
    limit: int,
) -> QuerySet[Any]:
    return keyset_page(
        lead_offer_list_for_tenant(
            tenant=tenant_id,
            statuses=statuses,
            stage_statuses=stage_statuses,
            offer_id=offer_id,
            created_from=created_from,
            created_before=created_before,
            can_view_details=can_view_details,
        ),
        order,
        after,
        limit,
    )


# The list without `q`: compiled once per filter combination (converzia.db.prepared).
_LEAD_PAGE = PreparedQuery("portal.leads.list", _lead_page_query)


@guarded("portal.leads.list", atomic=False)
def portal_lead_page(
    *,
    tenant: Tenant,
    filters: LeadFilters,
    can_view_details: bool,
    paginate: Callable[[QuerySet[Any]], list[dict[str, Any]]],
    paginate_prepared: Callable[..., list[dict[str, Any]]],
) -> list[dict[str, Any]]:
    """One page of the lead list as API items: one query (the page, related names joined in).

    `paginate` pages a queryset, `paginate_prepared` a prepared query (the view's keyset paginator).
    A search (`q`) matches a transformed text, which cannot be bound: it stays an ordinary queryset.
    """
    if filters.q:
        rows = paginate(portal_lead_offers(tenant=tenant, filters=filters, can_view_details=can_view_details))
    else:
        rows = paginate_prepared(
            _LEAD_PAGE,
            LeadOffer,
            tenant_id=tenant.pk,
            statuses=filters.statuses,
            stage_statuses=statuses_for_stage(filters.stage) if filters.stage else None,
            offer_id=filters.offer_id,
            **_created_bounds(tenant, filters),
            can_view_details=can_view_details,
        )
    return [lead_list_item(row, can_view_details=can_view_details) for row in rows]


def _created_bounds(tenant: Tenant, filters: LeadFilters) -> dict[str, dt.datetime | None]:
    """`created_from` and `created_to` (local dates, inclusive) as the tenant's local-midnight bounds."""
    return {
        "created_from": (
            tenant_local_midnight(tenant, filters.created_from) if filters.created_from else None
        ),
        "created_before": (
            tenant_local_midnight(tenant, filters.created_to + dt.timedelta(days=1))
            if filters.created_to
            else None
        ),
    }


def lead_list_item(row: Mapping[str, Any], *, can_view_details: bool) -> dict[str, Any]:
    offer_id = row["offer_id"]
    return {
        "id": row["id"],
        "status": row["status"],
        "stage": stage_for_status(row["status"]),
        "offer": {"id": offer_id, "name": row["offer__name"]} if offer_id is not None else None,
        "lead": lead_contact(
            lead_offer_id=row["id"],
            status=row["status"],
            can_view_details=can_view_details,
            full_name=row["lead__full_name"],
            first_name=row["lead__first_name"],
            last_name=row["lead__last_name"],
            phone=row["lead__phone"],
            email=row["lead__email"],
        ),
        "score_total": row["score_total"],
        "billing_eligibility": row["billing_eligibility"],
        # No source (leads created by hand): the same object with nulls, so clients need no branch.
        "source": {
            "platform": row["lead_source__platform"],
            "ad_id": row["lead_source__ad_id"] or None,
            "form_id": row["lead_source__form_id"] or None,
            "campaign_id": row["lead_source__campaign_id"] or None,
        },
        "created_at": row["created_at"],
        "updated_at": row["updated_at"],
        "status_changed_at": row["status_changed_at"],
    }


@guarded("portal.leads.detail", atomic=False)
def portal_lead_detail(*, tenant: Tenant, lead_offer_id: uuid.UUID, can_view_details: bool) -> dict[str, Any]:
    """One lead_offer with its delivery and timeline: two queries (the row with its lead, offer,
    source and delivery joined; the events). Missing and foreign ids raise the same `NotFound`."""
    row = lead_offer_detail_row(tenant=tenant, lead_offer_id=lead_offer_id)
    events = lead_offer_timeline(tenant=tenant, lead_offer_id=row["id"], limit=TIMELINE_LIMIT)
    visible = pii_visible(status=row["status"], can_view_details=can_view_details)
    item = lead_list_item(row, can_view_details=can_view_details)
    item["qualification_fields"] = redact_pii(
        row["qualification_fields"] or {}, lead_offer_id=row["id"], visible=visible
    )
    item["score_breakdown"] = row["score_breakdown"] or {}
    item["delivery"] = _delivery(row)
    item["timeline"] = [
        {
            "event_type": event["event_type"],
            "created_at": event["created_at"],
            "actor_type": event["actor_type"],
            "details": redact_pii(event["details"] or {}, lead_offer_id=row["id"], visible=visible),
        }
        for event in events
    ]
    return item


def _delivery(row: Mapping[str, Any]) -> dict[str, Any] | None:
    if row["delivery__id"] is None:  # no delivery row joined
        return None
    return {
        "status": row["delivery__status"],
        "attempts": row["delivery__attempt_count"],
        "delivered_at": row["delivery__delivered_at"],
        "blocked_reason": row["delivery__blocked_reason"] or None,
    }
