"""GET /api/portal/leads and /api/portal/leads/{id}: shape, filters, keyset pages, PII masking, roles,
tenant isolation and query budgets (real PostgreSQL)."""

from __future__ import annotations

import datetime as dt
import re
import uuid

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import resolve
from django.utils import timezone

from converzia.models import TenantRole
from converzia.tests.factories import TenantFactory, UserFactory
from deliveries.models import DeliveryStatus
from deliveries.tests.factories import DeliveryFactory
from leads.models import ActorType, LeadEvent, LeadEventType, LeadOffer, LeadOfferStatus
from leads.privacy import mask_email, mask_phone
from leads.selectors import LEAD_OFFER_LIST_FIELDS
from leads.tests.factories import (
    LeadEventFactory,
    LeadFactory,
    LeadOfferFactory,
    LeadSourceFactory,
    OfferFactory,
)
from portal.api.leads import LeadViewSet
from portal.selectors import LeadFilters, portal_lead_offers

pytestmark = pytest.mark.django_db

LIST_URL = "/api/portal/leads"
S = LeadOfferStatus


def detail_url(lead_offer_id: object) -> str:
    return f"{LIST_URL}/{lead_offer_id}"


def iso(value: dt.datetime) -> str:
    return value.isoformat().replace("+00:00", "Z")


def ids(body: dict) -> list[str]:
    return [item["id"] for item in body["results"]]


def walk(client, url: str) -> list[str]:
    seen = []
    while url:
        response = client.get(url)
        assert response.status_code == 200, response.json()
        seen += ids(response.json())
        url = response.json()["next"]
    return seen


def touch(lead_offer: LeadOffer, when: dt.datetime) -> None:
    """Set updated_at directly (auto_now would overwrite it on save)."""
    LeadOffer.objects.filter(pk=lead_offer.pk).update(updated_at=when)


def newest_first(*lead_offers: LeadOffer) -> list[str]:
    rows = LeadOffer.objects.filter(pk__in=[lo.pk for lo in lead_offers]).order_by("-updated_at", "-id")
    return [str(pk) for pk in rows.values_list("pk", flat=True)]


@pytest.fixture
def offer(tenant):
    return OfferFactory(tenant=tenant, name="Torre Norte")


@pytest.fixture
def viewer(tenant, make_member):
    return make_member(tenant, TenantRole.VIEWER)


# --- shape ----------------------------------------------------------------------------------------


def test_list_item_has_the_api_shape(tenant, offer, owner, client_for):
    lead = LeadFactory(full_name="Ana Pérez", phone="+5491122334455", email="ana@example.com")
    source = LeadSourceFactory(
        lead=lead, tenant=tenant, ad_id="120001", form_id="f-9", campaign_id="c-3", platform="META"
    )
    lead_offer = LeadOfferFactory(
        offer=offer, lead=lead, lead_source=source, status=S.SENT_TO_DEVELOPER, score_total=87
    )
    lead_offer.refresh_from_db()

    response = client_for(owner).get(LIST_URL)

    assert response.status_code == 200
    assert response.json() == {
        "results": [
            {
                "id": str(lead_offer.pk),
                "status": "SENT_TO_DEVELOPER",
                "stage": "delivered",
                "offer": {"id": str(offer.pk), "name": "Torre Norte"},
                "lead": {"display_name": "Ana Pérez", "phone": "+5491122334455", "email": "ana@example.com"},
                "score_total": 87,
                "billing_eligibility": "PENDING",
                "source": {"platform": "META", "ad_id": "120001", "form_id": "f-9", "campaign_id": "c-3"},
                "created_at": iso(lead_offer.created_at),
                "updated_at": iso(lead_offer.updated_at),
                "status_changed_at": iso(lead_offer.status_changed_at),
            }
        ],
        "next": None,
        "previous": None,
    }


def test_unmapped_lead_has_null_offer_and_empty_source(tenant, owner, client_for):
    lead_offer = LeadOfferFactory(offer=None, tenant=tenant, status=S.PENDING_MAPPING)

    (item,) = client_for(owner).get(LIST_URL).json()["results"]

    assert item["id"] == str(lead_offer.pk)
    assert item["stage"] == "received"
    assert item["offer"] is None
    assert item["source"] == {"platform": None, "ad_id": None, "form_id": None, "campaign_id": None}


