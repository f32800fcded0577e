"""The read behind `GET /api/admin/revenue` (API.md "Admin"; DOMAIN.md §3.7, §5.6, lesson 19).

What each figure counts, over the UTC dates [date_start, date_end] (both included):
- `leads_ready_*`: lead_offers that FIRST became LEAD_READY in the range, dated by
  `lead_offers.qualified_at`. The status trigger (leads migration 0002) sets it once, in the
  transaction of the STATUS_CHANGE → LEAD_READY event, and never moves it: it is that first event's
  instant stored on the row. A lead that becomes ready again (DISQUALIFIED → REACTIVATION → … →
  LEAD_READY) still counts once, on its first day; a later status change moves nothing (v1 dated
  ready leads by their *current* status change, so they wandered between days).
- `leads_delivered_*`: deliveries completed in the range, dated by `deliveries.delivered_at`,
  written once with the very same instant as the delivery's DELIVERY_COMPLETED event (one per
  delivery; a refund keeps it). Refunded deliveries still count: they were delivered.
- `*_value`: count × the tenant's `cost_per_lead` (its pricing row, else the model default). There is
  no price history: a price change revalues past leads.
- `payments_received`: `total` of completed billing orders, by `paid_at`.
- `credits_consumed` / `credits_refunded`: ledger CONSUMPTION / REFUND credits, by `created_at`.
- `attributed_spend`: ad spend (`platform_costs`), each row spread evenly over the days of its
  period; the days inside the range count. The shares are exact (spend × days in range / days in
  period, no intermediate rounding) and each line's total is rounded once, half up, to cents: a
  summary, tenant or offer over the whole range, a `by_day` row over its day (so the days may not add
  up to the summary to the cent).
- `profit` = `leads_ready_value` − `attributed_spend`; `margin_pct` = profit / leads_ready_value ×
  100, two decimals, and null when there is no ready value (a margin of nothing is undefined, not 0).
  "Revenue" is the value of the leads made ready, as in v1 (DOMAIN.md §5.6); cash is
  `payments_received`.
- `pending_credits`: credits tenants hold now (their balance rows); not bound to the range.

Reads never write (v1's read recomputed and stored cache rows). Everything is one statement (each
source read once from its index, see `_REVENUE_SQL`) plus, with `tenant_id`, the tenant lookup: the
query count does not grow with tenants, offers or days. Cached for `TTL_REVENUE` seconds under
`revenue_key`; `fresh` recomputes (and stores) it.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import ROUND_HALF_UP, Decimal
from typing import Any, TypeVar

from django.db import connection
from django.utils import timezone

from billing.models import BillingOrderStatus, CreditTransactionType, TenantPricing
from converzia.cache import TTL_REVENUE, CachedRead, cached_read, revenue_key
from converzia.db.timeouts import guarded
from converzia.errors import NotFound
from converzia.models import Tenant

REVENUE_DAYS_DEFAULT = 30
REVENUE_DAYS_MAX = 366
# The dates a request may name (the API refuses others with 400).
REVENUE_DATE_MIN = dt.date(2000, 1, 1)
REVENUE_DATE_MAX = dt.date(2999, 12, 31)
CACHE_FAMILY = "revenue"
T = TypeVar("T")

_CENT = Decimal("0.01")
_ZERO = Decimal("0")
_NO_CENTS = Decimal("0.00")
# The figures of a day without any fact (as the statement would return them).
_NO_FACTS = (0, _NO_CENTS, 0, _NO_CENTS, _NO_CENTS, 0, 0, _NO_CENTS)


@dataclass(frozen=True)
class RevenueFigures:
    leads_ready_count: int = 0
    leads_ready_value: Decimal = _ZERO
    leads_delivered_count: int = 0
    leads_delivered_value: Decimal = _ZERO
    payments_received: Decimal = _ZERO
    credits_consumed: int = 0
    credits_refunded: int = 0
    attributed_spend: Decimal = _ZERO
    profit: Decimal = _ZERO
    margin_pct: float | None = None


@dataclass(frozen=True)
class RevenueDay:
    day: dt.date
    figures: RevenueFigures


@dataclass(frozen=True)
class RevenueTenant:
    tenant_id: uuid.UUID
    name: str
    cost_per_lead: Decimal
    pending_credits: int
    cpl_attributed: Decimal | None  # attributed_spend / leads_ready_count
    figures: RevenueFigures


@dataclass(frozen=True)
class RevenueOffer:
    offer_id: uuid.UUID
    name: str
    tenant_id: uuid.UUID
    tenant_name: str
    figures: RevenueFigures


@dataclass(frozen=True)
class RevenueReport:
    date_start: dt.date
    date_end: dt.date
    tenant_id: uuid.UUID | None
    summary: RevenueFigures
    pending_credits: int
    by_day: list[RevenueDay] = field(default_factory=list)
    by_tenant: list[RevenueTenant] = field(default_factory=list)
    by_offer: list[RevenueOffer] = field(default_factory=list)


def revenue_default_range(*, today: dt.date | None = None) -> tuple[dt.date, dt.date]:
    """The last `REVENUE_DAYS_DEFAULT` UTC dates, today included."""
    end = today or timezone.now().astimezone(dt.UTC).date()
    return end - dt.timedelta(days=REVENUE_DAYS_DEFAULT - 1), end


# The kind of each row the statement returns: the bit mask GROUPING(day, tenant_id, offer_id) would
# give it (1 where the column is aggregated away).
_SUMMARY, _BY_DAY, _BY_TENANT, _BY_OFFER = 0b111, 0b011, 0b101, 0b100

# Each source is read once and aggregated straight from its index at two grains (GROUPING SETS): per
# (tenant, offer), or per tenant for payments and credits, the rows `day IS NULL`; and per (tenant, UTC
# day), or per day, the rows `day IS NOT NULL`. Days are `date_bin` buckets from the range's first
# midnight (integer arithmetic; a per-row AT TIME ZONE cost more than the scan). Lead value is count ×
# the tenant's price, taken after aggregating (no join per lead). The per-offer rows give offers and
# tenants and their sum the summary; the per-day rows give the days. Numeric sums are exact, so any
# grouping gives the same figures; v1 pushed every (tenant, offer, day) fact through four grouping
# sets with numeric sums, ~1.7× the database CPU. Spend is read once (`idx_platform_costs_date_end`:
# only the periods that end after the range starts), prorated per row for tenants and offers, and per
# day from the few distinct periods joined to an integer series the planner can count (never one row
# per period and day), both exactly, in units of 1/`spend_unit`. `{tenant_*}` is empty or
# "AND <alias>.tenant_id = %(tenant_id)s", a fixed string chosen in code; every value is bound.
_REVENUE_SQL = """
WITH costs AS MATERIALIZED (
    SELECT s.tenant_id, s.offer_id, s.date_start, s.date_end, s.spend
    FROM platform_costs s
    WHERE s.date_end >= %(start)s::date AND s.date_start <= %(end)s::date {tenant_s}
),
-- Spend is carried in units of 1/d, d a common multiple of the period lengths in play, so every share
-- (spend × days / length = spend × days × (d / length) / d) stays an exact numeric and only the final
-- rounding divides. A numeric quotient is rounded to ~20 digits, and a few such quotients can add up
-- to a hair under a half cent (issue 14: ads of 5.03, 5.09 and 5.09 over 6 days gave 2.534999… for a
-- 2.535 day, so 2.53, not 2.54). The lengths in play are few, so d stays small: periods of 1 to 31
-- days (calendar months, partial ones included) give lcm(1..31) ≈ 7.2e13.
spend_unit AS (
    WITH RECURSIVE lengths AS MATERIALIZED (  -- read once, not once per step of the fold
        SELECT n, row_number() OVER (ORDER BY n) AS i
        FROM (SELECT DISTINCT c.date_end - c.date_start + 1 AS n FROM costs c) l
    ),
    folded (i, d) AS (
        SELECT 0::bigint, 1::numeric
        UNION ALL
        SELECT l.i, lcm(f.d, l.n::numeric) FROM folded f JOIN lengths l ON l.i = f.i + 1
    )
    -- The lcm only grows along the fold: the last is the largest.
    SELECT max(d) AS d FROM folded
),
ready AS (
    SELECT lo.tenant_id, lo.offer_id, date_bin('1 day', lo.qualified_at, %(start_at)s) AS day, count(*) AS n
    FROM lead_offers lo
    WHERE lo.qualified_at >= %(start_at)s AND lo.qualified_at < %(end_at)s {tenant_lo}
    GROUP BY GROUPING SETS ((1, 2), (1, 3))
),
delivered AS (
    SELECT d.tenant_id, d.offer_id, date_bin('1 day', d.delivered_at, %(start_at)s) AS day, count(*) AS n
    FROM deliveries d
    WHERE d.delivered_at >= %(start_at)s AND d.delivered_at < %(end_at)s {tenant_d}
    GROUP BY GROUPING SETS ((1, 2), (1, 3))
),
payments AS (
    SELECT o.tenant_id, date_bin('1 day', o.paid_at, %(start_at)s) AS day, sum(o.total) AS total
    FROM billing_orders o
    WHERE o.status = %(completed)s AND o.paid_at >= %(start_at)s AND o.paid_at < %(end_at)s {tenant_o}
    GROUP BY GROUPING SETS ((1), (2))
),
credits AS (
    SELECT c.tenant_id, date_bin('1 day', c.created_at, %(start_at)s) AS day,
           coalesce(-sum(c.amount) FILTER (WHERE c.transaction_type = %(consumption)s), 0) AS consumed,
           coalesce(sum(c.amount) FILTER (WHERE c.transaction_type = %(refund)s), 0) AS refunded
    FROM credit_ledger c
    WHERE c.transaction_type IN (%(consumption)s, %(refund)s)
      AND c.created_at >= %(start_at)s AND c.created_at < %(end_at)s {tenant_c}
    GROUP BY GROUPING SETS ((1), (2))
),
offer_facts AS (
    SELECT tenant_id, offer_id, n AS ready, 0 AS delivered, 0::numeric AS payments, 0 AS consumed,
           0 AS refunded, 0::numeric AS spend
    FROM ready WHERE day IS NULL
    UNION ALL
    SELECT tenant_id, offer_id, 0, n, 0, 0, 0, 0 FROM delivered WHERE day IS NULL
    UNION ALL
    SELECT tenant_id, NULL::uuid, 0, 0, total, 0, 0, 0 FROM payments WHERE day IS NULL
    UNION ALL
    SELECT tenant_id, NULL::uuid, 0, 0, 0, consumed, refunded, 0 FROM credits WHERE day IS NULL
    UNION ALL
    SELECT s.tenant_id, s.offer_id, 0, 0, 0, 0, 0,
           sum(s.spend * (least(s.date_end, %(end)s::date) - greatest(s.date_start, %(start)s::date) + 1)
               * div((SELECT d FROM spend_unit), s.date_end - s.date_start + 1))
    FROM costs s
    GROUP BY 1, 2
),
periods AS (
    -- Spend rows share few distinct periods (mostly calendar months): sum them per period first, and
    -- take each period's daily share (in units of 1/d) once, not once per day.
    SELECT s.date_start, s.date_end,
           sum(s.spend) * div((SELECT d FROM spend_unit), s.date_end - s.date_start + 1) AS daily
    FROM costs s
    GROUP BY 1, 2
),
day_facts AS (
    SELECT (r.day AT TIME ZONE 'UTC')::date AS day, r.n AS ready,
           r.n * coalesce(p.cost_per_lead, %(default_cpl)s) AS ready_value, 0 AS delivered,
           0::numeric AS delivered_value, 0::numeric AS payments, 0 AS consumed, 0 AS refunded,
           0::numeric AS spend
    FROM ready r
    LEFT JOIN tenant_pricing p ON p.tenant_id = r.tenant_id
    WHERE r.day IS NOT NULL
    UNION ALL
    SELECT (r.day AT TIME ZONE 'UTC')::date, 0, 0, r.n, r.n * coalesce(p.cost_per_lead, %(default_cpl)s),
           0, 0, 0, 0
    FROM delivered r
    LEFT JOIN tenant_pricing p ON p.tenant_id = r.tenant_id
    WHERE r.day IS NOT NULL
    UNION ALL
    SELECT (day AT TIME ZONE 'UTC')::date, 0, 0, 0, 0, total, 0, 0, 0 FROM payments WHERE day IS NOT NULL
    UNION ALL
    SELECT (day AT TIME ZONE 'UTC')::date, 0, 0, 0, 0, 0, consumed, refunded, 0
    FROM credits WHERE day IS NOT NULL
    UNION ALL
    SELECT %(start)s::date + g.i, 0, 0, 0, 0, 0, 0, 0, sum(p.daily)
    FROM generate_series(0, %(days)s - 1) AS g(i)
    JOIN periods p ON p.date_start <= %(start)s::date + g.i AND p.date_end >= %(start)s::date + g.i
    GROUP BY g.i
),
-- Counts and money per offer and per tenant; the value of a tenant's leads is its count × its price.
valued AS (
    SELECT g.*, coalesce(p.cost_per_lead, %(default_cpl)s) AS price,
           g.ready * coalesce(p.cost_per_lead, %(default_cpl)s) AS ready_value,
           g.delivered * coalesce(p.cost_per_lead, %(default_cpl)s) AS delivered_value
    FROM (
        SELECT GROUPING(f.offer_id) AS whole_tenant, f.tenant_id, f.offer_id,
               sum(f.ready)::bigint AS ready, sum(f.delivered)::bigint AS delivered,
               sum(f.payments) AS payments, sum(f.consumed)::bigint AS consumed,
               sum(f.refunded)::bigint AS refunded, sum(f.spend) AS spend
        FROM offer_facts f
        GROUP BY GROUPING SETS ((f.tenant_id), (f.tenant_id, f.offer_id))
    ) g
    LEFT JOIN tenant_pricing p ON p.tenant_id = g.tenant_id
)
-- Money leaves rounded to cents (round() ties away from zero, as ROUND_HALF_UP): Python does no
-- per-figure arithmetic but profit and margin. Spend x, in units of 1/d, rounds the same way in exact
-- integer arithmetic: floor(100 x / d + 1/2) cents = div(200 x + d, 2 d) (spend is never negative;
-- `(SELECT d FROM spend_unit)` is computed once per statement).
SELECT CASE WHEN v.whole_tenant = 1 THEN %(by_tenant)s ELSE %(by_offer)s END, NULL::date,
       v.tenant_id, v.offer_id, v.ready, round(v.ready_value, 2), v.delivered, round(v.delivered_value, 2),
       round(v.payments, 2), v.consumed, v.refunded,
       div(200 * v.spend + (SELECT d FROM spend_unit), 2 * (SELECT d FROM spend_unit)) * 0.01,
       t.name, o.name, round(v.price, 2), coalesce(b.balance, 0), NULL::bigint
