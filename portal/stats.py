"""Reads behind `GET /api/portal/leads/stats` and `GET /api/portal/funnel` (decisions D1, D2, D8a, D9).

Composition only: the stage map comes from `leads.funnel`, the counts by status from the maintained
counters (`leads.counters`), the daily trend from `tenant_stats_materialized` (`portal.stats_view`).
Every live count is a SQL aggregate (never rows counted in Python) run through `guarded`, and every
window ("today", "7d", `created_from`) is cut at the tenant's local midnight, computed at read time.
The live stats are two statements (every number, then the trend); the live funnel is two (the
offers, then the counts by offer and status).

The `*_compute` functions return JSON-able dicts (they are what the cache stores); the `*_get`
functions wrap them in `cached_read` with the tenant-versioned keys, so a lead change invalidates them.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from django.db import connection
from django.db.models import Count, QuerySet
from django.utils import timezone

from converzia.cache import (
    TTL_FUNNEL,
    TTL_STATS,
    CachedRead,
    cached_read,
    tenant_funnel_key,
    tenant_stats_key,
)
from converzia.db.prepared import PreparedQuery
from converzia.db.timeouts import guarded
from converzia.models import Tenant
from converzia.tenancy import scoped
from leads.counters import COUNTS_READ_SQL, LeadOfferCounts, lead_offer_counts_from_rows
from leads.funnel import FUNNEL_STAGES, conversion_rate, stage_counts, status_counts_by_group
from leads.models import (
    DisqualificationCategory,
    LeadEventType,
    LeadOffer,
    LeadOfferStatus,
    Offer,
    OfferStatus,
)
from leads.selectors import FunnelCounts, offer_get_for_tenant, offer_list_for_tenant
from portal.models import TenantDailyStats
from portal.stats_view import VIEW_HISTORY_DAYS, VIEW_NAME, tenant_local_midnight, tenant_local_today

STATS_DAYS_DEFAULT = 30
STATS_DAYS_MAX = VIEW_HISTORY_DAYS  # the trend cannot reach further back than the view keeps
# The fixed windows of `leads_*` / `delivered_*`, in local days counting today.
STATS_WINDOWS: dict[str, int] = {"today": 1, "7d": 7, "30d": 30}

_STATUSES: tuple[str, ...] = tuple(LeadOfferStatus.values)
_CATEGORIES: tuple[str, ...] = tuple(DisqualificationCategory.values)
_KNOWN_CATEGORIES = tuple(c for c in _CATEGORIES if c != DisqualificationCategory.OTHER)


def _window_starts(tenant: Tenant, today: dt.date) -> dict[str, dt.datetime]:
    return {
        name: tenant_local_midnight(tenant, today - dt.timedelta(days=days - 1))
        for name, days in STATS_WINDOWS.items()
    }


# --- leads/stats -----------------------------------------------------------------------------------


def _window_counts(column: str) -> str:
    """One `count(*) FILTER` per window of `STATS_WINDOWS`, in its order, as a SQL array: the windows
    nest, so one scan from the oldest start counts them all."""
    return (
        "ARRAY["
        + ", ".join(f"count(*) FILTER (WHERE {column} >= %(since_{name})s)" for name in STATS_WINDOWS)
        + "]"
    )


# Every live number of the stats body but the trend, in ONE statement: one round trip and one snapshot
# instead of six. Raw SQL (bound parameters, run inside the stats guard) because the ORM cannot embed
# the counters' UNION ALL nor count three windows in one scan without a GROUP BY subquery, and a
# constant string costs no ORM compilation per request. Each scalar subquery keeps the plan it had as
# a statement of its own (checked by the portal.stats.* patterns of `manage.py explain_check`):
# - whether tenant_stats_materialized can be read (the trend, a second statement, needs it populated);
# - the maintained counters (leads/counters.py; ~20 rows: the primary key of lead_offer_counts plus
#   the pending deltas), as one json array (json, not jsonb: Django's backend hands jsonb back as
#   text). Stages and total derive from the counts by status through the one stage map, so
#   `sum(stages) == total` by construction;
# - lead_offers created in the windows: index-only on idx_lead_offers_tenant_created, from the oldest
#   window start on;
# - deliveries completed in the windows. Delivered = DELIVERY_COMPLETED events, not lead_offers
#   currently SENT_TO_DEVELOPER by status_changed_at: a delivered lead may later move on
#   (SENT_TO_DEVELOPER → STOPPED) and would vanish from the window, while the event is immutable and
#   dated when the delivery completed, the same instant (deliveries.delivered_at) the trend's
#   `delivered` counts. Index-only on idx_lead_events_tenant_type_created;
# - the credit balance: the one balance definition (billing.services.credit_balance_get), the
#   tenant's balance row, NULL (read as 0) while it has none;
# - the tenant's ACTIVE offers.
_LIVE_SQL = f"""
SELECT
    (SELECT relispopulated FROM pg_class WHERE oid = %(view)s::regclass),
    (SELECT coalesce(json_agg(json_build_array(status, disqualification_category, n)), '[]'::json)
     FROM ({COUNTS_READ_SQL}) AS counters),
    (SELECT {_window_counts("created_at")}
     FROM lead_offers
     WHERE tenant_id = %(tenant)s AND created_at >= %(since)s),
    (SELECT {_window_counts("created_at")}
     FROM lead_events
     WHERE tenant_id = %(tenant)s AND event_type = %(delivery_completed)s AND created_at >= %(since)s),
    (SELECT balance FROM tenant_credit_balances WHERE tenant_id = %(tenant)s),
    (SELECT count(*) FROM offers WHERE tenant_id = %(tenant)s AND status = %(offer_active)s)
