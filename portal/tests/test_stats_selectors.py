"""portal.stats: the live numbers of leads/stats and the funnel agree with direct SQL counts."""

from __future__ import annotations

import datetime as dt
import re
import uuid
import zoneinfo

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from billing.services import credit_bonus_grant
from converzia.errors import NotFound
from deliveries.tests.factories import DeliveryFactory
from leads.funnel import FUNNEL_STAGES, STAGE_BY_STATUS, STAGE_KEYS
from leads.models import DisqualificationCategory, LeadEventType, LeadOffer, LeadOfferStatus, OfferStatus
from leads.tests.factories import LeadEventFactory, LeadOfferFactory, OfferFactory
from portal.stats import funnel_compute, lead_stats_compute
from portal.stats_view import tenant_daily_trend, tenant_local_midnight, tenant_stats_refresh

pytestmark = pytest.mark.django_db

S = LeadOfferStatus
C = DisqualificationCategory
BUENOS_AIRES = "America/Argentina/Buenos_Aires"  # UTC-3 all year
SECOND = dt.timedelta(seconds=1)
DAY = dt.timedelta(days=1)


def local_today_midnight() -> dt.datetime:
    zone = zoneinfo.ZoneInfo(BUENOS_AIRES)
    return dt.datetime.combine(dt.datetime.now(zone).date(), dt.time.min, tzinfo=zone)


def lead_offer(*, tenant, offer, status, created_at=None, category=""):
    row = LeadOfferFactory(tenant=tenant, offer=offer, status=status, disqualification_category=category)
    if created_at is not None:
        LeadOffer.objects.filter(pk=row.pk).update(created_at=created_at)
    return row


def delivery_completed(row, created_at):
    """What completing a delivery writes: the delivery's `delivered_at` and the event, same instant."""
    DeliveryFactory(lead_offer=row, delivered=True, delivered_at=created_at)
    return LeadEventFactory(
        lead_offer=row, event_type=LeadEventType.DELIVERY_COMPLETED, created_at=created_at
    )


@pytest.fixture
def dataset(tenant, other_tenant):
    """Every status, unmapped rows, three offers (one without leads), every disqualification
    category (plus an empty one and a category on a non-DISQUALIFIED row), rows on both sides of
    the tenant's local midnight (Buenos Aires, where a UTC day would cut 3 hours off), and noise in
    another tenant."""
    tenant.timezone = BUENOS_AIRES
    tenant.save(update_fields=["timezone"])
    tower = OfferFactory(tenant=tenant, name="Torre", status=OfferStatus.ACTIVE)
    park = OfferFactory(tenant=tenant, name="Parque", status=OfferStatus.PAUSED)
    OfferFactory(tenant=tenant, name="Vacía", status=OfferStatus.ACTIVE)
    OfferFactory(tenant=tenant, name="Archivada", status=OfferStatus.ARCHIVED)
    midnight = local_today_midnight()

    for index, status in enumerate(S.values):
        offer = tower if index % 2 else park
        lead_offer(tenant=tenant, offer=offer, status=status, created_at=midnight - 40 * DAY)
    for status in (S.PENDING_MAPPING, S.PENDING_MAPPING, S.TO_BE_CONTACTED):  # unmapped
        lead_offer(tenant=tenant, offer=None, status=status, created_at=midnight + SECOND)
    for category in C.values:
        lead_offer(
            tenant=tenant,
            offer=tower,
            status=S.DISQUALIFIED,
            category=category,
            created_at=midnight - 2 * DAY,
        )
    lead_offer(
        tenant=tenant,
        offer=tower,
        status=S.DISQUALIFIED,
        category=C.WRONG_ZONE,
        created_at=midnight - 2 * DAY,
    )
    lead_offer(tenant=tenant, offer=park, status=S.DISQUALIFIED, category="", created_at=midnight - 2 * DAY)
    # A category on a row that is no longer DISQUALIFIED is not counted (v1's views did).
    lead_offer(tenant=tenant, offer=park, status=S.REACTIVATION, category=C.PRICE_TOO_HIGH)

    # Windows: today = since local midnight; 7d and 30d include today.
    edges = {
        "today": midnight + SECOND,
        "yesterday_late": midnight - SECOND,  # the same UTC date as today: a UTC cut would say today
        "7d_in": midnight - 6 * DAY + SECOND,
        "7d_out": midnight - 6 * DAY - SECOND,
        "30d_in": midnight - 29 * DAY + SECOND,
        "30d_out": midnight - 29 * DAY - SECOND,
    }
    delivered = {}
    for name, created_at in edges.items():
        lead_offer(tenant=tenant, offer=tower, status=S.CONTACTED, created_at=created_at)
        delivered[name] = lead_offer(
            tenant=tenant, offer=park, status=S.SENT_TO_DEVELOPER, created_at=midnight - 50 * DAY
        )
        delivery_completed(delivered[name], created_at)
    # Other event types and other tenants never count as deliveries.
    LeadEventFactory(
        lead_offer=delivered["today"], event_type=LeadEventType.STATUS_CHANGE, created_at=edges["today"]
    )
    foreign_offer = OfferFactory(tenant=other_tenant)
    for status in S.values:
        row = lead_offer(tenant=other_tenant, offer=foreign_offer, status=status, created_at=edges["today"])
    delivery_completed(row, edges["today"])
    lead_offer(tenant=other_tenant, offer=None, status=S.PENDING_MAPPING)
    credit_bonus_grant(tenant=tenant, amount=7, reason="test")
    credit_bonus_grant(tenant=other_tenant, amount=100, reason="noise")
    return {"tower": tower, "park": park, "midnight": midnight}


