"""The tenant_stats_materialized view: its migration, refresh, numbers, read helpers and command."""

from __future__ import annotations

import datetime as dt
import zoneinfo
from collections import defaultdict
from io import StringIO

import psycopg
import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connection

from billing.models import CreditLedger, CreditTransactionType
from converzia.db.locks import AdvisoryLock
from converzia.tests.factories import TenantFactory
from deliveries.models import DeliveryStatus
from deliveries.tests.factories import DeliveryFactory
from leads.funnel import FUNNEL_STAGES, STAGE_BY_STATUS, STAGE_KEYS
from leads.models import LeadOfferStatus
from leads.tests.factories import LeadOfferFactory, OfferFactory
from portal.models import StatsViewRefresh, TenantDailyStats
from portal.stats_view import (
    VIEW_HISTORY_DAYS,
    VIEW_NAME,
    StatsRefreshInProgress,
    TrendPoint,
    all_tenants_daily_trend,
    stats_view_state,
    tenant_daily_trend,
    tenant_local_today,
    tenant_stats_refresh,
)

UTC = dt.UTC
BUENOS_AIRES = "America/Argentina/Buenos_Aires"  # UTC-3, no DST
TOKYO = "Asia/Tokyo"  # UTC+9, no DST

STATUS_COLUMNS = [f"status_{status.lower()}" for status in LeadOfferStatus.values]
STAGE_COLUMNS = [f"stage_{key}" for key in STAGE_KEYS]
DELIVERY_COLUMNS = ["deliveries_delivered", "deliveries_partial", "deliveries_refunded"]
CREDIT_COLUMNS = [
    "credits_purchased",
    "credits_consumed",
    "credits_refunded",
    "credits_bonus",
    "credits_adjusted",
]
VIEW_COLUMNS = [
    "tenant_id",
    "day",
    "leads_total",
    *STAGE_COLUMNS,
    *STATUS_COLUMNS,
    *DELIVERY_COLUMNS,
    *CREDIT_COLUMNS,
]
COUNT_COLUMNS = VIEW_COLUMNS[2:]


def utc(*args: int) -> dt.datetime:
    return dt.datetime(*args, tzinfo=UTC)


# The view keeps the last 120 days, so test data lives in the last weeks: "day n" is n - 1 days
# after BASE_DATE (day 0 is the day before it).
BASE_DATE = dt.datetime.now(UTC).date() - dt.timedelta(days=21)


def at(day_number: int, hour: int = 0, minute: int = 0) -> dt.datetime:
    """An instant in UTC on day `day_number` of the test calendar."""
    return dt.datetime.combine(BASE_DATE, dt.time(hour, minute), UTC) + dt.timedelta(days=day_number - 1)


def day(day_number: int) -> dt.date:
    return BASE_DATE + dt.timedelta(days=day_number - 1)


def make_view_unpopulated() -> None:
    """Back to the state the migration leaves (WITH NO DATA); undone by the test's rollback."""
    with connection.cursor() as cursor:
        cursor.execute(f"REFRESH MATERIALIZED VIEW {VIEW_NAME} WITH NO DATA")


def view_rows() -> dict[tuple, dict[str, int]]:
    return {
        (row.pop("tenant_id"), row.pop("day")): row
        for row in TenantDailyStats.objects.values("tenant_id", "day", *COUNT_COLUMNS)
    }


def ledger_row(tenant, transaction_type: str, amount: int, at: dt.datetime, delivery=None) -> CreditLedger:
    # Ledger rows are immutable once written (a trigger rejects UPDATE), so a row dated in the past
    # cannot come from the services, which stamp "now"; the view only reads type, amount and time.
    return CreditLedger.objects.create(
        tenant=tenant,
        transaction_type=transaction_type,
        amount=amount,
        balance_after=100,
        delivery=delivery,
        lead_offer=delivery.lead_offer if delivery else None,
        created_at=at,
    )


def delivered(offer, status: str, delivered_at: dt.datetime | None, created_at: dt.datetime):
    lead_offer = LeadOfferFactory(
        offer=offer, status=LeadOfferStatus.SENT_TO_DEVELOPER, created_at=created_at
    )
    return DeliveryFactory(lead_offer=lead_offer, status=status, delivered_at=delivered_at)


