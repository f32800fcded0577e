"""`GET /api/admin/revenue`: exact numbers on a hand-built dataset, filters, validation, caching,
HTTP caching, permissions, query budget, and that the read writes nothing."""

from __future__ import annotations

import datetime as dt
import uuid
from decimal import Decimal

import pytest
from django.core.cache import cache
from django.db import connection
from django.test.utils import CaptureQueriesContext

from billing.models import (
    BillingOrderStatus,
    CreditLedger,
    CreditTransactionType,
    TenantCreditBalance,
)
from billing.tests.factories import BillingOrderFactory, PlatformCostFactory, TenantPricingFactory
from converzia.cache import revenue_key
from converzia.tests.factories import TenantFactory
from deliveries.models import DeliveryStatus
from deliveries.tests.factories import DeliveryFactory
from leads.models import LeadEventType, LeadOffer, LeadOfferStatus
from leads.services import lead_offer_transition
from leads.tests.factories import LeadOfferFactory, OfferFactory
from portal.revenue import revenue_compute

pytestmark = pytest.mark.django_db

URL = "/api/admin/revenue"
RANGE = {"date_start": "2026-03-01", "date_end": "2026-03-03"}
S = LeadOfferStatus
T = CreditTransactionType


@pytest.fixture(autouse=True)
def _no_cached_revenue():
    """Revenue keys are platform-wide (no tenant version to set them apart), so a test could read
    another test's cached report: each test starts without any (SCAN-based, our prefix only)."""
    cache.delete_pattern("revenue:*")


def at(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text).replace(tzinfo=dt.UTC)


def ready_lead(offer, qualified_at: str) -> LeadOffer:
    """A lead_offer whose first LEAD_READY was at `qualified_at` (what the status trigger records)."""
    lead_offer = LeadOfferFactory(offer=offer, status=S.LEAD_READY)
    LeadOffer.objects.filter(pk=lead_offer.pk).update(qualified_at=at(qualified_at))
    return lead_offer


def delivered(lead_offer: LeadOffer, delivered_at: str):
    return DeliveryFactory(
        lead_offer=lead_offer, status=DeliveryStatus.DELIVERED, delivered_at=at(delivered_at)
    )


def ledger(tenant, transaction_type: str, amount: int, created_at: str, delivery=None) -> None:
    CreditLedger.objects.create(
        tenant=tenant,
        transaction_type=transaction_type,
        amount=amount,
        balance_after=100,
        delivery=delivery,
        lead_offer_id=delivery.lead_offer_id if delivery else None,
        created_at=at(created_at),
    )


