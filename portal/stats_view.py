"""The `tenant_stats_materialized` view: its refresh and the reads over it (decision D8b).

The view holds one row per tenant and local day (see `portal.models.TenantDailyStats` and
`docs/database.md`). Windows ("last 30 days") are summed here at read time, in the tenant's zone.
Every read reports `as_of`: when the data of the last refresh was taken.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
import zoneinfo
from dataclasses import dataclass

from django.db import connection, transaction
from django.db.backends.utils import CursorWrapper
from django.db.models import Sum
from django.utils import timezone

from converzia.db.locks import AdvisoryLock, advisory_xact_lock_try
from converzia.errors import Conflict
from converzia.models import Tenant
from portal.models import StatsViewRefresh, TenantDailyStats

logger = logging.getLogger(__name__)

VIEW_NAME = "tenant_stats_materialized"
# At 2M lead_offers a refresh takes seconds (docs/database.md); this only stops a runaway.
REFRESH_STATEMENT_TIMEOUT_MS = 120_000
# A plain refresh needs an ACCESS EXCLUSIVE lock. Queued behind a long read it would block every
# new reader, so it gives up instead. (The concurrent form does not conflict with readers.)
REFRESH_LOCK_TIMEOUT_MS = 5_000
# The refresh's hash aggregates (one entry per tenant and day: ~25k rows at 2M lead_offers and 200
# tenants) stay in memory with this instead of spilling to disk.
REFRESH_WORK_MEM = "64MB"
# The view keeps the local days from (today's UTC date - 120) on: the literal in
# portal/migrations/0002_tenant_stats_bounded_history.py. Older days read as 0.
VIEW_HISTORY_DAYS = 120


class StatsRefreshInProgress(Conflict):
    message = "Another refresh of tenant_stats_materialized is running; try again later."


@dataclass(frozen=True)
class RefreshResult:
    concurrently: bool
    duration_ms: int
    row_count: int
    refreshed_at: dt.datetime


@dataclass(frozen=True)
class StatsViewState:
    """Whether the view can be read, and its last recorded refresh (None before the first one)."""

    populated: bool
    refreshed_at: dt.datetime | None
    duration_ms: int | None
    row_count: int | None
    concurrently: bool | None

    def age_seconds(self, now: dt.datetime | None = None) -> float | None:
        if self.refreshed_at is None:
            return None
        return ((now or timezone.now()) - self.refreshed_at).total_seconds()


@dataclass(frozen=True)
class TrendPoint:
    day: dt.date
    received: int  # lead_offers created that local day
    delivered: int  # deliveries completed that local day


@dataclass(frozen=True)
class DailyTrend:
    as_of: dt.datetime | None  # None: the view has never been refreshed (all points are 0)
    points: list[TrendPoint]


def tenant_stats_refresh(*, concurrently: bool | None = None) -> RefreshResult:
    """Refresh the view and record when. Raises `StatsRefreshInProgress` if a refresh is running.

    `concurrently=None` (the default) refreshes CONCURRENTLY, so readers are never blocked, except
    the first time: an unpopulated view can only be filled by a plain refresh, which is then used
    whatever was asked (nobody can read an unpopulated view, so nobody is blocked).
    `concurrently=False` forces a plain refresh: faster, but it blocks readers meanwhile.
    """
    with transaction.atomic():
        # One refresh at a time, across every process; the lock is released when this block ends.
        if not advisory_xact_lock_try(AdvisoryLock.TENANT_STATS_REFRESH):
            raise StatsRefreshInProgress()
        with connection.cursor() as cursor:
            previous = _settings_set_local(
                cursor,
                {
                    "statement_timeout": str(REFRESH_STATEMENT_TIMEOUT_MS),
                    "lock_timeout": str(REFRESH_LOCK_TIMEOUT_MS),
                    "work_mem": REFRESH_WORK_MEM,
                    # The planner overestimates the groups (one per lead_offer instead of per tenant
                    # and day), and JIT then spends seconds compiling a query that runs once a minute.
                    "jit": "off",
                },
            )
            cursor.execute(
                "SELECT relispopulated, clock_timestamp() FROM pg_class WHERE oid = %s::regclass", [VIEW_NAME]
            )
            populated, snapshot_at = cursor.fetchone()
            use_concurrently = populated and concurrently is not False
            started = time.monotonic()
            # The statement takes its snapshot when it starts, right after `snapshot_at`.
            cursor.execute(
                f"REFRESH MATERIALIZED VIEW {'CONCURRENTLY ' if use_concurrently else ''}{VIEW_NAME}"
            )
            duration_ms = round((time.monotonic() - started) * 1000)
            cursor.execute(f"SELECT count(*) FROM {VIEW_NAME}")
            (row_count,) = cursor.fetchone()
            # SET LOCAL outlives a released savepoint: when called inside a caller's transaction,
            # hand it back its own settings.
            _settings_set_local(cursor, previous)
        StatsViewRefresh.objects.bulk_create(
            [
                StatsViewRefresh(
                    view_name=VIEW_NAME,
                    refreshed_at=snapshot_at,
                    duration_ms=duration_ms,
                    row_count=row_count,
                    concurrently=use_concurrently,
                )
            ],
            update_conflicts=True,
            unique_fields=["view_name"],
            update_fields=["refreshed_at", "duration_ms", "row_count", "concurrently"],
        )
    logger.info(
        "stats view refreshed",
        extra={
            "view": VIEW_NAME,
            "concurrently": use_concurrently,
            "duration_ms": duration_ms,
            "row_count": row_count,
        },
    )
    return RefreshResult(
        concurrently=use_concurrently, duration_ms=duration_ms, row_count=row_count, refreshed_at=snapshot_at
    )


def _settings_set_local(cursor: CursorWrapper, settings: dict[str, str]) -> dict[str, str]:
    """`SET LOCAL` each setting with bound parameters; returns the values they had before."""
    names = list(settings)
    cursor.execute("SELECT " + ", ".join(["current_setting(%s)"] * len(names)), names)
    previous = dict(zip(names, cursor.fetchone(), strict=True))
    cursor.execute(
        "SELECT " + ", ".join(["set_config(%s, %s, true)"] * len(names)),
        [part for name in names for part in (name, settings[name])],
    )
    return previous


def stats_view_state() -> StatsViewState:
    """One query: is the view populated, and when was it last refreshed (for `as_of` and health)."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT c.relispopulated, r.refreshed_at, r.duration_ms, r.row_count, r.concurrently"
            " FROM pg_class c LEFT JOIN stats_view_refreshes r ON r.view_name = %s"
            " WHERE c.oid = %s::regclass",
            [VIEW_NAME, VIEW_NAME],
        )
        populated, refreshed_at, duration_ms, row_count, concurrently = cursor.fetchone()
    return StatsViewState(
        populated=populated,
        refreshed_at=refreshed_at,
        duration_ms=duration_ms,
        row_count=row_count,
        concurrently=concurrently,
    )