def sql_rows(query: str, params: list) -> list[tuple]:
    with connection.cursor() as cursor:
        cursor.execute(query, params)
        return cursor.fetchall()


def direct_status_counts(tenant_id) -> dict[str, int]:
    rows = sql_rows(
        "SELECT status, count(*) FROM lead_offers WHERE tenant_id = %s GROUP BY status", [tenant_id]
    )
    return {status: dict(rows).get(status, 0) for status in S.values}


def direct_created_since(tenant_id, since: dt.datetime) -> int:
    return sql_rows(
        "SELECT count(*) FROM lead_offers WHERE tenant_id = %s AND created_at >= %s", [tenant_id, since]
    )[0][0]


def direct_delivered_since(tenant_id, since: dt.datetime) -> int:
    return sql_rows(
        "SELECT count(*) FROM lead_events WHERE tenant_id = %s AND event_type = 'DELIVERY_COMPLETED'"
        " AND created_at >= %s",
        [tenant_id, since],
    )[0][0]


# --- leads/stats -----------------------------------------------------------------------------------


def test_stats_agree_with_direct_sql(dataset, tenant):
    midnight = dataset["midnight"]

    stats = lead_stats_compute(tenant=tenant, days=30)

    statuses = direct_status_counts(tenant.pk)
    assert stats["statuses"] == statuses
    assert stats["total"] == sum(statuses.values()) == LeadOffer.objects.filter(tenant=tenant).count() == 40
    expected_stages = {stage.key: sum(statuses[s] for s in stage.statuses) for stage in FUNNEL_STAGES}
    assert stats["stages"] == expected_stages
    assert sum(stats["stages"].values()) == stats["total"]
    assert stats["stages"]["received"] == 5  # 2 mapped + 3 unmapped: counted by tenant_id
    assert stats["conversion_rate"] == round(statuses[S.SENT_TO_DEVELOPER] * 100 / stats["total"], 2)
    assert stats["leads_today"] == direct_created_since(tenant.pk, midnight) == 5
    assert stats["leads_7d"] == direct_created_since(tenant.pk, midnight - 6 * DAY)
    assert stats["leads_30d"] == direct_created_since(tenant.pk, midnight - 29 * DAY)
    assert (stats["delivered_today"], stats["delivered_7d"], stats["delivered_30d"]) == (1, 3, 5)
    assert stats["delivered_7d"] == direct_delivered_since(tenant.pk, midnight - 6 * DAY)
    assert stats["delivered_30d"] == direct_delivered_since(tenant.pk, midnight - 29 * DAY)
    assert stats["credit_balance"] == 7
    assert stats["active_offers"] == 2