@pytest.fixture
def world():
    """Two tenants (20.00 and 15.00 per lead), facts on and just outside the range's edges.

    Range 2026-03-01..03 (UTC). Ready: A1 lo1 (03-01 00:00:00, the first instant), A1 lo2 (03-03
    23:59:59.999999, the last), A2 lo6 (03-02), B1 lo5 (03-02); outside: A2 lo3 (03-04 00:00), A2 lo4
    (02-28 23:59:59). Delivered: lo1 (03-01), lo4 (03-01: ready before the range, delivered in it),
    lo5 (03-03 00:00); lo3's delivery is pending. Payments: A 700.00 (03-02); B's completed one is
    after the range and its pending one never counts. Credits: A consumed 2, B consumed 1 and
    refunded 1. Spend: A1 100.00 over 03-01..10 (10.00/day, 30.00 inside), B (no offer) 8.00 over
    02-28..03-01 (4.00 inside), A2 50.00 on 03-05..06 (outside). Balances: A 40, B 3.
    """
    a, b = TenantFactory(name="Alfa"), TenantFactory(name="Beta")
    TenantPricingFactory(tenant=a, cost_per_lead=Decimal("20.00"))
    TenantPricingFactory(tenant=b, cost_per_lead=Decimal("15.00"))
    a1, a2 = OfferFactory(tenant=a, name="A uno"), OfferFactory(tenant=a, name="A dos")
    b1 = OfferFactory(tenant=b, name="B uno")

    lo1 = ready_lead(a1, "2026-03-01T00:00:00")
    ready_lead(a1, "2026-03-03T23:59:59.999999")
    ready_lead(a2, "2026-03-02T10:00:00")
    lo5 = ready_lead(b1, "2026-03-02T12:00:00")
    lo3 = ready_lead(a2, "2026-03-04T00:00:00")
    lo4 = ready_lead(a2, "2026-02-28T23:59:59")

    d1 = delivered(lo1, "2026-03-01T05:00:00")
    d4 = delivered(lo4, "2026-03-01T00:00:00")
    d5 = delivered(lo5, "2026-03-03T00:00:00")
    DeliveryFactory(lead_offer=lo3)

    BillingOrderFactory(
        tenant=a,
        total=Decimal("700.00"),
        status=BillingOrderStatus.COMPLETED,
        paid_at=at("2026-03-02T09:00:00"),
    )
    BillingOrderFactory(
        tenant=b,
        total=Decimal("400.00"),
        status=BillingOrderStatus.COMPLETED,
        paid_at=at("2026-03-04T00:00:00"),
    )
    BillingOrderFactory(tenant=b, total=Decimal("400.00"), status=BillingOrderStatus.PENDING)

    ledger(a, T.CREDIT_PURCHASE, 50, "2026-03-02T09:00:00")
    ledger(a, T.CREDIT_CONSUMPTION, -1, "2026-03-01T05:00:00", d1)
    ledger(a, T.CREDIT_CONSUMPTION, -1, "2026-03-01T00:00:00", d4)
    ledger(b, T.CREDIT_CONSUMPTION, -1, "2026-03-03T00:00:00", d5)
    ledger(b, T.CREDIT_REFUND, 1, "2026-03-03T10:00:00", d5)
    TenantCreditBalance.objects.create(tenant=a, balance=40)
    TenantCreditBalance.objects.create(tenant=b, balance=3)

    PlatformCostFactory(
        tenant=a,
        offer=a1,
        spend=Decimal("100.00"),
        date_start=dt.date(2026, 3, 1),
        date_end=dt.date(2026, 3, 10),
    )
    PlatformCostFactory(
        tenant=b,
        offer=None,
        spend=Decimal("8.00"),
        date_start=dt.date(2026, 2, 28),
        date_end=dt.date(2026, 3, 1),
    )
    PlatformCostFactory(
        tenant=a,
        offer=a2,
        spend=Decimal("50.00"),
        date_start=dt.date(2026, 3, 5),
        date_end=dt.date(2026, 3, 6),
    )
    return {"a": a, "b": b, "a1": a1, "a2": a2, "b1": b1}


def figures(
    ready, ready_value, delivered_, delivered_value, payments, consumed, refunded, spend, profit, margin
):
    return {
        "leads_ready_count": ready,
        "leads_ready_value": ready_value,
        "leads_delivered_count": delivered_,
        "leads_delivered_value": delivered_value,
        "payments_received": payments,
        "credits_consumed": consumed,
        "credits_refunded": refunded,
        "attributed_spend": spend,
        "profit": profit,
        "margin_pct": margin,
    }


