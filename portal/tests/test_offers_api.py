"""GET /api/portal/offers and /api/portal/offers/{id}: scoping, roles, funnel counts, keyset pages."""

from __future__ import annotations

import datetime as dt
import uuid
from decimal import Decimal

import pytest
from django.utils import timezone

from converzia.models import MembershipStatus, TenantRole
from converzia.tests.factories import TenantMemberFactory
from leads.models import LeadOfferStatus, OfferStatus
from leads.tests.factories import LeadOfferFactory, OfferFactory

pytestmark = pytest.mark.django_db

LIST_URL = "/api/portal/offers"


def detail_url(offer_id: object) -> str:
    return f"/api/portal/offers/{offer_id}"


def walk(client, url: str, direction: str = "next") -> list[dict]:
    """Follow `next` (or `previous`) links from `url`; returns the pages' bodies in visiting order."""
    pages = []
    while url:
        response = client.get(url)
        assert response.status_code == 200, response.json()
        pages.append(response.json())
        url = response.json()[direction]
    return pages


# --- shape and funnel counts -----------------------------------------------------------------------


def test_list_returns_offer_items_with_funnel_counts(tenant, owner, client_for):
    offer = OfferFactory(
        tenant=tenant,
        name="Torre Norte",
        slug="torre-norte",
        city="Córdoba",
        zone="Nueva Córdoba",
        price_from=Decimal("85000.00"),
        price_to=Decimal("120000.00"),
    )
    for status in (
        LeadOfferStatus.TO_BE_CONTACTED,
        LeadOfferStatus.PENDING_MAPPING,
        LeadOfferStatus.ENGAGED,
        LeadOfferStatus.LEAD_READY,
        LeadOfferStatus.SENT_TO_DEVELOPER,
        LeadOfferStatus.SENT_TO_DEVELOPER,
        LeadOfferStatus.DISQUALIFIED,
        LeadOfferStatus.COOLING,
    ):
        LeadOfferFactory(offer=offer, status=status)

    response = client_for(owner).get(LIST_URL)

    assert response.status_code == 200
    body = response.json()
    assert body["next"] is None
    assert body["previous"] is None
    assert body["results"] == [
        {
            "id": str(offer.pk),
            "name": "Torre Norte",
            "slug": "torre-norte",
            "status": "ACTIVE",
            "approval_status": "APPROVED",
            "offer_type": "PROPERTY",
            "city": "Córdoba",
            "zone": "Nueva Córdoba",
            "price_from": "85000.00",
            "price_to": "120000.00",
            "currency": "USD",
            "created_at": offer.created_at.isoformat().replace("+00:00", "Z"),
            "funnel": {
                "total": 8,
                "stages": {"received": 2, "in_chat": 1, "qualified": 1, "delivered": 2, "not_qualified": 2},
                "conversion_rate": 25.0,
            },
        }
    ]


def test_offer_without_leads_has_zero_funnel(tenant, owner, client_for):
    offer = OfferFactory(tenant=tenant)

    response = client_for(owner).get(detail_url(offer.pk))

    assert response.status_code == 200
    assert response.json()["funnel"] == {
        "total": 0,
        "stages": {"received": 0, "in_chat": 0, "qualified": 0, "delivered": 0, "not_qualified": 0},
        "conversion_rate": 0.0,
    }


def test_funnel_counts_only_the_tenants_lead_offers(tenant, other_tenant, owner, client_for):
    offer = OfferFactory(tenant=tenant)
    LeadOfferFactory(offer=offer, status=LeadOfferStatus.SENT_TO_DEVELOPER)
    # A row pointing at this offer but owned by another tenant must never be counted here.
    LeadOfferFactory(offer=offer, tenant=other_tenant, status=LeadOfferStatus.SENT_TO_DEVELOPER)

    body = client_for(owner).get(detail_url(offer.pk)).json()

    assert body["funnel"]["total"] == 1
    assert body["funnel"]["stages"]["delivered"] == 1
    assert sum(body["funnel"]["stages"].values()) == body["funnel"]["total"]