def test_list_is_newest_update_first_and_only_this_tenant(tenant, other_tenant, offer, owner, client_for):
    now = timezone.now()
    old, new, middle = (LeadOfferFactory(offer=offer) for _ in range(3))
    touch(old, now - dt.timedelta(days=2))
    touch(middle, now - dt.timedelta(days=1))
    touch(new, now)
    LeadOfferFactory(offer=OfferFactory(tenant=other_tenant))

    body = client_for(owner).get(LIST_URL).json()

    assert ids(body) == [str(new.pk), str(middle.pk), str(old.pk)]


# --- filters --------------------------------------------------------------------------------------


def test_status_filter_accepts_repeats_and_comma_lists(offer, owner, client_for):
    engaged = LeadOfferFactory(offer=offer, status=S.ENGAGED)
    scored = LeadOfferFactory(offer=offer, status=S.SCORED)
    LeadOfferFactory(offer=offer, status=S.COOLING)
    client = client_for(owner)
    expected = sorted([str(engaged.pk), str(scored.pk)])

    repeated = client.get(f"{LIST_URL}?status=ENGAGED&status=SCORED").json()
    comma = client.get(LIST_URL, {"status": "ENGAGED,SCORED"}).json()

    assert sorted(ids(repeated)) == expected
    assert sorted(ids(comma)) == expected


def test_stage_filter_uses_the_funnel_map(offer, owner, client_for):
    in_chat = [LeadOfferFactory(offer=offer, status=status) for status in (S.CONTACTED, S.HUMAN_HANDOFF)]
    LeadOfferFactory(offer=offer, status=S.TO_BE_CONTACTED)
    LeadOfferFactory(offer=offer, status=S.SENT_TO_DEVELOPER)

    body = client_for(owner).get(LIST_URL, {"stage": "in_chat"}).json()

    assert sorted(ids(body)) == sorted(str(lo.pk) for lo in in_chat)
    assert {item["stage"] for item in body["results"]} == {"in_chat"}


def test_offer_filter_and_foreign_offer_matches_nothing(tenant, other_tenant, offer, owner, client_for):
    mine = LeadOfferFactory(offer=offer)
    LeadOfferFactory(offer=OfferFactory(tenant=tenant))
    foreign_offer = OfferFactory(tenant=other_tenant)
    LeadOfferFactory(offer=foreign_offer)
    client = client_for(owner)

    assert ids(client.get(LIST_URL, {"offer_id": str(offer.pk)}).json()) == [str(mine.pk)]
    foreign = client.get(LIST_URL, {"offer_id": str(foreign_offer.pk)})
    assert foreign.status_code == 200
    assert foreign.json()["results"] == []


def test_created_dates_are_days_in_the_tenant_time_zone(tenant, offer, owner, client_for):
    assert tenant.timezone == "America/Argentina/Buenos_Aires"
    # 02:00 UTC on the 10th is 23:00 on the 9th in Buenos Aires (UTC-3).
    late_on_ninth = LeadOfferFactory(offer=offer, created_at=dt.datetime(2026, 3, 10, 2, 0, tzinfo=dt.UTC))
    # 03:00 UTC on the 10th is local midnight of the 10th.
    start_of_tenth = LeadOfferFactory(offer=offer, created_at=dt.datetime(2026, 3, 10, 3, 0, tzinfo=dt.UTC))
    client = client_for(owner)

    ninth = client.get(LIST_URL, {"created_from": "2026-03-09", "created_to": "2026-03-09"}).json()
    tenth = client.get(LIST_URL, {"created_from": "2026-03-10"}).json()
    up_to_ninth = client.get(LIST_URL, {"created_to": "2026-03-09"}).json()

    assert ids(ninth) == [str(late_on_ninth.pk)]
    assert ids(tenth) == [str(start_of_tenth.pk)]
    assert ids(up_to_ninth) == [str(late_on_ninth.pk)]