def test_disqualification_counts_only_disqualified_rows_and_unknown_is_other(dataset, tenant):
    stats = lead_stats_compute(tenant=tenant)

    rows = sql_rows(
        "SELECT coalesce(nullif(disqualification_category, ''), 'OTHER'), count(*) FROM lead_offers"
        " WHERE tenant_id = %s AND status = 'DISQUALIFIED' GROUP BY 1",
        [tenant.pk],
    )
    assert stats["disqualification"] == {category: dict(rows).get(category, 0) for category in C.values}
    assert list(stats["disqualification"]) == list(C.values)
    assert stats["disqualification"][C.WRONG_ZONE] == 2
    assert stats["disqualification"][C.OTHER] == 3  # OTHER itself + two empty categories
    assert stats["disqualification"][C.PRICE_TOO_HIGH] == 1  # not the REACTIVATION row
    assert sum(stats["disqualification"].values()) == stats["statuses"][S.DISQUALIFIED]


def test_stats_of_an_empty_tenant_are_zero(tenant):
    stats = lead_stats_compute(tenant=tenant, days=3)

    assert stats["total"] == 0
    assert stats["stages"] == dict.fromkeys(STAGE_KEYS, 0)
    assert set(stats["statuses"].values()) == {0}
    assert set(stats["disqualification"].values()) == {0}
    assert stats["conversion_rate"] == 0.0
    assert len(stats["trend"]) == 3


def test_trend_comes_from_the_view(dataset, tenant):
    tenant_stats_refresh()

    stats = lead_stats_compute(tenant=tenant, days=45)

    expected = tenant_daily_trend(tenant=tenant, days=45)
    assert stats["trend"] == [
        {"date": point.day.isoformat(), "received": point.received, "delivered": point.delivered}
        for point in expected.points
    ]
    assert stats["trend"][-1]["received"] == stats["leads_today"]
    window_start = dataset["midnight"] - 44 * DAY
    assert sum(point["received"] for point in stats["trend"]) == direct_created_since(tenant.pk, window_start)
    assert sum(point["delivered"] for point in stats["trend"]) == direct_delivered_since(
        tenant.pk, window_start
    )


@pytest.mark.parametrize("days", [0, 121])
def test_days_out_of_range_is_a_programming_error(tenant, days):
    with pytest.raises(ValueError):
        lead_stats_compute(tenant=tenant, days=days)


def test_stats_query_count(dataset, tenant, django_assert_max_num_queries):
    # Every live number (counters, windows, deliveries, balance, active offers, view state), then the
    # trend rows; plus the guard's SET LOCAL and (inside the test's transaction) its savepoint and
    # limits bookkeeping.
    tenant_stats_refresh()
    with django_assert_max_num_queries(2 + 5):
        lead_stats_compute(tenant=tenant)


def is_guard_bookkeeping(sql: str) -> bool:
    """The guard's own statements: its transaction (BEGIN/COMMIT, or a savepoint inside the test's
    transaction) and its limits (read with current_setting, set with set_config)."""
    transaction_control = ("BEGIN", "COMMIT", "ROLLBACK", "SAVEPOINT", "RELEASE SAVEPOINT")
    return sql.startswith(transaction_control) or "set_config(" in sql or "current_setting(" in sql


def statements_inside_the_guard(read) -> list[str]:
    """The SQL `read()` sends, without the guard's bookkeeping; asserts it all ran inside the guard
    (between its limits being set and its transaction ending)."""
    with CaptureQueriesContext(connection) as captured:
        read()
    sent = [query["sql"] for query in captured.captured_queries]
    inside = [index for index, sql in enumerate(sent) if not is_guard_bookkeeping(sql)]
    assert inside == list(range(inside[0], inside[-1] + 1)), sent  # one block, not two guards
    assert any("set_config(" in sql for sql in sent[: inside[0]]), sent
    assert sent[-1].startswith(("COMMIT", "RELEASE SAVEPOINT")), sent
    return [sent[index] for index in inside]