@pytest.fixture
def two_zones_dataset():
    """Two tenants twelve hours apart, activity over several days, several rows near midnight."""
    ba = TenantFactory(timezone=BUENOS_AIRES)
    tokyo = TenantFactory(timezone=TOKYO)
    ba_offer = OfferFactory(tenant=ba)
    tokyo_offer = OfferFactory(tenant=tokyo)
    statuses = LeadOfferStatus.values
    for index in range(40):
        # Every 7 hours from day 1 00:00 UTC: covers all hours of the day, in both zones, 12 days.
        created_at = at(1) + dt.timedelta(hours=7 * index)
        LeadOfferFactory(offer=ba_offer, status=statuses[index % 13], created_at=created_at)
        LeadOfferFactory(offer=tokyo_offer, status=statuses[(index * 5) % 13], created_at=created_at)
    # Unmapped leads (no offer) count for their tenant too.
    LeadOfferFactory(offer=None, tenant=ba, status=LeadOfferStatus.PENDING_MAPPING, created_at=at(4, 2, 59))

    ba_delivered = delivered(ba_offer, DeliveryStatus.DELIVERED, at(5, 2, 59), at(4))
    ba_partial = delivered(ba_offer, DeliveryStatus.PARTIAL, at(5, 3, 0), at(4))
    ba_refunded = delivered(ba_offer, DeliveryStatus.REFUNDED, at(5, 12), at(4))
    delivered(ba_offer, DeliveryStatus.FAILED, None, at(4))
    delivered(ba_offer, DeliveryStatus.REFUNDED, None, at(4))  # refunded dead letter
    delivered(ba_offer, DeliveryStatus.PENDING, None, at(4))
    tokyo_delivered = delivered(tokyo_offer, DeliveryStatus.DELIVERED, at(6, 14, 59), at(5))
    delivered(tokyo_offer, DeliveryStatus.DELIVERED, at(6, 15, 0), at(5))

    ledger_row(ba, CreditTransactionType.CREDIT_PURCHASE, 50, at(2, 2, 0))
    ledger_row(ba, CreditTransactionType.CREDIT_BONUS, 5, at(2, 4, 0))
    ledger_row(ba, CreditTransactionType.CREDIT_CONSUMPTION, -1, at(5, 2, 59), ba_delivered)
    ledger_row(ba, CreditTransactionType.CREDIT_CONSUMPTION, -1, at(5, 3, 0), ba_partial)
    ledger_row(ba, CreditTransactionType.CREDIT_CONSUMPTION, -1, at(5, 12), ba_refunded)
    ledger_row(ba, CreditTransactionType.CREDIT_REFUND, 1, at(7), ba_refunded)
    ledger_row(ba, CreditTransactionType.CREDIT_ADJUSTMENT, -3, at(7, 1))
    ledger_row(ba, CreditTransactionType.CREDIT_ADJUSTMENT, 2, at(7, 5))
    ledger_row(tokyo, CreditTransactionType.CREDIT_PURCHASE, 100, at(1, 16))
    ledger_row(tokyo, CreditTransactionType.CREDIT_CONSUMPTION, -1, at(6, 14, 59), tokyo_delivered)
    # A day with credits only (no leads, no deliveries) still gets a row.
    ledger_row(tokyo, CreditTransactionType.CREDIT_BONUS, 7, at(20, 15, 0))
    return ba, tokyo


def direct_sql_counts() -> dict[tuple, dict[str, int]]:
    """The view's numbers computed the obvious way: GROUP BY over each table in the tenant's zone,
    stages from the Python funnel definition."""
    expected: dict[tuple, dict[str, int]] = defaultdict(lambda: dict.fromkeys(COUNT_COLUMNS, 0))
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT lo.tenant_id, timezone(t.timezone, lo.created_at)::date, lo.status, count(*)"
            " FROM lead_offers lo JOIN tenants t ON t.id = lo.tenant_id GROUP BY 1, 2, 3"
        )
        for tenant_id, day, status, count in cursor.fetchall():
            row = expected[tenant_id, day]
            row["leads_total"] += count
            row[f"status_{status.lower()}"] += count
            row[f"stage_{STAGE_BY_STATUS[status]}"] += count
        cursor.execute(
            "SELECT d.tenant_id, timezone(t.timezone, d.delivered_at)::date, d.status, count(*)"
            " FROM deliveries d JOIN tenants t ON t.id = d.tenant_id"
            " WHERE d.delivered_at IS NOT NULL GROUP BY 1, 2, 3"
        )
        for tenant_id, day, status, count in cursor.fetchall():
            row = expected[tenant_id, day]
            row["deliveries_delivered"] += count
            row["deliveries_partial"] += count if status == DeliveryStatus.PARTIAL else 0
            row["deliveries_refunded"] += count if status == DeliveryStatus.REFUNDED else 0
        cursor.execute(
            "SELECT c.tenant_id, timezone(t.timezone, c.created_at)::date, c.transaction_type, sum(c.amount)"
            " FROM credit_ledger c JOIN tenants t ON t.id = c.tenant_id GROUP BY 1, 2, 3"
        )
        column = {
            "CREDIT_PURCHASE": ("credits_purchased", 1),
            "CREDIT_CONSUMPTION": ("credits_consumed", -1),
            "CREDIT_REFUND": ("credits_refunded", 1),
            "CREDIT_BONUS": ("credits_bonus", 1),
            "CREDIT_ADJUSTMENT": ("credits_adjusted", 1),
        }
        for tenant_id, day, transaction_type, amount in cursor.fetchall():
            name, sign = column[transaction_type]
            expected[tenant_id, day][name] += sign * amount
    return dict(expected)