def test_created_dates_follow_each_tenants_own_zone(owner, client_for):
    tokyo = TenantFactory(timezone="Asia/Tokyo")
    member = UserFactory()
    from converzia.tests.factories import TenantMemberFactory

    TenantMemberFactory(tenant=tokyo, user=member, role=TenantRole.OWNER)
    # 16:00 UTC on the 9th is 01:00 on the 10th in Tokyo.
    lead_offer = LeadOfferFactory(
        offer=OfferFactory(tenant=tokyo), created_at=dt.datetime(2026, 3, 9, 16, 0, tzinfo=dt.UTC)
    )

    body = client_for(member).get(LIST_URL, {"created_from": "2026-03-10", "created_to": "2026-03-10"}).json()

    assert ids(body) == [str(lead_offer.pk)]


@pytest.mark.parametrize("prefilter_cap", [2_000, 0], ids=["by-lead-ids", "by-join"])
def test_q_matches_name_email_and_phone_in_any_written_form(
    prefilter_cap, offer, owner, client_for, monkeypatch
):
    # Both ways the list narrows to the matching leads: by their ids (few matches) or by a join (many).
    monkeypatch.setattr("leads.selectors.SEARCH_PREFILTER_CAP", prefilter_cap)
    ana = LeadOfferFactory(
        offer=offer, lead=LeadFactory(full_name="Ana Pérez", email="ana@corp.test", phone="+5491122334455")
    )
    LeadOfferFactory(
        offer=offer, lead=LeadFactory(full_name="Bruno Díaz", email="bruno@x.test", phone="+5491199998888")
    )
    client = client_for(owner)

    for q in (
        "pérez",
        "PÉREZ",
        "ana pé",
        "ANA@CORP",
        "+54 9 11 2233-4455",
        "011 2233-4455",
        "22334455",
    ):
        assert ids(client.get(LIST_URL, {"q": q}).json()) == [str(ana.pk)], q
    assert client.get(LIST_URL, {"q": "nobody"}).json()["results"] == []
    # LIKE's wildcards in `q` are literal characters.
    assert client.get(LIST_URL, {"q": "%"}).json()["results"] == []
    assert client.get(LIST_URL, {"q": "_"}).json()["results"] == []
    # A blank q is no filter.
    assert len(client.get(LIST_URL, {"q": "  "}).json()["results"]) == 2


def test_q_searches_only_pii_the_caller_may_see(offer, owner, viewer, client_for):
    delivered = LeadOfferFactory(
        offer=offer, status=S.SENT_TO_DEVELOPER, lead=LeadFactory(full_name="Marta Delivered")
    )
    hidden = LeadOfferFactory(offer=offer, status=S.QUALIFYING, lead=LeadFactory(full_name="Marta Hidden"))

    as_viewer = client_for(viewer).get(LIST_URL, {"q": "marta"}).json()
    as_owner = client_for(owner).get(LIST_URL, {"q": "marta"}).json()

    # A viewer cannot learn that a not-yet-delivered lead is called Marta.
    assert ids(as_viewer) == [str(delivered.pk)]
    assert sorted(ids(as_owner)) == sorted([str(delivered.pk), str(hidden.pk)])


def test_filters_combine(tenant, offer, owner, client_for):
    other_offer = OfferFactory(tenant=tenant)
    day = dt.datetime(2026, 5, 5, 15, 0, tzinfo=dt.UTC)
    match = LeadOfferFactory(
        offer=offer, status=S.SCORED, created_at=day, lead=LeadFactory(full_name="Carla Match")
    )
    # Each differs from `match` in exactly one filter.
    LeadOfferFactory(offer=offer, status=S.ENGAGED, created_at=day, lead=LeadFactory(full_name="Carla A"))
    LeadOfferFactory(
        offer=other_offer, status=S.SCORED, created_at=day, lead=LeadFactory(full_name="Carla B")
    )
    LeadOfferFactory(
        offer=offer,
        status=S.SCORED,
        created_at=day + dt.timedelta(days=3),
        lead=LeadFactory(full_name="Carla C"),
    )
    LeadOfferFactory(offer=offer, status=S.SCORED, created_at=day, lead=LeadFactory(full_name="Daniel D"))

    body = (
        client_for(owner)
        .get(
            LIST_URL,
            {
                "status": "SCORED,LEAD_READY",
                "stage": "qualified",
                "offer_id": str(offer.pk),
                "created_from": "2026-05-05",
                "created_to": "2026-05-06",
                "q": "carla",
            },
        )
        .json()
    )

    assert ids(body) == [str(match.pk)]