FROM valued v
LEFT JOIN tenants t ON t.id = v.tenant_id
LEFT JOIN offers o ON o.id = v.offer_id
LEFT JOIN tenant_credit_balances b ON b.tenant_id = v.tenant_id
-- Payments and credits have no offer.
WHERE v.whole_tenant = 1 OR v.offer_id IS NOT NULL
UNION ALL
SELECT %(summary)s, NULL, NULL, NULL,
       coalesce(sum(v.ready), 0)::bigint, round(coalesce(sum(v.ready_value), 0), 2),
       coalesce(sum(v.delivered), 0)::bigint, round(coalesce(sum(v.delivered_value), 0), 2),
       round(coalesce(sum(v.payments), 0), 2), coalesce(sum(v.consumed), 0)::bigint,
       coalesce(sum(v.refunded), 0)::bigint,
       div(200 * coalesce(sum(v.spend), 0) + (SELECT d FROM spend_unit),
           2 * (SELECT d FROM spend_unit)) * 0.01,
       NULL, NULL, NULL, NULL,
       (SELECT coalesce(sum(b2.balance), 0) FROM tenant_credit_balances b2 WHERE TRUE {tenant_b2})
FROM valued v
WHERE v.whole_tenant = 1
UNION ALL
SELECT %(by_day)s, f.day, NULL, NULL,
       sum(f.ready)::bigint, round(sum(f.ready_value), 2), sum(f.delivered)::bigint,
       round(sum(f.delivered_value), 2), round(sum(f.payments), 2), sum(f.consumed)::bigint,
       sum(f.refunded)::bigint,
       div(200 * sum(f.spend) + (SELECT d FROM spend_unit), 2 * (SELECT d FROM spend_unit)) * 0.01,
       NULL, NULL, NULL, NULL, NULL