# --- the migration ---------------------------------------------------------------------------------


@pytest.mark.django_db
def test_migration_creates_the_view_with_its_columns_and_indexes():
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM pg_matviews WHERE matviewname = %s", [VIEW_NAME])
        assert cursor.fetchone() == (1,)
        cursor.execute(
            "SELECT attname FROM pg_attribute WHERE attrelid = %s::regclass AND attnum > 0 ORDER BY attnum",
            [VIEW_NAME],
        )
        assert [name for (name,) in cursor.fetchall()] == VIEW_COLUMNS
        cursor.execute(
            "SELECT i.relname, x.indisunique, pg_get_indexdef(x.indexrelid)"
            " FROM pg_index x JOIN pg_class i ON i.oid = x.indexrelid"
            " WHERE x.indrelid = %s::regclass ORDER BY i.relname",
            [VIEW_NAME],
        )
        assert cursor.fetchall() == [
            (
                "idx_tenant_stats_materialized_day",
                False,
                "CREATE INDEX idx_tenant_stats_materialized_day ON public.tenant_stats_materialized"
                " USING btree (day)",
            ),
            (
                "idx_tenant_stats_materialized_tenant_day",
                True,
                "CREATE UNIQUE INDEX idx_tenant_stats_materialized_tenant_day"
                " ON public.tenant_stats_materialized USING btree (tenant_id, day)",
            ),
        ]


def test_read_model_matches_the_view_columns():
    assert [field.column for field in TenantDailyStats._meta.concrete_fields] == VIEW_COLUMNS
    assert TenantDailyStats._meta.managed is False
    assert TenantDailyStats._meta.db_table == VIEW_NAME


# --- refresh -----------------------------------------------------------------------------------------


@pytest.mark.django_db
def test_refresh_is_plain_the_first_time_then_concurrent():
    make_view_unpopulated()
    assert stats_view_state().populated is False

    first = tenant_stats_refresh()
    assert first.concurrently is False
    assert stats_view_state().populated is True

    second = tenant_stats_refresh()
    assert second.concurrently is True

    forced = tenant_stats_refresh(concurrently=False)
    assert forced.concurrently is False
    record = StatsViewRefresh.objects.get(view_name=VIEW_NAME)
    assert (record.refreshed_at, record.concurrently, record.row_count) == (forced.refreshed_at, False, 0)


@pytest.mark.django_db
def test_refresh_asked_concurrently_on_an_unpopulated_view_fills_it_plainly():
    make_view_unpopulated()
    assert tenant_stats_refresh(concurrently=True).concurrently is False
    assert stats_view_state().populated is True


@pytest.mark.django_db
def test_refresh_records_as_of_rows_and_duration(two_zones_dataset):
    result = tenant_stats_refresh()

    state = stats_view_state()
    assert state.populated is True
    assert state.refreshed_at == result.refreshed_at
    assert state.row_count == result.row_count == TenantDailyStats.objects.count() == len(direct_sql_counts())
    assert state.duration_ms == result.duration_ms
    assert result.duration_ms >= 0


@pytest.mark.django_db
def test_refresh_inside_a_transaction_gives_back_the_callers_settings():
    query = (
        "SELECT current_setting('statement_timeout'), current_setting('lock_timeout'),"
        " current_setting('work_mem')"
    )
    with connection.cursor() as cursor:
        cursor.execute("SET LOCAL statement_timeout = '7s'")
        cursor.execute(query)
        before = cursor.fetchone()
        tenant_stats_refresh()
        cursor.execute(query)
        assert cursor.fetchone() == before
    assert before[0] == "7s"