def test_status_and_stage_intersect(offer, owner, client_for):
    LeadOfferFactory(offer=offer, status=S.ENGAGED)

    body = client_for(owner).get(LIST_URL, {"status": "ENGAGED", "stage": "qualified"}).json()

    assert body["results"] == []


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"status": "NOPE"}, "status"),
        ({"status": "ENGAGED,NOPE"}, "status"),
        ({"stage": "won"}, "stage"),
        ({"offer_id": "not-a-uuid"}, "offer_id"),
        ({"created_from": "2026-13-01"}, "created_from"),
        ({"created_to": "yesterday"}, "created_to"),
        ({"created_from": "2026-03-10", "created_to": "2026-03-09"}, "created_to"),
        ({"q": "x" * 201}, "q"),
        ({"page_size": "0"}, "page_size"),
        ({"cursor": "garbage"}, "cursor"),
    ],
)
def test_bad_filter_values_are_400_with_details(owner, client_for, params, field):
    response = client_for(owner).get(LIST_URL, params)

    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "invalid_input"
    assert field in error["details"]


def test_unknown_query_parameters_are_400(owner, client_for, tenant, offer):
    lead_offer = LeadOfferFactory(offer=offer)
    client = client_for(owner)

    listed = client.get(LIST_URL, {"statuses": "ENGAGED", "limit": "5"})
    detail = client.get(detail_url(lead_offer.pk), {"status": "ENGAGED"})

    assert listed.status_code == detail.status_code == 400
    assert listed.json()["error"]["code"] == "invalid_input"
    assert sorted(listed.json()["error"]["details"]) == ["limit", "statuses"]
    assert list(detail.json()["error"]["details"]) == ["status"]


# --- keyset pagination ----------------------------------------------------------------------------