def test_detail_returns_one_offer(tenant, owner, client_for):
    offer = OfferFactory(tenant=tenant, name="Solo")
    LeadOfferFactory(offer=offer, status=LeadOfferStatus.SCORED)

    response = client_for(owner).get(detail_url(offer.pk))

    assert response.status_code == 200
    assert response.json()["id"] == str(offer.pk)
    assert response.json()["name"] == "Solo"
    assert response.json()["funnel"]["stages"]["qualified"] == 1


def test_list_shows_only_the_tenants_offers(tenant, other_tenant, owner, client_for):
    mine = OfferFactory(tenant=tenant)
    OfferFactory(tenant=other_tenant)

    body = client_for(owner).get(LIST_URL).json()

    assert [item["id"] for item in body["results"]] == [str(mine.pk)]


# --- 404: missing and foreign are indistinguishable ------------------------------------------------


def test_foreign_offer_answers_exactly_like_a_missing_one(tenant, other_tenant, owner, client_for):
    foreign = OfferFactory(tenant=other_tenant)
    client = client_for(owner)

    foreign_response = client.get(detail_url(foreign.pk))
    missing_response = client.get(detail_url(uuid.uuid4()))

    assert foreign_response.status_code == missing_response.status_code == 404
    foreign_error = foreign_response.json()["error"]
    missing_error = missing_response.json()["error"]
    assert foreign_error.pop("request_id") != missing_error.pop("request_id")
    assert foreign_error == missing_error == {"code": "not_found", "message": "Not found.", "details": {}}


def test_non_uuid_offer_id_is_not_found(owner, client_for):
    response = client_for(owner).get(detail_url("not-a-uuid"))

    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"


# --- roles ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("_case", "role", "expected_status"),
    [
        ("_case_owner", TenantRole.OWNER, 200),
        ("_case_admin", TenantRole.ADMIN, 200),
        ("_case_billing", TenantRole.BILLING, 403),
        ("_case_viewer", TenantRole.VIEWER, 200),
    ],
)
@pytest.mark.parametrize("detail", [False, True], ids=["list", "detail"])
def test_role_matrix(_case, role, expected_status, detail, tenant, make_member, client_for):
    offer = OfferFactory(tenant=tenant)
    user = make_member(tenant, role)

    response = client_for(user).get(detail_url(offer.pk) if detail else LIST_URL)

    assert response.status_code == expected_status
    if expected_status == 403:
        assert response.json()["error"]["code"] == "forbidden"
        assert response.json()["error"]["details"] == {"required_permission": "view_leads"}


def test_staff_reads_any_tenants_offers(tenant, staff_user, client_for):
    offer = OfferFactory(tenant=tenant)

    list_response = client_for(staff_user, tenant).get(LIST_URL)
    detail_response = client_for(staff_user, tenant).get(detail_url(offer.pk))

    assert list_response.status_code == 200
    assert [item["id"] for item in list_response.json()["results"]] == [str(offer.pk)]
    assert detail_response.status_code == 200


def test_staff_without_tenant_header_gets_tenant_required(staff_user, client_for):
    response = client_for(staff_user).get(LIST_URL)

    assert response.status_code == 400
    assert response.json()["error"]["code"] == "tenant_required"


def test_member_cannot_read_another_tenant_by_naming_it(tenant, other_tenant, owner, client_for):
    OfferFactory(tenant=other_tenant)

    response = client_for(owner, other_tenant).get(LIST_URL)

    assert response.status_code == 403
    assert response.json()["error"]["code"] == "not_a_member"


@pytest.mark.parametrize("status", [MembershipStatus.PENDING_APPROVAL, MembershipStatus.SUSPENDED])
def test_inactive_membership_is_not_a_member(status, tenant, client_for):
    OfferFactory(tenant=tenant)
    user = TenantMemberFactory(tenant=tenant, status=status).user

    response = client_for(user, tenant).get(LIST_URL)

    assert response.status_code == 403
    assert response.json()["error"]["code"] == "not_a_member"


# --- filters and query parameters -------------------------------------------------------------------