def test_exact_numbers(world, staff_user, client_for):
    response = client_for(staff_user).get(URL, RANGE)

    assert response.status_code == 200
    body = response.json()
    assert set(body) == {
        "date_range",
        "tenant_id",
        "as_of",
        "cached",
        "summary",
        "by_day",
        "by_tenant",
        "by_offer",
    }
    assert body["date_range"] == {"start": "2026-03-01", "end": "2026-03-03"}
    assert body["tenant_id"] is None
    assert body["cached"] is False
    assert body["summary"] == {
        **figures(4, "75.00", 3, "55.00", "700.00", 3, 1, "34.00", "41.00", 54.67),
        "pending_credits": 43,
    }
    assert body["by_day"] == [
        {"date": "2026-03-01", **figures(1, "20.00", 2, "40.00", "0.00", 2, 0, "14.00", "6.00", 30.0)},
        {"date": "2026-03-02", **figures(2, "35.00", 0, "0.00", "700.00", 0, 0, "10.00", "25.00", 71.43)},
        {"date": "2026-03-03", **figures(1, "20.00", 1, "15.00", "0.00", 1, 1, "10.00", "10.00", 50.0)},
    ]
    a, b = world["a"], world["b"]
    assert body["by_tenant"] == [
        {
            "tenant_id": str(a.pk),
            "name": "Alfa",
            "cost_per_lead": "20.00",
            "pending_credits": 40,
            "cpl_attributed": "10.00",
            **figures(3, "60.00", 2, "40.00", "700.00", 2, 0, "30.00", "30.00", 50.0),
        },
        {
            "tenant_id": str(b.pk),
            "name": "Beta",
            "cost_per_lead": "15.00",
            "pending_credits": 3,
            "cpl_attributed": "4.00",
            **figures(1, "15.00", 1, "15.00", "0.00", 1, 1, "4.00", "11.00", 73.33),
        },
    ]
    # Spend without an offer is in its tenant and the summary, not here; payments and credits are
    # per tenant only.
    assert body["by_offer"] == [
        {
            "offer_id": str(world["a1"].pk),
            "name": "A uno",
            "tenant_id": str(a.pk),
            "tenant_name": "Alfa",
            **figures(2, "40.00", 1, "20.00", "0.00", 0, 0, "30.00", "10.00", 25.0),
        },
        {
            "offer_id": str(world["a2"].pk),
            "name": "A dos",
            "tenant_id": str(a.pk),
            "tenant_name": "Alfa",
            **figures(1, "20.00", 1, "20.00", "0.00", 0, 0, "0.00", "20.00", 100.0),
        },
        {
            "offer_id": str(world["b1"].pk),
            "name": "B uno",
            "tenant_id": str(b.pk),
            "tenant_name": "Beta",
            **figures(1, "15.00", 1, "15.00", "0.00", 0, 0, "0.00", "15.00", 100.0),
        },
    ]


def test_tenant_filter(world, staff_user, client_for):
    b = world["b"]
    body = client_for(staff_user).get(URL, {**RANGE, "tenant_id": str(b.pk)}).json()

    assert body["tenant_id"] == str(b.pk)
    assert body["summary"] == {
        **figures(1, "15.00", 1, "15.00", "0.00", 1, 1, "4.00", "11.00", 73.33),
        "pending_credits": 3,
    }
    assert [row["tenant_id"] for row in body["by_tenant"]] == [str(b.pk)]
    assert [row["offer_id"] for row in body["by_offer"]] == [str(world["b1"].pk)]
    assert [day["leads_ready_count"] for day in body["by_day"]] == [0, 1, 0]
    assert [day["attributed_spend"] for day in body["by_day"]] == ["4.00", "0.00", "0.00"]


def test_no_ready_value_means_no_margin(world, staff_user, client_for):
    # Only spend falls on 03-05..06 (A2's 50.00, and 2 of A1's 10 days: 20.00): a loss, and a
    # margin of nothing is null, not 0.
    body = client_for(staff_user).get(URL, {"date_start": "2026-03-05", "date_end": "2026-03-06"}).json()

    assert body["summary"]["leads_ready_value"] == "0.00"
    assert body["summary"]["attributed_spend"] == "70.00"
    assert body["summary"]["profit"] == "-70.00"
    assert body["summary"]["margin_pct"] is None
    assert [day["margin_pct"] for day in body["by_day"]] == [None, None]
    assert body["by_tenant"][0]["cpl_attributed"] is None


def test_an_empty_platform(staff_user, client_for):
    body = client_for(staff_user).get(URL, RANGE).json()

    assert body["summary"] == {
        **figures(0, "0.00", 0, "0.00", "0.00", 0, 0, "0.00", "0.00", None),
        "pending_credits": 0,
    }
    assert len(body["by_day"]) == 3
    assert body["by_tenant"] == [] and body["by_offer"] == []