FROM day_facts f
GROUP BY f.day
"""

_TENANT_COLUMNS = {
    "lo": "lo.tenant_id",
    "d": "d.tenant_id",
    "o": "o.tenant_id",
    "c": "c.tenant_id",
    "s": "s.tenant_id",
    "b2": "b2.tenant_id",
}


def _sql(*, filtered: bool) -> str:
    return _REVENUE_SQL.format(
        **{
            f"tenant_{alias}": f"AND {column} = %(tenant_id)s" if filtered else ""
            for alias, column in _TENANT_COLUMNS.items()
        }
    )


def _money(value: Decimal | None) -> Decimal:
    return (value or _ZERO).quantize(_CENT, rounding=ROUND_HALF_UP)


def _figures(row: tuple[Any, ...]) -> RevenueFigures:
    """Figures from the eight columns the statement returns, money already rounded to cents."""
    ready_value, spend = row[1], row[7]
    profit = ready_value - spend
    margin = None if ready_value == 0 else round(float(profit / ready_value * 100), 2)
    return RevenueFigures(*row, profit=profit, margin_pct=margin)


def _default_cost_per_lead() -> Decimal:
    return TenantPricing._meta.get_field("cost_per_lead").get_default()


def _revenue_rows(
    *, date_start: dt.date, date_end: dt.date, tenant_id: uuid.UUID | None
) -> list[tuple[Any, ...]]:
    params = {
        "start": date_start,
        "end": date_end,
        "start_at": dt.datetime.combine(date_start, dt.time.min, tzinfo=dt.UTC),
        "end_at": dt.datetime.combine(date_end + dt.timedelta(days=1), dt.time.min, tzinfo=dt.UTC),
        "tenant_id": tenant_id,
        "completed": BillingOrderStatus.COMPLETED,
        "consumption": CreditTransactionType.CREDIT_CONSUMPTION,
        "refund": CreditTransactionType.CREDIT_REFUND,
        "default_cpl": _default_cost_per_lead(),
        "days": (date_end - date_start).days + 1,
        "summary": _SUMMARY,
        "by_day": _BY_DAY,
        "by_tenant": _BY_TENANT,
        "by_offer": _BY_OFFER,
    }
    with connection.cursor() as cursor:
        cursor.execute(_sql(filtered=tenant_id is not None), params)
        return cursor.fetchall()


def _revenue_read(*, date_start: dt.date, date_end: dt.date, tenant_id: uuid.UUID | None) -> RevenueReport:
    if tenant_id is not None and not Tenant.objects.filter(pk=tenant_id).exists():
        raise NotFound("No such tenant.", details={"tenant_id": [str(tenant_id)]})
    rows = _revenue_rows(date_start=date_start, date_end=date_end, tenant_id=tenant_id)
    summary = RevenueFigures()
    pending_total = 0
    day_values: dict[dt.date, tuple[Any, ...]] = {}
    tenants: list[RevenueTenant] = []
    offers: list[RevenueOffer] = []
    for row in rows:
        grp, day, row_tenant, offer_id = row[:4]
        values = row[4:12]
        tenant_name, offer_name, cost_per_lead, balance, pending = row[12:17]
        if grp == _BY_DAY:
            day_values[day] = values
        elif grp == _SUMMARY:
            summary, pending_total = _figures(values), pending
        elif grp == _BY_TENANT:
            figures = _figures(values)
            cpl_attributed = (
                _money(figures.attributed_spend / figures.leads_ready_count)
                if figures.leads_ready_count
                else None
            )
            tenants.append(
                RevenueTenant(row_tenant, tenant_name, cost_per_lead, balance, cpl_attributed, figures)
            )
        elif grp == _BY_OFFER:
            offers.append(RevenueOffer(offer_id, offer_name, row_tenant, tenant_name, _figures(values)))
    by_day = []
    for offset in range((date_end - date_start).days + 1):
        day = date_start + dt.timedelta(days=offset)
        by_day.append(RevenueDay(day, _figures(day_values.get(day, _NO_FACTS))))
    # Largest value first, as v1 sorted; the id breaks ties so the order is stable (a UUID's integer
    # orders as its fixed-width hex text does, and compares in C).
    tenants.sort(
        key=lambda t: (-t.figures.leads_ready_value, -t.figures.leads_delivered_value, t.tenant_id.int)
    )
    offers.sort(
        key=lambda o: (-o.figures.leads_ready_value, -o.figures.leads_delivered_value, o.offer_id.int)
    )
    return RevenueReport(
        date_start=date_start,
        date_end=date_end,
        tenant_id=tenant_id,
        summary=summary,
        pending_credits=int(pending_total or 0),
        by_day=by_day,
        by_tenant=tenants,
        by_offer=offers,
    )


def revenue_compute(
    *, date_start: dt.date, date_end: dt.date, tenant_id: uuid.UUID | None = None
) -> RevenueReport:
    """The report, from the database (one guarded transaction; raises NotFound for an unknown tenant)."""
    if date_end < date_start:
        raise ValueError("date_end must not be before date_start.")
    if (date_end - date_start).days + 1 > REVENUE_DAYS_MAX:
        raise ValueError(f"The range may span at most {REVENUE_DAYS_MAX} days.")
    return guarded("admin.revenue").run(
        _revenue_read, date_start=date_start, date_end=date_end, tenant_id=tenant_id
    )


def revenue_get(
    *,
    date_start: dt.date,
    date_end: dt.date,
    render: Callable[[RevenueReport], T],
    tenant_id: uuid.UUID | None = None,
    fresh: bool = False,
) -> CachedRead[T]:
    """The report as `render` shapes it, from the cache when it has it (TTL_REVENUE); `fresh`
    recomputes and stores it.

    What is cached is the rendered form (the API's JSON body): with every offer of the platform in it,
    re-serializing the report on each hit cost ~60 ms, the cache lookup itself ~1 ms.
    """
    return cached_read(
        family=CACHE_FAMILY,
        key=revenue_key(date_start.isoformat(), date_end.isoformat(), tenant_id or "all"),
        ttl=TTL_REVENUE,
        compute=lambda: render(
            revenue_compute(date_start=date_start, date_end=date_end, tenant_id=tenant_id)
        ),
        fresh=fresh,
    )