def test_status_filter(tenant, owner, client_for):
    active = OfferFactory(tenant=tenant, status=OfferStatus.ACTIVE)
    paused = OfferFactory(tenant=tenant, status=OfferStatus.PAUSED)
    OfferFactory(tenant=tenant, status=OfferStatus.DRAFT)
    client = client_for(owner)

    only_active = client.get(LIST_URL, {"status": "ACTIVE"}).json()["results"]
    comma_list = client.get(LIST_URL, {"status": "ACTIVE,PAUSED"}).json()["results"]
    repeated = client.get(f"{LIST_URL}?status=PAUSED&status=ACTIVE").json()["results"]

    assert [item["id"] for item in only_active] == [str(active.pk)]
    assert {item["id"] for item in comma_list} == {str(active.pk), str(paused.pk)}
    assert {item["id"] for item in repeated} == {str(active.pk), str(paused.pk)}


def test_invalid_status_filter_is_invalid_input(owner, client_for):
    response = client_for(owner).get(LIST_URL, {"status": "LIVE"})

    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "invalid_input"
    assert list(error["details"]) == ["status"]


def test_unknown_query_parameter_is_rejected(owner, client_for):
    response = client_for(owner).get(LIST_URL, {"sort": "name", "stauts": "ACTIVE"})

    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "invalid_input"
    assert error["details"] == {"sort": ["Unknown query parameter."], "stauts": ["Unknown query parameter."]}
    assert error["message"] == (
        "Unknown query parameter(s): sort, stauts. Accepted here: cursor, page_size, status."
    )


def test_detail_accepts_no_list_parameters(tenant, owner, client_for):
    offer = OfferFactory(tenant=tenant)

    response = client_for(owner).get(detail_url(offer.pk), {"page_size": "5"})

    assert response.status_code == 400
    assert response.json()["error"]["details"] == {"page_size": ["Unknown query parameter."]}


# --- keyset pagination ------------------------------------------------------------------------------


def make_offers_with_ties(tenant) -> list:
    """11 offers: three groups sharing a created_at (ties broken by id), plus two singles."""
    base = timezone.now().replace(microsecond=0) - dt.timedelta(days=1)
    moments = [base] * 4 + [base - dt.timedelta(seconds=1)] + [base - dt.timedelta(seconds=2)] * 3
    moments += [base - dt.timedelta(seconds=3)] + [base + dt.timedelta(seconds=1)] * 2
    return [OfferFactory(tenant=tenant, created_at=moment) for moment in moments]


def expected_order(offers) -> list[str]:
    return [str(o.pk) for o in sorted(offers, key=lambda o: (o.created_at, o.pk), reverse=True)]


def test_pages_list_every_row_exactly_once_in_order_despite_ties(tenant, owner, client_for):
    offers = make_offers_with_ties(tenant)

    pages = walk(client_for(owner), f"{LIST_URL}?page_size=3")

    assert [len(page["results"]) for page in pages] == [3, 3, 3, 2]
    listed = [item["id"] for page in pages for item in page["results"]]
    assert listed == expected_order(offers)
    assert pages[0]["previous"] is None
    assert all(page["previous"] is not None for page in pages[1:])
    assert "page_size=3" in pages[0]["next"]


def test_previous_links_walk_back_through_the_same_pages(tenant, owner, client_for):
    make_offers_with_ties(tenant)
    client = client_for(owner)
    forward = walk(client, f"{LIST_URL}?page_size=3")

    backward = walk(client, forward[-1]["previous"], direction="previous")

    forward_ids = [[item["id"] for item in page["results"]] for page in forward]
    backward_ids = [[item["id"] for item in page["results"]] for page in backward]
    assert backward_ids == list(reversed(forward_ids[:-1]))
    # The first page reached backwards has no previous; its next leads forward again.
    assert backward[-1]["previous"] is None
    assert client.get(backward[-1]["next"]).json()["results"] == forward[1]["results"]


def test_filters_apply_on_every_page(tenant, owner, client_for):
    paused = [OfferFactory(tenant=tenant, status=OfferStatus.PAUSED) for _ in range(5)]
    for _ in range(4):
        OfferFactory(tenant=tenant, status=OfferStatus.ACTIVE)

    pages = walk(client_for(owner), f"{LIST_URL}?status=PAUSED&page_size=2")

    listed = [item["id"] for page in pages for item in page["results"]]
    assert listed == expected_order(paused)