def test_a_lead_ready_twice_counts_once_on_its_first_day(staff_user, client_for):
    offer = OfferFactory()
    lead_offer = LeadOfferFactory(offer=offer, status=S.QUALIFYING)
    for status in (S.LEAD_READY, S.DISQUALIFIED, S.REACTIVATION, S.ENGAGED, S.QUALIFYING, S.LEAD_READY):
        lead_offer = lead_offer_transition(lead_offer=lead_offer, to_status=status)
    ready_events = lead_offer.events.filter(event_type=LeadEventType.STATUS_CHANGE, details__to=S.LEAD_READY)
    assert ready_events.count() == 2

    body = client_for(staff_user).get(URL, {"tenant_id": str(offer.tenant_id)}).json()

    first = ready_events.order_by("created_at").first().created_at
    assert lead_offer.qualified_at.date() == first.date()  # the first event's instant, kept
    assert body["summary"]["leads_ready_count"] == 1
    assert body["by_offer"][0]["leads_ready_count"] == 1


def test_the_default_range_is_the_last_30_utc_days(staff_user, client_for):
    body = client_for(staff_user).get(URL).json()

    start, end = (
        dt.date.fromisoformat(body["date_range"]["start"]),
        dt.date.fromisoformat(body["date_range"]["end"]),
    )
    assert end == dt.datetime.now(dt.UTC).date()
    assert (end - start).days == 29
    assert len(body["by_day"]) == 30


def test_only_date_end_given_keeps_30_days(staff_user, client_for):
    body = client_for(staff_user).get(URL, {"date_end": "2026-03-30"}).json()
    assert body["date_range"] == {"start": "2026-03-01", "end": "2026-03-30"}


def test_a_full_year_is_accepted(staff_user, client_for):
    response = client_for(staff_user).get(URL, {"date_start": "2024-01-01", "date_end": "2024-12-31"})
    assert response.status_code == 200  # 366 days (a leap year)
    assert len(response.json()["by_day"]) == 366


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"date_start": "2026-13-01"}, "date_start"),
        ({"date_end": "yesterday"}, "date_end"),
        ({"date_start": "2026-03-05", "date_end": "2026-03-04"}, "date_end"),
        ({"date_start": "2024-01-01", "date_end": "2025-01-01"}, "date_end"),  # 367 days
        ({"date_start": "0001-01-01", "date_end": "0001-01-02"}, "date_start"),
        ({"date_end": "9999-12-31"}, "date_end"),
        ({"tenant_id": "not-a-uuid"}, "tenant_id"),
        ({"fresh": "maybe"}, "fresh"),
        ({"days": "30"}, "days"),  # unknown parameter
    ],
    ids=[
        "bad-date",
        "bad-end",
        "end-before-start",
        "over-366-days",
        "too-early",
        "too-late",
        "bad-tenant",
        "bad-fresh",
        "unknown",
    ],
)
def test_bad_parameters_are_invalid_input(params, field, staff_user, client_for):
    response = client_for(staff_user).get(URL, params)

    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "invalid_input"
    assert field in error["details"]
    assert error["request_id"] == response["X-Request-ID"]


def test_unknown_tenant_is_not_found(staff_user, client_for):
    response = client_for(staff_user).get(URL, {"tenant_id": str(uuid.uuid4())})

    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"


def test_staff_only(owner, client_for, api_client):
    anonymous = api_client.get(URL)
    member = client_for(owner).get(URL)

    assert anonymous.status_code == 401
    assert anonymous.json()["error"]["code"] == "unauthenticated"
    assert member.status_code == 403
    assert member.json()["error"]["code"] == "forbidden"


def test_second_call_is_cached_and_fresh_recomputes(world, staff_user, client_for):
    client = client_for(staff_user)

    first = client.get(URL, RANGE).json()
    ready_lead(world["b1"], "2026-03-02T13:00:00")  # revenue is not invalidated: TTL or fresh
    second = client.get(URL, RANGE).json()
    fresh = client.get(URL, {**RANGE, "fresh": "true"}).json()
    after = client.get(URL, RANGE).json()

    assert first["cached"] is False
    assert second["cached"] is True and second["as_of"] == first["as_of"]
    assert second["summary"] == first["summary"]
    assert fresh["cached"] is False and fresh["as_of"] > first["as_of"]
    assert fresh["summary"]["leads_ready_count"] == 5
    assert after["cached"] is True and after["summary"] == fresh["summary"]  # the fresh value was stored