def test_live_stats_are_two_statements_inside_their_guard(dataset, tenant):
    tenant_stats_refresh()

    statements = statements_inside_the_guard(lambda: lead_stats_compute(tenant=tenant))

    # Every live number, then the trend rows.
    assert len(statements) == 2, statements
    live, trend = statements
    tables = ("lead_offer_counts", "lead_offer_count_deltas", "lead_offers", "lead_events", "offers")
    for table in (*tables, "tenant_credit_balances", "pg_class"):
        assert re.search(rf"\bFROM {table}\b", live), table
    assert 'FROM "tenant_stats_materialized"' in trend


def test_live_stats_are_one_statement_while_the_view_was_never_refreshed(dataset, tenant):
    with connection.cursor() as cursor:
        cursor.execute("REFRESH MATERIALIZED VIEW tenant_stats_materialized WITH NO DATA")

    stats = lead_stats_compute(tenant=tenant, days=3)
    statements = statements_inside_the_guard(lambda: lead_stats_compute(tenant=tenant, days=3))

    assert len(statements) == 1, statements
    assert 'FROM "tenant_stats_materialized"' not in statements[0]
    assert [(point["received"], point["delivered"]) for point in stats["trend"]] == [(0, 0)] * 3
    assert stats["leads_today"] > 0


def test_local_midnight_is_in_the_tenants_zone(tenant):
    tenant.timezone = BUENOS_AIRES

    assert tenant_local_midnight(tenant, dt.date(2026, 3, 1)) == dt.datetime(2026, 3, 1, 3, 0, tzinfo=dt.UTC)


# --- funnel ----------------------------------------------------------------------------------------


def test_funnel_totals_match_stats_and_sum_over_offers_plus_unmapped(dataset, tenant):
    funnel = funnel_compute(tenant=tenant)
    stats = lead_stats_compute(tenant=tenant)

    assert funnel["total"] == stats["total"]
    assert {stage["key"]: stage["count"] for stage in funnel["stages"]} == stats["stages"]
    assert [stage["key"] for stage in funnel["stages"]] == list(STAGE_KEYS)
    assert [stage["label"] for stage in funnel["stages"]] == [stage.label for stage in FUNNEL_STAGES]
    assert funnel["conversion_rate"] == stats["conversion_rate"]
    unmapped = sql_rows(
        "SELECT status, count(*) FROM lead_offers WHERE tenant_id = %s AND offer_id IS NULL GROUP BY status",
        [tenant.pk],
    )
    unmapped_stages = dict.fromkeys(STAGE_KEYS, 0)
    for status, count in unmapped:
        unmapped_stages[STAGE_BY_STATUS[status]] += count
    for key in STAGE_KEYS:
        assert (
            sum(offer["stages"][key] for offer in funnel["offers"]) + unmapped_stages[key]
            == stats["stages"][key]
        )
    assert sum(offer["total"] for offer in funnel["offers"]) + 3 == funnel["total"]
    for offer in funnel["offers"]:
        assert sum(offer["stages"].values()) == offer["total"]


def test_funnel_offers_are_all_the_tenants_offers_zero_filled(dataset, tenant):
    funnel = funnel_compute(tenant=tenant)

    by_name = {offer["name"]: offer for offer in funnel["offers"]}
    assert set(by_name) == {"Torre", "Parque", "Vacía", "Archivada"}
    tower = by_name["Torre"]
    expected = sql_rows(
        "SELECT status, count(*) FROM lead_offers WHERE offer_id = %s GROUP BY status", [dataset["tower"].pk]
    )
    assert tower["total"] == sum(count for _, count in expected)
    assert tower["offer_id"] == str(dataset["tower"].pk)
    assert tower["status"] == "ACTIVE"
    assert by_name["Vacía"]["total"] == 0
    assert by_name["Vacía"]["stages"] == dict.fromkeys(STAGE_KEYS, 0)
    assert by_name["Vacía"]["conversion_rate"] == 0.0
    totals = [offer["total"] for offer in funnel["offers"]]
    assert totals == sorted(totals, reverse=True)