@pytest.mark.django_db(transaction=True)
def test_concurrent_refresh_outside_any_transaction_is_visible_to_other_sessions():
    # The command and the periodic task run in autocommit mode; nothing here wraps them.
    tenant = TenantFactory(timezone=TOKYO)
    LeadOfferFactory(offer=OfferFactory(tenant=tenant), created_at=at(1, 15))
    tenant_stats_refresh(concurrently=False)
    LeadOfferFactory(offer=OfferFactory(tenant=tenant), created_at=at(1, 16))

    result = tenant_stats_refresh()

    assert result.concurrently is True
    with psycopg.connect(**other_session_params(), autocommit=True) as other:
        rows = other.execute(
            f"SELECT day, leads_total FROM {VIEW_NAME} WHERE tenant_id = %s", [tenant.pk]
        ).fetchall()
        recorded = other.execute(
            "SELECT refreshed_at FROM stats_view_refreshes WHERE view_name = %s", [VIEW_NAME]
        ).fetchall()
    assert rows == [(day(2), 2)]
    assert recorded == [(result.refreshed_at,)]


def other_session_params() -> dict[str, object]:
    settings = connection.settings_dict
    return {
        "host": settings["HOST"] or None,
        "port": settings["PORT"] or None,
        "user": settings["USER"],
        "password": settings["PASSWORD"] or None,
        "dbname": settings["NAME"],
    }


def lock_from_another_session(other: psycopg.Connection) -> None:
    """Hold the refresh lock the way a running refresh in another process would."""
    acquired = other.execute(
        "SELECT pg_try_advisory_lock(%s)", [int(AdvisoryLock.TENANT_STATS_REFRESH)]
    ).fetchone()
    assert acquired == (True,)


# Transactional: a refresh inside the test's own transaction would keep its (transaction-scoped)
# lock until the end of the test, and the other session could never take it.
@pytest.mark.django_db(transaction=True)
def test_refresh_is_refused_while_another_session_holds_the_lock(tenant):
    first = tenant_stats_refresh()
    LeadOfferFactory(offer=OfferFactory(tenant=tenant))

    with psycopg.connect(**other_session_params(), autocommit=True) as other:
        lock_from_another_session(other)
        with pytest.raises(StatsRefreshInProgress):
            tenant_stats_refresh()
        # Nothing changed: neither the view nor its refresh record.
        assert TenantDailyStats.objects.count() == 0
        record = StatsViewRefresh.objects.get(view_name=VIEW_NAME)
        assert (record.refreshed_at, record.row_count) == (first.refreshed_at, 0)
        other.execute("SELECT pg_advisory_unlock(%s)", [int(AdvisoryLock.TENANT_STATS_REFRESH)])

    assert tenant_stats_refresh().row_count == 1


# --- the numbers ---------------------------------------------------------------------------------


@pytest.mark.django_db
def test_view_equals_direct_group_by_counts_in_each_tenants_zone(two_zones_dataset):
    tenant_stats_refresh()

    expected = direct_sql_counts()
    # Buenos Aires: Feb 28 - Mar 12 (13 local days); Tokyo: Mar 1 - Mar 12 plus a credit-only Mar 21.
    assert len(expected) == 26
    assert view_rows() == expected


@pytest.mark.django_db
def test_days_are_the_tenants_local_days_near_midnight(two_zones_dataset):
    ba, tokyo = two_zones_dataset
    tenant_stats_refresh()
    rows = view_rows()

    # Day 5 02:59 UTC is 23:59 of day 4 in Buenos Aires; 03:00 UTC is midnight of day 5.
    assert rows[ba.pk, day(4)]["deliveries_delivered"] == 1
    assert rows[ba.pk, day(4)]["credits_consumed"] == 1
    assert rows[ba.pk, day(5)]["deliveries_delivered"] == 2  # the PARTIAL and the REFUNDED
    assert rows[ba.pk, day(5)]["deliveries_partial"] == 1
    assert rows[ba.pk, day(5)]["deliveries_refunded"] == 1
    assert rows[ba.pk, day(5)]["credits_consumed"] == 2
    # The unmapped lead at day 4 02:59 UTC belongs to day 3 in Buenos Aires.
    assert rows[ba.pk, day(3)]["status_pending_mapping"] == 1
    # 14:59 UTC is 23:59 in Tokyo; 15:00 UTC is midnight of the next day.
    assert rows[tokyo.pk, day(6)]["deliveries_delivered"] == 1
    assert rows[tokyo.pk, day(7)]["deliveries_delivered"] == 1
    assert rows[tokyo.pk, day(21)] == dict.fromkeys(COUNT_COLUMNS, 0) | {"credits_bonus": 7}
    # The first leads, at day 1 00:00 UTC: still day 0 in Buenos Aires.
    assert (ba.pk, day(0)) in rows
    assert (tokyo.pk, day(0)) not in rows


