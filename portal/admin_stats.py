"""The read behind `GET /api/admin/stats`: the platform dashboard (API.md "Admin"; DOMAIN.md §5.7).

Counted from `tenant_stats_materialized` and small tables only, never a live COUNT over lead_offers:
- lead and delivery numbers (today, the 30-day window and its daily trend) come from the view, so
  they are as fresh as its last refresh (`as_of`, `view_age_s`; the worker refreshes it every minute);
- "today" is each tenant's own local day (D8: computed at read time, never frozen at refresh);
- the attention counters read small tables or a partial index: tenants and offers waiting for
  approval, PENDING_APPROVAL memberships, unmapped ads (below), low-credit tenants.

Unmapped ads, as v1 meant them (DOMAIN.md §5.7 `unmappedAds`, §3.2 `unmapped_ads_queue`) plus what
v1 dropped (§10.13): lead_offers parked in PENDING_MAPPING (tenant known, ad not mapped to an offer;
one index-only probe per tenant on idx_lead_offers_tenant_status_offer) and UNROUTED inbox changes
(no active mapping at all; idx_inbox_changes_parked), with the number of distinct ads behind them.

Low credit: ACTIVE tenants whose balance is below their OWN `low_credit_threshold` (v1 hard-coded 10);
a tenant with no balance row or no pricing row reads balance 0 and the model's default threshold (v1
could not see tenants without ledger rows).

Three statements in one guarded transaction whatever the number of tenants: the view state, the
30-day trend (one grouped query for all tenants) and one statement for every other counter.
"""

from __future__ import annotations

import datetime as dt
import uuid
from dataclasses import dataclass
from typing import Any

from django.db import connection
from django.utils import timezone

from billing.models import TenantPricing
from converzia.db.timeouts import guarded
from converzia.models import MembershipStatus, TenantStatus
from leads.models import InboxChangeStatus, LeadOfferStatus, OfferApprovalStatus, OfferStatus
from portal.stats_view import TrendPoint, all_tenants_daily_trend

ADMIN_TREND_DAYS = 30
LOW_CREDIT_LIST_LIMIT = 20


@dataclass(frozen=True)
class LowCreditTenant:
    tenant_id: uuid.UUID
    name: str
    balance: int
    threshold: int


@dataclass(frozen=True)
class AdminStats:
    as_of: dt.datetime | None  # the view's last refresh; None if it was never refreshed
    view_age_s: float | None
    tenants: int
    active_tenants: int
    offers: int
    active_offers: int
    credits_outstanding: int
    leads_today: int
    delivered_today: int
    leads_30d: int
    delivered_30d: int
    pending_tenants: int
    pending_memberships: int
    pending_offers: int
    pending_mapping_leads: int
    unrouted_changes: int
    unrouted_ads: int
    low_credit_count: int
    low_credit_tenants: list[LowCreditTenant]
    trend: list[TrendPoint]


# Every counter but the trend, in one statement. `{view_today}` reads the view, or is a constant while
# the view has never been populated (reading it then would fail). Values are bound parameters.
_COUNTERS_SQL = """
WITH tenant_today AS (
    SELECT t.id AS tenant_id,
           (now() AT TIME ZONE coalesce(tenant_stats_zone(t.timezone), 'UTC'))::date AS today
    FROM tenants t
),
low AS (
    SELECT t.id, t.name, coalesce(b.balance, 0) AS balance,
           coalesce(p.low_credit_threshold, %(default_threshold)s) AS threshold
    FROM tenants t
    LEFT JOIN tenant_credit_balances b ON b.tenant_id = t.id
    LEFT JOIN tenant_pricing p ON p.tenant_id = t.id
    WHERE t.status = %(active)s
      AND coalesce(b.balance, 0) < coalesce(p.low_credit_threshold, %(default_threshold)s)
)
SELECT
    (SELECT count(*) FROM tenants),
    (SELECT count(*) FROM tenants WHERE status = %(active)s),
    (SELECT count(*) FROM tenants WHERE status = %(pending)s),
    (SELECT count(*) FROM offers),
    (SELECT count(*) FROM offers WHERE status = %(offer_active)s),
    (SELECT count(*) FROM offers WHERE approval_status = %(offer_pending)s),
    (SELECT count(*) FROM tenant_members WHERE status = %(membership_pending)s),
    (SELECT coalesce(sum(balance), 0) FROM tenant_credit_balances),
    (SELECT count(*) FROM tenants t
        CROSS JOIN LATERAL (
            SELECT 1 FROM lead_offers lo WHERE lo.tenant_id = t.id AND lo.status = %(pending_mapping)s
        ) AS pm),
    (SELECT count(*) FROM webhook_inbox_changes WHERE status = %(unrouted)s),
    (SELECT count(DISTINCT ad_id) FROM webhook_inbox_changes WHERE status = %(unrouted)s),
    (SELECT count(*) FROM low),
    (SELECT coalesce(json_agg(json_build_array(l.id, l.name, l.balance, l.threshold)), '[]'::json)
        FROM (SELECT * FROM low ORDER BY balance, name, id LIMIT %(low_limit)s) AS l),
    {view_today}
"""