def test_funnel_shares_are_percentages_of_total(dataset, tenant):
    funnel = funnel_compute(tenant=tenant)

    for stage in funnel["stages"]:
        assert stage["share"] == round(stage["count"] * 100 / funnel["total"], 2)


def test_funnel_filters_by_offer(dataset, tenant):
    park = dataset["park"]

    funnel = funnel_compute(tenant=tenant, offer_id=park.pk)

    assert [offer["offer_id"] for offer in funnel["offers"]] == [str(park.pk)]
    assert funnel["total"] == funnel["offers"][0]["total"] == LeadOffer.objects.filter(offer=park).count()


def test_funnel_of_a_foreign_or_missing_offer_is_not_found(dataset, tenant, other_tenant):
    foreign = OfferFactory(tenant=other_tenant)

    for offer_id in (foreign.pk, uuid.uuid4()):
        with pytest.raises(NotFound):
            funnel_compute(tenant=tenant, offer_id=offer_id)


def test_funnel_dates_are_local_days_inclusive(dataset, tenant):
    today = dataset["midnight"].date()

    only_today = funnel_compute(tenant=tenant, created_from=today, created_to=today)
    until_yesterday = funnel_compute(tenant=tenant, created_to=today - dt.timedelta(days=1))

    assert only_today["total"] == direct_created_since(tenant.pk, dataset["midnight"]) == 5
    assert only_today["total"] + until_yesterday["total"] == funnel_compute(tenant=tenant)["total"]


def test_funnel_is_one_grouped_query_whatever_the_number_of_offers(
    dataset, tenant, django_assert_max_num_queries
):
    with django_assert_max_num_queries(7) as few:
        funnel_compute(tenant=tenant)
    for index in range(5):
        lead_offer(tenant=tenant, offer=OfferFactory(tenant=tenant, name=f"Más {index}"), status=S.SCORED)
    with django_assert_max_num_queries(len(few.captured_queries)):
        funnel_compute(tenant=tenant)


@pytest.mark.parametrize(
    ("_case", "params"),
    [
        ("_case_all_offers", lambda d: {}),
        ("_case_one_offer", lambda d: {"offer_id": d["park"].pk}),
        (
            "_case_created_range",
            lambda d: {"created_from": d["midnight"].date(), "created_to": d["midnight"].date()},
        ),
    ],
)
def test_live_funnel_is_two_statements_inside_its_guard(_case, params, dataset, tenant):
    statements = statements_inside_the_guard(lambda: funnel_compute(tenant=tenant, **params(dataset)))

    # The offers (or the named one), then the counts by offer and status.
    assert len(statements) == 2, statements
    offers, groups = statements
    assert 'FROM "offers"' in offers and 'FROM "lead_offers"' in groups and "GROUP BY" in groups


@pytest.mark.django_db(transaction=True)
def test_production_query_counts_outside_a_transaction(django_assert_num_queries):
    """What a request pays on a miss when no outer transaction exists (as in production): the data
    queries plus one SET LOCAL per guard."""
    from converzia.tests.factories import TenantFactory

    tenant = TenantFactory()
    LeadOfferFactory(offer=OfferFactory(tenant=tenant))
    tenant_stats_refresh()

    # Every live number (counters, windows, deliveries, balance, active offers, view state), then the
    # trend rows; one guard (BEGIN, SET LOCAL, COMMIT).
    with django_assert_num_queries(2 + 3):
        lead_stats_compute(tenant=tenant)
    # offers, grouped aggregate; one guard.
    with django_assert_num_queries(2 + 3):
        funnel_compute(tenant=tenant)