@pytest.mark.django_db
def test_stages_sum_to_total_on_every_row(two_zones_dataset):
    tenant_stats_refresh()

    rows = view_rows()
    assert sum(row["leads_total"] for row in rows.values()) == 89
    for row in rows.values():
        assert sum(row[column] for column in STAGE_COLUMNS) == row["leads_total"]
        assert sum(row[column] for column in STATUS_COLUMNS) == row["leads_total"]


@pytest.mark.django_db
def test_view_stage_mapping_equals_leads_funnel(tenant):
    """One lead_offer per status, each on its own day: each day's row shows the stage its status
    lands in, so the SQL's literal map can be read back and compared to FUNNEL_STAGES."""
    tenant.timezone = "UTC"
    tenant.save(update_fields=["timezone"])
    offer = OfferFactory(tenant=tenant)
    first_day = day(1)
    for index, status in enumerate(LeadOfferStatus.values):
        LeadOfferFactory(offer=offer, status=status, created_at=at(1 + index, 12))
    tenant_stats_refresh()

    view_stage_by_status = {}
    for (_, row_day), row in view_rows().items():
        status = LeadOfferStatus.values[(row_day - first_day).days]
        assert row["leads_total"] == 1
        assert [column for column in STATUS_COLUMNS if row[column]] == [f"status_{status.lower()}"]
        (stage_column,) = [column for column in STAGE_COLUMNS if row[column]]
        assert row[stage_column] == 1
        view_stage_by_status[status] = stage_column.removeprefix("stage_")

    assert view_stage_by_status == {status: stage.key for stage in FUNNEL_STAGES for status in stage.statuses}
    assert len(view_stage_by_status) == 13


# --- read helpers ------------------------------------------------------------------------------------


@pytest.mark.django_db
def test_tenant_daily_trend_zero_fills_the_window(two_zones_dataset, django_assert_num_queries):
    ba, _tokyo = two_zones_dataset
    refresh = tenant_stats_refresh()
    rows = view_rows()

    with django_assert_num_queries(2):
        trend = tenant_daily_trend(tenant=ba, days=20, until=day(15))

    assert trend.as_of == refresh.refreshed_at
    assert [point.day for point in trend.points] == [
        day(-4) + dt.timedelta(days=offset) for offset in range(20)
    ]
    for point in trend.points:
        row = rows.get((ba.pk, point.day))
        expected = (row["leads_total"], row["deliveries_delivered"]) if row else (0, 0)
        assert (point.received, point.delivered) == expected
    assert trend.points[0] == TrendPoint(day(-4), 0, 0)
    assert trend.points[-1] == TrendPoint(day(15), 0, 0)
    assert sum(point.received for point in trend.points) == 47
    assert sum(point.delivered for point in trend.points) == 3


@pytest.mark.django_db
def test_tenant_daily_trend_ends_today_in_the_tenants_zone(tenant):
    tenant.timezone = TOKYO
    tenant.save(update_fields=["timezone"])
    LeadOfferFactory(offer=OfferFactory(tenant=tenant))
    tenant_stats_refresh()

    trend = tenant_daily_trend(tenant=tenant, days=7)

    today = dt.datetime.now(zoneinfo.ZoneInfo(TOKYO)).date()
    assert tenant_local_today(tenant) == today
    assert [(point.day, point.received) for point in trend.points[-2:]] == [
        (today - dt.timedelta(days=1), 0),
        (today, 1),
    ]
    assert len(trend.points) == 7