"""


@dataclass(frozen=True)
class _LiveNumbers:
    view_populated: bool
    counters: LeadOfferCounts
    created: dict[str, int]  # by window name
    delivered: dict[str, int]  # by window name
    credit_balance: int
    active_offers: int


def _live_numbers(*, tenant: Tenant, window_starts: dict[str, dt.datetime]) -> _LiveNumbers:
    params: dict[str, Any] = {
        "view": VIEW_NAME,
        "tenant": tenant.pk,
        "since": min(window_starts.values()),
        "delivery_completed": LeadEventType.DELIVERY_COMPLETED,
        "offer_active": OfferStatus.ACTIVE,
        **{f"since_{name}": start for name, start in window_starts.items()},
    }
    with connection.cursor() as cursor:
        cursor.execute(_LIVE_SQL, params)
        populated, counter_rows, created, delivered, balance, active_offers = cursor.fetchone()
    return _LiveNumbers(
        view_populated=populated,
        counters=lead_offer_counts_from_rows(counter_rows),
        created=dict(zip(STATS_WINDOWS, created, strict=True)),
        delivered=dict(zip(STATS_WINDOWS, delivered, strict=True)),
        credit_balance=balance or 0,
        active_offers=active_offers,
    )


_TREND_ROWS = PreparedQuery(
    "portal.stats.trend",
    lambda *, tenant_id, first, last: (
        TenantDailyStats.objects.for_tenant(tenant_id)
        .filter(day__gte=first, day__lte=last)
        .values("day", "leads_total", "deliveries_delivered")
    ),
)


def _trend(*, tenant: Tenant, days: int, until: dt.date, view_populated: bool) -> list[dict[str, Any]]:
    """The last `days` local days up to `until`, oldest first, zero-filled: one statement over
    tenant_stats_materialized (the read of `portal.stats_view.tenant_daily_trend`, whose view state
    `_LIVE_SQL` already read), none while the view has never been populated (reading it would fail)."""
    window = [until - dt.timedelta(days=offset) for offset in range(days - 1, -1, -1)]
    rows: dict[dt.date, tuple[int, int]] = {}
    if view_populated:
        rows = {
            row["day"]: (row["leads_total"], row["deliveries_delivered"])
            for row in _TREND_ROWS.rows(tenant_id=tenant.pk, first=window[0], last=window[-1])
        }
    points = []
    for day in window:
        received, delivered = rows.get(day, (0, 0))
        points.append({"date": day.isoformat(), "received": received, "delivered": delivered})
    return points


def _stats_reads(*, tenant: Tenant, today: dt.date, days: int) -> tuple[_LiveNumbers, list[dict[str, Any]]]:
    live = _live_numbers(tenant=tenant, window_starts=_window_starts(tenant, today))
    return live, _trend(tenant=tenant, days=days, until=today, view_populated=live.view_populated)


def _disqualification(by_category: dict[str, int]) -> dict[str, int]:
    """DISQUALIFIED rows by category, every category listed (DOMAIN.md §4: only DISQUALIFIED rows; v1's
    views counted any status). An empty or unknown stored category is `OTHER`."""
    other = sum(count for category, count in by_category.items() if category not in _KNOWN_CATEGORIES)
    return {
        category: other if category == DisqualificationCategory.OTHER else by_category.get(category, 0)
        for category in _CATEGORIES
    }


def lead_stats_compute(
    *, tenant: Tenant, days: int = STATS_DAYS_DEFAULT, now: dt.datetime | None = None
) -> dict[str, Any]:
    """The stats body without `tenant_id`, `as_of` and `cached` (JSON-able, for the cache).

    `sum(stages) == total` by construction: both come from the same counters and the stage map has
    no gaps or overlaps (leads.funnel). Rows are counted by `lead_offers.tenant_id`, so unmapped
    leads (no offer) are in `received` and `total`.
    """
    if not 1 <= days <= STATS_DAYS_MAX:
        raise ValueError(f"days must be between 1 and {STATS_DAYS_MAX}, not {days}.")
    today = tenant_local_today(tenant, now=now)
    # One guard (one transaction, one SET LOCAL) for both statements: a guard each would add three
    # round trips apiece (BEGIN, SET LOCAL, COMMIT) to statements that take a millisecond.
    live, trend = guarded("portal.stats.read", atomic=False).run(
        _stats_reads, tenant=tenant, today=today, days=days
    )
    counters = live.counters
    stages = stage_counts(counters.by_status)
    return {
        "total": counters.total,
        "stages": stages,
        "statuses": {status: counters.by_status.get(status, 0) for status in _STATUSES},
        "disqualification": _disqualification(counters.disqualified_by_category),
        "conversion_rate": conversion_rate(stages["delivered"], counters.total),
        **{f"leads_{name}": live.created[name] for name in STATS_WINDOWS},
        **{f"delivered_{name}": live.delivered[name] for name in STATS_WINDOWS},
        "credit_balance": live.credit_balance,
        "active_offers": live.active_offers,
        "trend": trend,
    }


def lead_stats_get(
    *, tenant: Tenant, days: int = STATS_DAYS_DEFAULT, fresh: bool = False
) -> CachedRead[dict[str, Any]]:
    """`lead_stats_compute`, cached 60 s per tenant version, `days` and local date.

    The local date is in the key so "today" rolls over at the tenant's midnight, not up to a TTL later.
    """
    now = timezone.now()
    today = tenant_local_today(tenant, now=now)
    return cached_read(
        family="stats",
        key=tenant_stats_key(tenant.pk, days, today.isoformat()),
        ttl=TTL_STATS,
        compute=lambda: lead_stats_compute(tenant=tenant, days=days, now=now),
        fresh=fresh,
    )


# --- funnel ----------------------------------------------------------------------------------------


def _share(count: int, total: int) -> float:
    return round(count * 100 / total, 2) if total else 0.0


def _funnel_counts(
    *, tenant: Tenant, offer_id: uuid.UUID | None, created_from: dt.date | None, created_to: dt.date | None
) -> tuple[list[dict[str, Any]], dict[uuid.UUID | None, dict[str, int]]]:
    """Two statements (plus one with an offer filter, to 404 a missing or foreign offer): the offers,
    and the counts by (offer, status), folded into stages in Python through the stage map.

    The aggregate groups lead_offers by offer_id in ONE query, the NULL (unmapped) group included; the
    offers' names come from a separate lightweight query rather than a join, so the aggregate reads
    lead_offers alone, through idx_lead_offers_tenant_status_offer.
    """
    if offer_id is not None:
        offer = offer_get_for_tenant(tenant=tenant, offer_id=offer_id)
        offers = [{"id": offer.pk, "name": offer.name, "status": offer.status}]
    else:
        offers = _FUNNEL_OFFERS.rows(tenant_id=tenant.pk)
    rows = _FUNNEL_GROUPS.rows(
        tenant_id=tenant.pk,
        offer_id=offer_id,
        created_from=tenant_local_midnight(tenant, created_from) if created_from else None,
        created_before=(
            tenant_local_midnight(tenant, created_to + dt.timedelta(days=1)) if created_to else None
        ),
    )
    groups = status_counts_by_group((row["offer_id"], row["status"], row["n"]) for row in rows)
    return offers, groups


def _funnel_group_query(
    *,
    tenant_id: uuid.UUID,
    offer_id: uuid.UUID | None,
    created_from: dt.datetime | None,
    created_before: dt.datetime | None,
) -> QuerySet[Any]:
    """lead_offers counted by (offer, status); `created_before` is exclusive."""
    rows = scoped(LeadOffer, tenant_id)
    if created_from is not None:
        rows = rows.filter(created_at__gte=created_from)
    if created_before is not None:
        rows = rows.filter(created_at__lt=created_before)
    if offer_id is not None:
        rows = rows.filter(offer_id=offer_id)
    return (
        rows.order_by().values("offer_id", "status").annotate(n=Count("*")).values("offer_id", "status", "n")
    )


_FUNNEL_OFFERS = PreparedQuery(
    "portal.funnel.offers",
    lambda *, tenant_id: offer_list_for_tenant(tenant=tenant_id).order_by().values("id", "name", "status"),
)
_FUNNEL_GROUPS = PreparedQuery("portal.funnel.groups", _funnel_group_query)


def funnel_compute(
    *,
    tenant: Tenant,
    offer_id: uuid.UUID | None = None,
    created_from: dt.date | None = None,
    created_to: dt.date | None = None,
) -> dict[str, Any]:
    """The funnel body without `as_of` and `cached` (JSON-able, for the cache).

    Tenant totals are the sum over every group, the unmapped one included; `offers` lists each of the
    tenant's offers (only the named one with `offer_id`), zero-filled, most leads first. Raises
    `NotFound` for a missing or another tenant's offer.
    """
    offers, groups = guarded("portal.funnel.by_offer", atomic=False).run(
        _funnel_counts, tenant=tenant, offer_id=offer_id, created_from=created_from, created_to=created_to
    )
    by_offer = {offer_id: FunnelCounts.from_status_counts(counts) for offer_id, counts in groups.items()}
    total_by_status: Counter[str] = Counter()
    for counts in groups.values():
        total_by_status.update(counts)
    tenant_funnel = FunnelCounts.from_status_counts(total_by_status)
    totals, total = tenant_funnel.stages, tenant_funnel.total
    offer_items = []
    for offer in offers:
        funnel = by_offer.get(offer["id"]) or FunnelCounts.empty()
        offer_items.append(
            {
                "offer_id": str(offer["id"]),
                "name": offer["name"],
                "status": offer["status"],
                "total": funnel.total,
                "stages": funnel.stages,
                "conversion_rate": funnel.conversion_rate,
            }
        )
    offer_items.sort(key=lambda item: (-item["total"], item["name"], item["offer_id"]))
    return {
        "stages": [
            {
                "key": stage.key,
                "label": stage.label,
                "count": totals[stage.key],
                "share": _share(totals[stage.key], total),
            }
            for stage in FUNNEL_STAGES
        ],
        "total": total,
        "conversion_rate": tenant_funnel.conversion_rate,
        "offers": offer_items,
    }


def funnel_get(
    *,
    tenant: Tenant,
    offer_id: uuid.UUID | None = None,
    created_from: dt.date | None = None,
    created_to: dt.date | None = None,
    fresh: bool = False,
) -> CachedRead[dict[str, Any]]:
    """`funnel_compute`, cached 120 s per tenant version and parameters."""
    return cached_read(
        family="funnel",
        key=tenant_funnel_key(
            tenant.pk,
            offer_id or "all",
            created_from.isoformat() if created_from else "",
            created_to.isoformat() if created_to else "",
        ),
        ttl=TTL_FUNNEL,
        compute=lambda: funnel_compute(
            tenant=tenant, offer_id=offer_id, created_from=created_from, created_to=created_to
        ),
        fresh=fresh,
    )


def offers_with_funnels(*, tenant: Tenant, offers: Sequence[Offer]) -> list[Offer]:
    """`offers`, each with a `funnel` attribute (`FunnelCounts`) from the tenant's all-time funnel.

    These are the numbers of `GET /api/portal/funnel` itself, through its cache (invalidated by any
    lead change), so the two endpoints always agree and a listed page costs no lead_offers scan while
    the funnel is cached. An offer missing from the funnel has no leads: zero counts.
    """
    by_offer = {item["offer_id"]: item for item in funnel_get(tenant=tenant).value["offers"]}
    for offer in offers:
        item = by_offer.get(str(offer.pk))
        offer.funnel = (  # type: ignore[attr-defined]
            FunnelCounts(total=item["total"], stages=item["stages"], conversion_rate=item["conversion_rate"])
            if item
            else FunnelCounts.empty()
        )
    return list(offers)


__all__ = [
    "STATS_DAYS_DEFAULT",
    "STATS_DAYS_MAX",
    "funnel_compute",
    "funnel_get",
    "lead_stats_compute",
    "lead_stats_get",
    "offers_with_funnels",
]