@pytest.mark.parametrize("page_size", ["0", "201", "-1", "abc", ""])
def test_invalid_page_size_is_invalid_input(page_size, owner, client_for):
    response = client_for(owner).get(LIST_URL, {"page_size": page_size})

    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_input"
    assert response.json()["error"]["details"] == {"page_size": ["Must be a whole number from 1 to 200."]}


def test_page_size_bounds_are_accepted(tenant, owner, client_for):
    OfferFactory(tenant=tenant)
    client = client_for(owner)

    assert client.get(LIST_URL, {"page_size": "1"}).status_code == 200
    assert client.get(LIST_URL, {"page_size": "200"}).status_code == 200


def test_default_page_size_is_50(tenant, owner, client_for):
    OfferFactory.create_batch(51, tenant=tenant)

    body = client_for(owner).get(LIST_URL).json()

    assert len(body["results"]) == 50
    assert body["next"] is not None


@pytest.mark.parametrize(
    "cursor",
    ["garbage", "eyJiIjowLCJ2IjpbXX0", "eyJiIjowLCJ2IjpbXX0.AAAA", ""],
    ids=["garbage", "unsigned", "bad-signature", "empty"],
)
def test_invalid_cursor_is_invalid_input(cursor, owner, client_for):
    response = client_for(owner).get(LIST_URL, {"cursor": cursor})

    assert response.status_code == 400
    assert response.json()["error"]["details"] == {"cursor": ["Invalid cursor."]}


def test_tampered_cursor_is_invalid_input(tenant, owner, client_for):
    OfferFactory.create_batch(3, tenant=tenant)
    client = client_for(owner)
    next_url = client.get(LIST_URL, {"page_size": 1}).json()["next"]
    cursor = next_url.split("cursor=")[1].split("&")[0]
    payload, signature = cursor.split(".")
    # Flip one character of the payload: still base64, no longer what was signed.
    tampered = ("B" if payload[0] != "B" else "C") + payload[1:] + "." + signature

    response = client.get(LIST_URL, {"cursor": tampered, "page_size": 1})

    assert response.status_code == 400
    assert response.json()["error"]["details"] == {"cursor": ["Invalid cursor."]}


# --- query budget -----------------------------------------------------------------------------------


@pytest.mark.parametrize("offer_count", [1, 30])
def test_list_query_count_does_not_grow_with_offers(
    offer_count, tenant, owner, client_for, django_assert_num_queries
):
    for offer in OfferFactory.create_batch(offer_count, tenant=tenant):
        LeadOfferFactory(offer=offer, status=LeadOfferStatus.SENT_TO_DEVELOPER)
    client = client_for(owner)
    # The first use of the token records last_used_at (one UPDATE, once a minute) and caches its
    # principal, and fills the tenant's funnel cache, which the offers' counts come from
    # (portal.stats.offers_with_funnels).
    client.get(LIST_URL)

    # The page of offers; the counts from the cached funnel, token and membership from the cached
    # principal.
    with django_assert_num_queries(1):
        response = client.get(LIST_URL, {"page_size": 25})

    assert response.status_code == 200
    assert len(response.json()["results"]) == min(offer_count, 25)


def test_deep_page_costs_the_same_queries(tenant, owner, client_for, django_assert_num_queries):
    OfferFactory.create_batch(12, tenant=tenant)
    client = client_for(owner)
    pages = walk(client, f"{LIST_URL}?page_size=3")

    with django_assert_num_queries(1):  # the funnel counts and the principal are cached by the walk
        response = client.get(pages[-1]["previous"])

    assert response.status_code == 200


def test_detail_query_count(tenant, owner, client_for, django_assert_num_queries):
    offer = OfferFactory(tenant=tenant)
    LeadOfferFactory.create_batch(3, offer=offer)
    client = client_for(owner)
    client.get(detail_url(offer.pk))

    with django_assert_num_queries(1):  # the offer; counts and principal cached
        response = client.get(detail_url(offer.pk))

    assert response.status_code == 200