# Each tenant's local today (any zone's today is within a day of the UTC date: the range is a cheap
# pre-filter on the view's day-ordered rows).
_VIEW_TODAY_SQL = """(
    SELECT json_build_array(coalesce(sum(m.leads_total), 0), coalesce(sum(m.deliveries_delivered), 0))
    FROM tenant_stats_materialized m
    JOIN tenant_today tt ON tt.tenant_id = m.tenant_id AND tt.today = m.day
    WHERE m.day BETWEEN %(utc_today)s::date - 1 AND %(utc_today)s::date + 1
)"""


def _counters(*, view_populated: bool, utc_today: dt.date) -> tuple[Any, ...]:
    sql = _COUNTERS_SQL.format(view_today=_VIEW_TODAY_SQL if view_populated else "json_build_array(0, 0)")
    params = {
        "default_threshold": TenantPricing._meta.get_field("low_credit_threshold").get_default(),
        "active": TenantStatus.ACTIVE,
        "pending": TenantStatus.PENDING,
        "offer_active": OfferStatus.ACTIVE,
        "offer_pending": OfferApprovalStatus.PENDING_APPROVAL,
        "membership_pending": MembershipStatus.PENDING_APPROVAL,
        "pending_mapping": LeadOfferStatus.PENDING_MAPPING,
        "unrouted": InboxChangeStatus.UNROUTED,
        "low_limit": LOW_CREDIT_LIST_LIMIT,
        "utc_today": utc_today,
    }
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return cursor.fetchone()


def _admin_stats_read(*, now: dt.datetime) -> AdminStats:
    utc_today = now.astimezone(dt.UTC).date()
    trend = all_tenants_daily_trend(days=ADMIN_TREND_DAYS, until=utc_today)
    (
        tenants,
        active_tenants,
        pending_tenants,
        offers,
        active_offers,
        pending_offers,
        pending_memberships,
        credits_outstanding,
        pending_mapping,
        unrouted_changes,
        unrouted_ads,
        low_count,
        low_rows,
        today,
    ) = _counters(view_populated=trend.as_of is not None, utc_today=utc_today)
    age = None if trend.as_of is None else round((now - trend.as_of).total_seconds(), 1)
    return AdminStats(
        as_of=trend.as_of,
        view_age_s=age,
        tenants=tenants,
        active_tenants=active_tenants,
        offers=offers,
        active_offers=active_offers,
        credits_outstanding=int(credits_outstanding),
        leads_today=int(today[0]),
        delivered_today=int(today[1]),
        leads_30d=sum(point.received for point in trend.points),
        delivered_30d=sum(point.delivered for point in trend.points),
        pending_tenants=pending_tenants,
        pending_memberships=pending_memberships,
        pending_offers=pending_offers,
        pending_mapping_leads=pending_mapping,
        unrouted_changes=unrouted_changes,
        unrouted_ads=unrouted_ads,
        low_credit_count=low_count,
        low_credit_tenants=[
            LowCreditTenant(uuid.UUID(str(tenant_id)), name, balance, threshold)
            for tenant_id, name, balance, threshold in low_rows
        ],
        trend=trend.points,
    )


def admin_stats_get(*, now: dt.datetime | None = None) -> AdminStats:
    """The dashboard, read live (not cached: every number is a few index or view reads)."""
    return guarded("admin.stats", timeout_ms=5_000).run(_admin_stats_read, now=now or timezone.now())
