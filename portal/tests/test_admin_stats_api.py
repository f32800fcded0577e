"""`GET /api/admin/stats`: the platform dashboard from the stats view and small tables, staff only."""

from __future__ import annotations

import datetime as dt

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from billing.models import TenantCreditBalance
from billing.tests.factories import TenantPricingFactory
from converzia.models import MembershipStatus, TenantStatus
from converzia.tests.factories import TenantFactory, TenantMemberFactory
from deliveries.tests.factories import DeliveryFactory
from leads.models import (
    InboxChange,
    InboxChangeStatus,
    InboxEvent,
    InboxEventStatus,
    LeadOffer,
    LeadOfferStatus,
    OfferApprovalStatus,
    OfferStatus,
)
from leads.tests.factories import LeadOfferFactory, OfferFactory
from portal.admin_stats import ADMIN_TREND_DAYS, admin_stats_get
from portal.models import StatsViewRefresh
from portal.stats_view import VIEW_NAME, tenant_stats_refresh

pytestmark = pytest.mark.django_db

URL = "/api/admin/stats"
S = LeadOfferStatus


def parked_change(ad_id: str, status: str) -> None:
    event = InboxEvent.objects.create(payload={}, status=InboxEventStatus.PARKED, change_count=1)
    InboxChange.objects.create(
        event=event, position=0, leadgen_id=f"lg-{ad_id}-{event.pk}", ad_id=ad_id, status=status
    )


@pytest.fixture
def platform():
    """Alfa (Buenos Aires) and Beta (UTC) active, Gama pending, Delta active and exactly at its threshold.

    Leads (6): Alfa 2 unmapped (PENDING_MAPPING) + 1 mapped today + 1 mapped 3 days ago; Beta 1
    unmapped + 1 delivered today. Offers: 3 ACTIVE (one of them waiting for approval) and 1 DRAFT.
    One membership waits for approval. Three UNROUTED inbox changes over two ads, one FAILED. Low
    credit: Alfa (4 < its own 5) and Beta (no balance row, no pricing row: 0 < the default 10); Delta
    holds 10 of 10.
    """
    alfa = TenantFactory(name="Alfa", timezone="America/Argentina/Buenos_Aires")
    beta = TenantFactory(name="Beta", timezone="UTC")
    gama = TenantFactory(name="Gama", status=TenantStatus.PENDING)
    delta = TenantFactory(name="Delta")
    TenantPricingFactory(tenant=alfa, low_credit_threshold=5)
    TenantPricingFactory(tenant=delta, low_credit_threshold=10)
    TenantCreditBalance.objects.create(tenant=alfa, balance=4)
    TenantCreditBalance.objects.create(tenant=delta, balance=10)

    offer = OfferFactory(tenant=alfa, approval_status=OfferApprovalStatus.APPROVED)
    OfferFactory(tenant=alfa, approval_status=OfferApprovalStatus.PENDING_APPROVAL)
    OfferFactory(tenant=gama, status=OfferStatus.DRAFT, approval_status=OfferApprovalStatus.DRAFT)
    beta_offer = OfferFactory(tenant=beta, approval_status=OfferApprovalStatus.APPROVED)
    TenantMemberFactory(tenant=gama, status=MembershipStatus.PENDING_APPROVAL)

    for tenant in (alfa, alfa, beta):
        LeadOfferFactory(tenant=tenant, offer=None, status=S.PENDING_MAPPING)
    LeadOfferFactory(offer=offer)
    old = LeadOfferFactory(offer=offer)
    LeadOffer.objects.filter(pk=old.pk).update(created_at=timezone.now() - dt.timedelta(days=3))
    DeliveryFactory(lead_offer=LeadOfferFactory(offer=beta_offer, status=S.LEAD_READY), delivered=True)

    parked_change("ad-1", InboxChangeStatus.UNROUTED)
    parked_change("ad-1", InboxChangeStatus.UNROUTED)
    parked_change("ad-2", InboxChangeStatus.UNROUTED)
    parked_change("ad-3", InboxChangeStatus.FAILED)
    return {"alfa": alfa, "beta": beta, "gama": gama, "delta": delta}