def test_pages_list_every_row_once_in_order_with_ties(offer, owner, client_for):
    now = timezone.now()
    rows = [LeadOfferFactory(offer=offer) for _ in range(9)]
    # Three groups of three rows sharing one updated_at: only the id orders them within a group.
    for index, row in enumerate(rows):
        touch(row, now - dt.timedelta(minutes=index // 3))
    client = client_for(owner)

    seen = walk(client, f"{LIST_URL}?page_size=2")

    assert seen == newest_first(*rows)
    assert len(set(seen)) == 9


def test_previous_links_walk_back_over_the_same_rows(offer, owner, client_for):
    now = timezone.now()
    rows = [LeadOfferFactory(offer=offer) for _ in range(5)]
    for row in rows:
        touch(row, now)  # all tied
    client = client_for(owner)
    url, pages = f"{LIST_URL}?page_size=2", []
    while url:
        pages.append(client.get(url).json())
        url = pages[-1]["next"]

    back = client.get(pages[-1]["previous"]).json()

    assert ids(back) == ids(pages[-2])


def test_rows_inserted_between_page_fetches_never_duplicate_or_skip_old_rows(offer, owner, client_for):
    now = timezone.now()
    old = [LeadOfferFactory(offer=offer) for _ in range(6)]
    for index, row in enumerate(old):
        touch(row, now - dt.timedelta(minutes=10 + index // 2))
    client = client_for(owner)

    first = client.get(LIST_URL, {"page_size": 2}).json()
    seen = ids(first)
    url = first["next"]
    new = []
    while url:
        # Fresh activity lands between fetches (new leads and an old lead updated: both move to the front).
        new.append(LeadOfferFactory(offer=offer))
        page = client.get(url).json()
        seen += ids(page)
        url = page["next"]

    assert seen == newest_first(*old)
    restart = client.get(LIST_URL, {"page_size": 2 + len(new)}).json()
    assert set(ids(restart)[: len(new)]) == {str(lo.pk) for lo in new}


# --- PII masking ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("who", "status", "visible"),
    [
        (TenantRole.OWNER, S.QUALIFYING, True),
        (TenantRole.ADMIN, S.QUALIFYING, True),
        (TenantRole.VIEWER, S.QUALIFYING, False),
        (TenantRole.VIEWER, S.LEAD_READY, False),
        (TenantRole.VIEWER, S.SENT_TO_DEVELOPER, True),
        (TenantRole.OWNER, S.SENT_TO_DEVELOPER, True),
        ("staff", S.QUALIFYING, True),
    ],
)
def test_pii_visibility_by_role_and_status(
    tenant, offer, make_member, staff_user, client_for, who, status, visible
):
    user = staff_user if who == "staff" else make_member(tenant, who)
    lead = LeadFactory(full_name="Ana Pérez", phone="+5491122334455", email="ana@example.com")
    lead_offer = LeadOfferFactory(
        offer=offer, lead=lead, status=status, qualification_fields={"name": "Ana Pérez", "zone": ["Centro"]}
    )
    client = client_for(user, tenant=tenant)

    (listed,) = client.get(LIST_URL).json()["results"]
    detail = client.get(detail_url(lead_offer.pk)).json()

    if visible:
        expected = {"display_name": "Ana Pérez", "phone": "+5491122334455", "email": "ana@example.com"}
        expected_name = "Ana Pérez"
    else:
        expected = {
            "display_name": f"Lead #{str(lead_offer.pk)[:8]}",
            "phone": "+54911******55",
            "email": "a***@example.com",
        }
        expected_name = f"Lead #{str(lead_offer.pk)[:8]}"
    assert listed["lead"] == expected
    assert detail["lead"] == expected
    assert detail["qualification_fields"] == {"name": expected_name, "zone": ["Centro"]}


def test_masking_helpers():
    assert mask_phone("+5491122334455") == "+54911******55"
    assert mask_phone("12345") == "***45"
    assert mask_phone("") is None
    assert mask_email("ana.perez@example.com") == "a***@example.com"
    assert mask_email("broken") == "***"
    assert mask_email(None) is None


# --- detail ---------------------------------------------------------------------------------------


def test_detail_has_fields_delivery_and_timeline(tenant, offer, owner, client_for):
    lead_offer = LeadOfferFactory(
        offer=offer,
        status=S.SENT_TO_DEVELOPER,
        score_total=90,
        score_breakdown={"budget": 30, "zone": 20},
        qualification_fields={"name": "Ana", "budget": {"min": 1, "max": 2, "currency": "USD"}},
    )
    delivered_at = timezone.now()
    DeliveryFactory(
        lead_offer=lead_offer, status=DeliveryStatus.DELIVERED, delivered_at=delivered_at, attempt_count=2
    )
    base = timezone.now() - dt.timedelta(hours=1)
    for minutes, event_type in ((2, LeadEventType.STATUS_CHANGE), (0, LeadEventType.CREATED)):
        LeadEventFactory(
            lead_offer=lead_offer,
            event_type=event_type,
            created_at=base + dt.timedelta(minutes=minutes),
            details={"from": "LEAD_READY", "to": "SENT_TO_DEVELOPER"} if minutes else {},
        )

    response = client_for(owner).get(detail_url(lead_offer.pk))

    assert response.status_code == 200
    body = response.json()
    assert body["id"] == str(lead_offer.pk)
    assert body["stage"] == "delivered"
    assert body["score_total"] == 90
    assert body["score_breakdown"] == {"budget": 30, "zone": 20}
    assert body["qualification_fields"] == {"name": "Ana", "budget": {"min": 1, "max": 2, "currency": "USD"}}
    assert body["delivery"] == {
        "status": "DELIVERED",
        "attempts": 2,
        "delivered_at": iso(delivered_at),
        "blocked_reason": None,
    }
    assert body["timeline"] == [
        {
            "event_type": "CREATED",
            "created_at": iso(base),
            "actor_type": "SYSTEM",
            "details": {},
        },
        {
            "event_type": "STATUS_CHANGE",
            "created_at": iso(base + dt.timedelta(minutes=2)),
            "actor_type": "SYSTEM",
            "details": {"from": "LEAD_READY", "to": "SENT_TO_DEVELOPER"},
        },
    ]


def test_detail_without_delivery_and_pii_stripped_from_event_details(offer, viewer, client_for):
    lead_offer = LeadOfferFactory(offer=offer, status=S.QUALIFYING)
    LeadEventFactory(
        lead_offer=lead_offer,
        event_type=LeadEventType.FIELD_UPDATED,
        actor_type=ActorType.BOT,
        details={"field": "name", "value": {"name": "Ana", "phone": "+5491122334455", "dni": "30111222"}},
    )

    body = client_for(viewer).get(detail_url(lead_offer.pk)).json()

    assert body["delivery"] is None
    (event,) = body["timeline"]
    assert event["actor_type"] == "BOT"
    assert event["details"] == {
        "field": "name",
        "value": {"name": f"Lead #{str(lead_offer.pk)[:8]}", "phone": "+54911******55"},
    }


def test_timeline_is_capped_at_the_latest_200_events(offer, owner, client_for):
    lead_offer = LeadOfferFactory(offer=offer)
    base = timezone.now() - dt.timedelta(days=1)
    LeadEvent.objects.bulk_create(
        LeadEvent(
            lead=lead_offer.lead,
            lead_offer=lead_offer,
            tenant=lead_offer.tenant,
            event_type=LeadEventType.MESSAGE_SENT,
            details={"n": n},
            created_at=base + dt.timedelta(seconds=n),
        )
        for n in range(205)
    )

    timeline = client_for(owner).get(detail_url(lead_offer.pk)).json()["timeline"]

    assert [event["details"]["n"] for event in timeline] == list(range(5, 205))


def test_foreign_lead_offer_answers_exactly_like_a_missing_one(other_tenant, owner, client_for):
    foreign = LeadOfferFactory(offer=OfferFactory(tenant=other_tenant))
    LeadEventFactory(lead_offer=foreign)
    client = client_for(owner)

    foreign_response = client.get(detail_url(foreign.pk))
    missing_response = client.get(detail_url(uuid.uuid4()))

    assert foreign_response.status_code == missing_response.status_code == 404
    foreign_error = foreign_response.json()["error"]
    missing_error = missing_response.json()["error"]
    assert foreign_error["code"] == missing_error["code"] == "not_found"
    assert foreign_error["message"] == missing_error["message"]
    assert foreign_error["details"] == missing_error["details"]


def test_stats_path_is_not_taken_by_the_detail_route():
    stats = resolve("/api/portal/leads/stats").func

    assert getattr(stats, "cls", None) is not LeadViewSet
    assert resolve(detail_url(uuid.uuid4())).func.cls is LeadViewSet


# --- roles ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("role", [TenantRole.OWNER, TenantRole.ADMIN, TenantRole.VIEWER])
def test_roles_with_view_leads_may_read(tenant, offer, make_member, client_for, role):
    lead_offer = LeadOfferFactory(offer=offer)
    client = client_for(make_member(tenant, role))

    assert client.get(LIST_URL).status_code == 200
    assert client.get(detail_url(lead_offer.pk)).status_code == 200


def test_billing_role_is_forbidden(tenant, offer, make_member, client_for):
    lead_offer = LeadOfferFactory(offer=offer)
    client = client_for(make_member(tenant, TenantRole.BILLING))

    for url in (LIST_URL, detail_url(lead_offer.pk)):
        response = client.get(url)
        assert response.status_code == 403
        assert response.json()["error"]["code"] == "forbidden"


def test_non_member_gets_not_a_member(tenant, offer, other_tenant, make_member, client_for):
    lead_offer = LeadOfferFactory(offer=offer)
    outsider = make_member(other_tenant, TenantRole.OWNER)
    client = client_for(outsider, tenant=tenant)

    for url in (LIST_URL, detail_url(lead_offer.pk)):
        response = client.get(url)
        assert response.status_code == 403
        assert response.json()["error"]["code"] == "not_a_member"


def test_anonymous_gets_401(api_client, offer):
    lead_offer = LeadOfferFactory(offer=offer)

    for url in (LIST_URL, detail_url(lead_offer.pk)):
        response = api_client.get(url)
        assert response.status_code == 401
        assert response.json()["error"]["code"] == "unauthenticated"


# --- query budgets --------------------------------------------------------------------------------

# Guard bookkeeping inside the test's transaction: SAVEPOINT, read and set the limits, restore them,
# RELEASE (in production, outside a transaction, only the set_config runs). Data queries are the rest.
GUARD_SQL = ("SAVEPOINT", "RELEASE SAVEPOINT", "SELECT current_setting", "SELECT set_config")


def data_queries(captured) -> list[str]:
    return [query["sql"] for query in captured if not query["sql"].startswith(GUARD_SQL)]


def make_rows(tenant, offer, count: int) -> None:
    for index in range(count):
        lead_offer = LeadOfferFactory(
            offer=offer if index % 3 else None,
            tenant=tenant,
            status=S.SENT_TO_DEVELOPER if index % 2 else S.ENGAGED,
            lead_source=LeadSourceFactory(tenant=tenant),
        )
        if index % 2:
            DeliveryFactory(lead_offer=lead_offer, delivered=True)


@pytest.mark.parametrize("rows", [2, 30])
def test_list_query_budget_does_not_grow_with_the_page(tenant, offer, owner, client_for, rows):
    make_rows(tenant, offer, rows)
    client = client_for(owner)
    # The token's last_used_at write happens once a minute, not here; its principal is cached from here
    # on (converzia.principal), so authentication and tenant resolution cost no query.
    client.get(LIST_URL)

    with CaptureQueriesContext(connection) as captured:
        response = client.get(LIST_URL, {"page_size": 50, "q": "a", "status": "ENGAGED,SENT_TO_DEVELOPER"})

    assert response.status_code == 200
    # The leads matching `q` (capped, from the trigram index), the page (lead, offer and source joined
    # in): no COUNT, no N+1, whatever the rows.
    queries = data_queries(captured.captured_queries)
    assert len(queries) == 2, queries
    assert "lead_search_text" in queries[0]
    page_sql = queries[-1]
    assert "COUNT(" not in page_sql.upper()
    assert "OFFSET" not in page_sql.upper()
    # The order of idx_lead_offers_tenant[_status]_updated, so the page is an index range scan.
    updated_at, pk = (LEAD_OFFER_LIST_FIELDS.index(name) + 1 for name in ("updated_at", "id"))
    assert page_sql.endswith(f"ORDER BY {updated_at} DESC, {pk} DESC LIMIT 51")
    assert len(captured.captured_queries) == 7  # + SAVEPOINT, 2× limits, set_config, RELEASE


def test_detail_query_budget(tenant, offer, owner, client_for):
    lead_offer = LeadOfferFactory(offer=offer, lead_source=LeadSourceFactory(tenant=tenant))
    DeliveryFactory(lead_offer=lead_offer)
    for _ in range(5):
        LeadEventFactory(lead_offer=lead_offer)
    client = client_for(owner)
    client.get(detail_url(lead_offer.pk))

    with CaptureQueriesContext(connection) as captured:
        response = client.get(detail_url(lead_offer.pk))

    assert response.status_code == 200
    # The lead_offer (lead, offer, source, delivery joined), events; the principal is cached.
    assert len(data_queries(captured.captured_queries)) == 2, captured.captured_queries
    assert len(captured.captured_queries) == 7


@pytest.mark.parametrize("filters", [LeadFilters(), LeadFilters(statuses=["ENGAGED"])])
def test_list_page_walks_a_lead_list_index_without_sorting(tenant, offer, filters):
    make_rows(tenant, offer, 4)
    page = portal_lead_offers(tenant=tenant, filters=filters, can_view_details=True).order_by(
        "-updated_at", "-id"
    )[:51]

    with connection.cursor() as cursor:
        # A handful of rows would be seq-scanned; what matters is that an index serves the order
        # (which of the two lead-list indexes is the planner's call on a tiny table).
        cursor.execute("SET LOCAL enable_seqscan = off")
        # Nor may it sort: the plan must take its order from an index (the one this test is about).
        cursor.execute("SET LOCAL enable_sort = off")
    plan = page.explain()

    assert re.search(r"Index Scan using idx_lead_offers_tenant(_status)?_updated on lead_offers", plan), plan
    # The joins are per-row primary-key lookups under the LIMIT, and nothing sorts the table.
    assert "Sort" not in plan, plan