@pytest.mark.django_db
def test_trend_of_a_never_refreshed_view_is_zero_without_as_of(tenant, django_assert_num_queries):
    LeadOfferFactory(offer=OfferFactory(tenant=tenant))
    make_view_unpopulated()

    with django_assert_num_queries(1):
        trend = tenant_daily_trend(tenant=tenant, days=3, until=day(3))

    assert trend.as_of is None
    assert trend.points == [TrendPoint(day(number), 0, 0) for number in (1, 2, 3)]
    assert all_tenants_daily_trend(days=1, until=day(3)).points == [TrendPoint(day(3), 0, 0)]


@pytest.mark.django_db
def test_all_tenants_daily_trend_sums_every_tenant_per_day(two_zones_dataset, django_assert_num_queries):
    refresh = tenant_stats_refresh()
    expected: dict[dt.date, list[int]] = defaultdict(lambda: [0, 0])
    for (_, row_day), row in view_rows().items():
        expected[row_day][0] += row["leads_total"]
        expected[row_day][1] += row["deliveries_delivered"]

    with django_assert_num_queries(2):
        trend = all_tenants_daily_trend(days=10, until=day(8))

    assert trend.as_of == refresh.refreshed_at
    assert trend.points == [
        TrendPoint(day_, *expected.get(day_, (0, 0)))
        for day_ in (day(-1) + dt.timedelta(days=offset) for offset in range(10))
    ]
    assert trend.points[0] == TrendPoint(day(-1), 0, 0)
    assert trend.points[1].received == expected[day(0)][0] > 0


@pytest.mark.parametrize("days", [0, -1, 121], ids=["_case_zero", "_case_negative", "_case_past_history"])
def test_trend_window_must_be_sensible(days):
    with pytest.raises(ValueError):
        all_tenants_daily_trend(days=days, until=day(3))


def test_unknown_time_zone_falls_back_to_utc_as_in_the_view():
    tenant = TenantFactory.build(timezone="Mars/Olympus_Mons")
    assert tenant_local_today(tenant, now=utc(2026, 3, 1, 23, 30)) == dt.date(2026, 3, 1)


@pytest.mark.django_db
def test_view_buckets_an_unknown_time_zone_in_utc():
    tenant = TenantFactory(timezone="Mars/Olympus_Mons")
    LeadOfferFactory(offer=OfferFactory(tenant=tenant), created_at=at(1, 23, 30))

    tenant_stats_refresh()

    assert list(TenantDailyStats.objects.values_list("tenant_id", "day", "leads_total")) == [
        (tenant.pk, day(1), 1)
    ]


@pytest.mark.django_db
def test_view_keeps_the_last_120_days_of_history(tenant):
    tenant.timezone = "UTC"
    tenant.save(update_fields=["timezone"])
    offer = OfferFactory(tenant=tenant)
    utc_today = dt.datetime.now(UTC).date()
    oldest_kept = dt.datetime.combine(utc_today - dt.timedelta(days=VIEW_HISTORY_DAYS), dt.time(0, 0), UTC)
    LeadOfferFactory(offer=offer, created_at=oldest_kept)
    LeadOfferFactory(offer=offer, created_at=oldest_kept - dt.timedelta(seconds=1))
    LeadOfferFactory(offer=offer, created_at=oldest_kept - dt.timedelta(days=30))

    tenant_stats_refresh()

    assert list(TenantDailyStats.objects.values_list("day", "leads_total")) == [(oldest_kept.date(), 1)]


# --- the command ---------------------------------------------------------------------------------


@pytest.mark.django_db
def test_refresh_stats_command_reports_kind_duration_and_rows(tenant):
    make_view_unpopulated()
    LeadOfferFactory(offer=OfferFactory(tenant=tenant))
    out = StringIO()

    call_command("refresh_stats", stdout=out)
    call_command("refresh_stats", stdout=out)
    call_command("refresh_stats", "--plain", stdout=out)

    lines = out.getvalue().splitlines()
    assert [line.split(" in ")[0] for line in lines] == [
        f"Refreshed {VIEW_NAME} (plain)",
        f"Refreshed {VIEW_NAME} (concurrently)",
        f"Refreshed {VIEW_NAME} (plain)",
    ]
    assert all(" ms: 1 rows, as of " in line for line in lines)


@pytest.mark.django_db
def test_refresh_stats_command_fails_clearly_while_another_refresh_runs():
    before = stats_view_state()
    with psycopg.connect(**other_session_params(), autocommit=True) as other:
        lock_from_another_session(other)
        with pytest.raises(CommandError, match="Another refresh of tenant_stats_materialized is running"):
            call_command("refresh_stats", stdout=StringIO())
    assert stats_view_state() == before