def test_the_dashboard(platform, staff_user, client_for):
    refreshed = tenant_stats_refresh()

    response = client_for(staff_user).get(URL)

    assert response.status_code == 200
    body = response.json()
    assert set(body) == {
        "as_of",
        "view_age_s",
        "totals",
        "active_tenants",
        "leads_today",
        "delivered_today",
        "pending_approvals",
        "unmapped_ads",
        "low_credit_tenants",
        "trend",
    }
    assert dt.datetime.fromisoformat(body["as_of"]) == refreshed.refreshed_at
    assert 0 <= body["view_age_s"] < 60
    assert body["totals"] == {
        "tenants": 4,
        "active_tenants": 3,
        "offers": 4,
        "active_offers": 3,
        "credits_outstanding": 14,
        "leads_30d": 6,
        "delivered_30d": 1,
    }
    assert body["active_tenants"] == 3
    assert body["leads_today"] == 5  # everything but the lead of 3 days ago, each in its tenant's today
    assert body["delivered_today"] == 1
    assert body["pending_approvals"] == {"tenants": 1, "memberships": 1, "offers": 1}
    assert body["unmapped_ads"] == {"pending_mapping_leads": 3, "unrouted_changes": 3, "unrouted_ads": 2}
    assert body["low_credit_tenants"] == {
        "count": 2,
        "tenants": [
            {"tenant_id": str(platform["beta"].pk), "name": "Beta", "balance": 0, "threshold": 10},
            {"tenant_id": str(platform["alfa"].pk), "name": "Alfa", "balance": 4, "threshold": 5},
        ],
    }
    trend = body["trend"]
    assert len(trend) == ADMIN_TREND_DAYS
    assert trend[-1]["date"] == timezone.now().astimezone(dt.UTC).date().isoformat()
    assert sum(point["received"] for point in trend) == 6
    assert sum(point["delivered"] for point in trend) == 1


def test_numbers_are_as_of_the_last_refresh(platform, staff_user, client_for):
    tenant_stats_refresh()
    client = client_for(staff_user)
    before = client.get(URL).json()

    LeadOfferFactory(offer=OfferFactory(tenant=platform["beta"]))  # not in the view yet
    stale = client.get(URL).json()
    tenant_stats_refresh()
    after = client.get(URL).json()

    assert stale["leads_today"] == before["leads_today"] == 5
    assert after["leads_today"] == 6
    assert after["totals"]["leads_30d"] == 7
    # The small-table counters are live.
    assert stale["totals"]["offers"] == before["totals"]["offers"] + 1


def make_view_never_refreshed() -> None:
    """Back to the state the migration leaves: the view unpopulated (WITH NO DATA) and no refresh
    recorded. Both are undone by the test's rollback.

    A test cannot assume it starts there: a refresh in a `transaction=True` test commits, and the
    flush after it empties `stats_view_refreshes` but not the materialized view, which keeps that
    test's rows (populated, yet with no refresh on record) for every test after it.
    """
    with connection.cursor() as cursor:
        cursor.execute(f"REFRESH MATERIALIZED VIEW {VIEW_NAME} WITH NO DATA")
    StatsViewRefresh.objects.filter(view_name=VIEW_NAME).delete()


def test_a_view_never_refreshed_reads_zero_with_no_as_of(platform, staff_user, client_for):
    make_view_never_refreshed()

    body = client_for(staff_user).get(URL).json()

    assert body["as_of"] is None and body["view_age_s"] is None
    assert body["leads_today"] == 0 and body["totals"]["leads_30d"] == 0
    assert len(body["trend"]) == ADMIN_TREND_DAYS
    assert body["unmapped_ads"]["pending_mapping_leads"] == 3  # live, not from the view


def test_an_empty_platform(staff_user, client_for):
    body = client_for(staff_user).get(URL).json()

    assert body["totals"]["tenants"] == 0
    assert body["low_credit_tenants"] == {"count": 0, "tenants": []}
    assert body["unmapped_ads"] == {"pending_mapping_leads": 0, "unrouted_changes": 0, "unrouted_ads": 0}


def test_staff_only(owner, client_for, api_client):
    anonymous = api_client.get(URL)
    member = client_for(owner).get(URL)

    assert anonymous.status_code == 401
    assert anonymous.json()["error"]["code"] == "unauthenticated"
    assert member.status_code == 403
    assert member.json()["error"]["code"] == "forbidden"


def test_unknown_parameters_are_invalid_input(staff_user, client_for):
    response = client_for(staff_user).get(URL, {"tenant_id": "x"})

    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_input"
    assert "tenant_id" in response.json()["error"]["details"]


# View state, trend rows and the counters statement, in one guard (5 inside the test's transaction:
# savepoint, read limits, SET LOCAL, restore, release).
BUDGET = 3 + 5


def test_query_budget_does_not_grow_with_tenants(platform, staff_user, client_for, django_assert_num_queries):
    tenant_stats_refresh()
    client = client_for(staff_user)
    client.get(URL)  # the token's first use stamps it and caches its principal: no auth query after
    with django_assert_num_queries(BUDGET):
        client.get(URL)
    for _ in range(5):
        tenant = TenantFactory()
        LeadOfferFactory(tenant=tenant, offer=None, status=S.PENDING_MAPPING)
    tenant_stats_refresh()
    with django_assert_num_queries(BUDGET):
        body = client.get(URL).json()
    assert body["unmapped_ads"]["pending_mapping_leads"] == 8


def test_the_read_writes_nothing(platform):
    tenant_stats_refresh()
    with CaptureQueriesContext(connection) as captured:
        stats = admin_stats_get()

    assert stats.low_credit_count == 2
    writes = [
        q["sql"]
        for q in captured.captured_queries
        if q["sql"].lstrip().upper().startswith(("INSERT", "UPDATE", "DELETE", "TRUNCATE", "CREATE", "ALTER"))
    ]
    assert writes == []