def test_cache_key_names_range_and_tenant(world, staff_user, client_for):
    client = client_for(staff_user)
    client.get(URL, RANGE)

    by_tenant = client.get(URL, {**RANGE, "tenant_id": str(world["a"].pk)}).json()
    other_range = client.get(URL, {"date_start": "2026-03-01", "date_end": "2026-03-02"}).json()

    assert by_tenant["cached"] is False and other_range["cached"] is False
    assert revenue_key("2026-03-01", "2026-03-03", "all") == "revenue:2026-03-01:2026-03-03:all"


def test_etag_and_304(world, staff_user, client_for):
    client = client_for(staff_user)

    first = client.get(URL, RANGE)
    not_modified = client.get(URL, RANGE, HTTP_IF_NONE_MATCH=first["ETag"])
    stale = client.get(URL, RANGE, HTTP_IF_NONE_MATCH='"stale"')

    assert first["Cache-Control"] == "private, no-cache"
    assert not_modified.status_code == 304
    assert not_modified.content == b""
    assert not_modified["ETag"] == first["ETag"]
    assert stale.status_code == 200


# A token's first use: its user id, token+user and its last-used stamp; it then caches the principal
# (converzia.principal), and later requests authenticate with no query.
FIRST_USE_OVERHEAD = 3
# The one aggregate inside one guard: in the test's transaction the guard costs 5 (savepoint, read
# limits, SET LOCAL, restore, release; in production BEGIN, SET LOCAL, COMMIT). With tenant_id, the
# tenant lookup too.
MISS_BUDGET = 1 + 5


def test_query_count_is_pinned_and_does_not_grow_with_tenants(
    world, staff_user, client_for, django_assert_num_queries
):
    client = client_for(staff_user)
    with django_assert_num_queries(FIRST_USE_OVERHEAD + MISS_BUDGET + 1):
        client.get(URL, {**RANGE, "tenant_id": str(world["a"].pk)})
    with django_assert_num_queries(MISS_BUDGET):
        assert len(client.get(URL, RANGE).json()["by_tenant"]) == 2
    for _ in range(5):
        other = TenantFactory()
        TenantPricingFactory(tenant=other)
        ready_lead(OfferFactory(tenant=other), "2026-03-02T08:00:00")
        PlatformCostFactory(tenant=other, date_start=dt.date(2026, 3, 1), date_end=dt.date(2026, 3, 31))
    with django_assert_num_queries(MISS_BUDGET):
        body = client.get(URL, {**RANGE, "fresh": "true"}).json()
    assert len(body["by_tenant"]) == 7
    assert len(body["by_offer"]) == 3 + 5


def test_a_hit_and_a_304_read_no_table(world, staff_user, client_for, django_assert_num_queries):
    client = client_for(staff_user)
    etag = client.get(URL, RANGE)["ETag"]
    with django_assert_num_queries(0):  # a hit: the principal and the report both cached
        assert client.get(URL, RANGE).json()["cached"] is True
    with django_assert_num_queries(0):
        assert client.get(URL, RANGE, HTTP_IF_NONE_MATCH=etag).status_code == 304


def test_the_read_writes_nothing(world):
    with CaptureQueriesContext(connection) as captured:
        report = revenue_compute(date_start=dt.date(2026, 3, 1), date_end=dt.date(2026, 3, 3))

    assert report.summary.leads_ready_count == 4
    writes = [
        q["sql"]
        for q in captured.captured_queries
        if q["sql"].lstrip().upper().startswith(("INSERT", "UPDATE", "DELETE", "TRUNCATE", "CREATE", "ALTER"))
    ]
    assert writes == []