def tenant_zone(tenant: Tenant) -> zoneinfo.ZoneInfo:
    """The tenant's zone; an unknown name falls back to UTC, as the view's SQL does (its function
    `tenant_stats_zone`), so the days readers compute match the view's days."""
    try:
        return zoneinfo.ZoneInfo(tenant.timezone)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        return zoneinfo.ZoneInfo("UTC")


def tenant_local_midnight(tenant: Tenant, day: dt.date) -> dt.datetime:
    """The instant the tenant's local `day` starts: every daily bound ("today", date filters) uses it."""
    return dt.datetime.combine(day, dt.time.min, tzinfo=tenant_zone(tenant))


def tenant_local_today(tenant: Tenant, *, now: dt.datetime | None = None) -> dt.date:
    return (now or timezone.now()).astimezone(tenant_zone(tenant)).date()


def _window(days: int, until: dt.date) -> list[dt.date]:
    if not 1 <= days <= VIEW_HISTORY_DAYS:
        raise ValueError(f"days must be between 1 and {VIEW_HISTORY_DAYS}, not {days}.")
    return [until - dt.timedelta(days=offset) for offset in range(days - 1, -1, -1)]


def _zero_filled(
    window: list[dt.date], rows: dict[dt.date, tuple[int, int]], as_of: dt.datetime | None
) -> DailyTrend:
    points = [TrendPoint(day, *rows.get(day, (0, 0))) for day in window]
    return DailyTrend(as_of=as_of, points=points)


def tenant_daily_trend(*, tenant: Tenant, days: int = 30, until: dt.date | None = None) -> DailyTrend:
    """The tenant's last `days` local days up to `until` (default: its local today), oldest first,
    zero-filled: leads received (created) and deliveries completed each day. Two queries (one
    while the view has never been refreshed: then every point is 0 and `as_of` is None)."""
    window = _window(days, until or tenant_local_today(tenant))
    state = stats_view_state()
    if not state.populated:
        return _zero_filled(window, {}, None)
    rows = (
        TenantDailyStats.objects.for_tenant(tenant)
        .filter(day__range=(window[0], window[-1]))
        .values_list("day", "leads_total", "deliveries_delivered")
    )
    return _zero_filled(
        window, {day: (received, delivered) for day, received, delivered in rows}, state.refreshed_at
    )


def all_tenants_daily_trend(*, days: int = 30, until: dt.date | None = None) -> DailyTrend:
    """Platform-wide totals for the last `days` days up to `until` (default: today in UTC), oldest
    first, zero-filled. Each tenant contributes its own local days, so right after midnight a tenant
    east of UTC has a row dated after `until`; it shows once the UTC date catches up. Two queries."""
    window = _window(days, until or timezone.now().astimezone(dt.UTC).date())
    state = stats_view_state()
    if not state.populated:
        return _zero_filled(window, {}, None)
    rows = (
        TenantDailyStats.objects.filter(day__range=(window[0], window[-1]))
        .values("day")
        .annotate(received=Sum("leads_total"), delivered=Sum("deliveries_delivered"))
        .order_by()
        .values_list("day", "received", "delivered")
    )
    return _zero_filled(
        window, {day: (received, delivered) for day, received, delivered in rows}, state.refreshed_at
    )
