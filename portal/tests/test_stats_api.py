"""GET /api/portal/leads/stats and GET /api/portal/funnel: body, caching (server and HTTP), roles."""

from __future__ import annotations

import datetime as dt
import uuid

import orjson
import pytest

from billing.services import credit_bonus_grant
from converzia.models import TenantRole
from deliveries.models import Delivery
from deliveries.services import SendRecord, delivery_complete, lead_offer_qualify
from leads.funnel import STAGE_KEYS
from leads.models import DisqualificationCategory, LeadOfferStatus
from leads.services import lead_offer_transition
from leads.tests.factories import LeadOfferFactory, OfferFactory
from portal.api.stats import FunnelViewSet, LeadStatsViewSet
from portal.stats import funnel_compute, lead_stats_compute
from portal.stats_view import tenant_stats_refresh

pytestmark = pytest.mark.django_db

S = LeadOfferStatus
STATS_URL = "/api/portal/leads/stats"
FUNNEL_URL = "/api/portal/funnel"
STATS_KEYS = {
    "tenant_id",
    "as_of",
    "cached",
    "total",
    "stages",
    "statuses",
    "disqualification",
    "conversion_rate",
    "leads_today",
    "leads_7d",
    "leads_30d",
    "delivered_today",
    "delivered_7d",
    "delivered_30d",
    "credit_balance",
    "active_offers",
    "trend",
}


@pytest.fixture
def leads(tenant):
    """Two offers, an unmapped lead and a spread of statuses."""
    tower = OfferFactory(tenant=tenant, name="Torre")
    park = OfferFactory(tenant=tenant, name="Parque")
    for status in (S.TO_BE_CONTACTED, S.CONTACTED, S.SCORED, S.SENT_TO_DEVELOPER):
        LeadOfferFactory(offer=tower, status=status)
    for status in (S.ENGAGED, S.DISQUALIFIED, S.COOLING):
        LeadOfferFactory(offer=park, status=status, disqualification_category="WRONG_ZONE")
    unmapped = LeadOfferFactory(tenant=tenant, offer=None, status=S.PENDING_MAPPING)
    return {"tower": tower, "park": park, "unmapped": unmapped}


def without_volatile(body: dict) -> dict:
    return {key: value for key, value in body.items() if key not in {"as_of", "cached"}}


# --- leads/stats body -------------------------------------------------------------------------------


def test_stats_body_is_exactly_the_contract(leads, tenant, owner, client_for):
    response = client_for(owner).get(STATS_URL)

    assert response.status_code == 200
    body = response.json()
    assert set(body) == STATS_KEYS
    assert body["tenant_id"] == str(tenant.pk)
    assert body["cached"] is False
    assert dt.datetime.fromisoformat(body["as_of"]).tzinfo is not None
    assert body["total"] == 8
    assert body["stages"] == {"received": 2, "in_chat": 2, "qualified": 1, "delivered": 1, "not_qualified": 2}
    assert sum(body["stages"].values()) == body["total"]
    assert list(body["statuses"]) == list(S.values)
    assert body["statuses"]["PENDING_MAPPING"] == 1
    assert list(body["disqualification"]) == list(DisqualificationCategory.values)
    assert body["disqualification"]["WRONG_ZONE"] == 1  # the DISQUALIFIED row, not ENGAGED or COOLING
    assert body["conversion_rate"] == 12.5
    assert (body["leads_today"], body["leads_7d"], body["leads_30d"]) == (8, 8, 8)
    assert (body["delivered_today"], body["delivered_7d"], body["delivered_30d"]) == (0, 0, 0)
    assert body["credit_balance"] == 0
    assert body["active_offers"] == 2
    assert len(body["trend"]) == 30
    assert set(body["trend"][0]) == {"date", "received", "delivered"}


def test_stats_numbers_are_the_selectors(leads, tenant, owner, client_for):
    body = client_for(owner).get(STATS_URL, {"days": 7}).json()

    expected = lead_stats_compute(tenant=tenant, days=7)
    assert without_volatile(body) == {"tenant_id": str(tenant.pk), **expected}
    assert len(body["trend"]) == 7


def test_second_call_is_cached_with_the_same_numbers(leads, owner, client_for):
    client = client_for(owner)

    first = client.get(STATS_URL).json()
    second = client.get(STATS_URL).json()

    assert (first["cached"], second["cached"]) == (False, True)
    assert second["as_of"] == first["as_of"]
    assert without_volatile(second) == without_volatile(first)


def test_days_is_part_of_the_cache_key(leads, owner, client_for):
    client = client_for(owner)
    client.get(STATS_URL, {"days": 30})

    other = client.get(STATS_URL, {"days": 10}).json()

    assert other["cached"] is False
    assert len(other["trend"]) == 10


def test_a_lead_transition_invalidates_stats_and_funnel(
    leads, owner, client_for, django_capture_on_commit_callbacks
):
    client = client_for(owner)
    before_stats = client.get(STATS_URL).json()
    before_funnel = client.get(FUNNEL_URL).json()
    assert client.get(STATS_URL).json()["cached"] is True

    with django_capture_on_commit_callbacks(execute=True):
        lead_offer_transition(lead_offer=leads["unmapped"], to_status=S.TO_BE_CONTACTED)

    stats = client.get(STATS_URL).json()
    funnel = client.get(FUNNEL_URL).json()
    assert (stats["cached"], funnel["cached"]) == (False, False)
    assert stats["statuses"]["PENDING_MAPPING"] == before_stats["statuses"]["PENDING_MAPPING"] - 1 == 0
    assert stats["statuses"]["TO_BE_CONTACTED"] == before_stats["statuses"]["TO_BE_CONTACTED"] + 1
    assert stats["total"] == before_stats["total"]

    with django_capture_on_commit_callbacks(execute=True):
        lead_offer_transition(lead_offer=leads["unmapped"], to_status=S.CONTACTED)

    stats = client.get(STATS_URL).json()
    funnel = client.get(FUNNEL_URL).json()
    assert stats["stages"]["in_chat"] == before_stats["stages"]["in_chat"] + 1
    assert stats["stages"]["received"] == before_stats["stages"]["received"] - 1
    counts = {stage["key"]: stage["count"] for stage in funnel["stages"]}
    before_counts = {stage["key"]: stage["count"] for stage in before_funnel["stages"]}
    assert counts["in_chat"] == before_counts["in_chat"] + 1
    assert counts == stats["stages"]


# --- funnel body ------------------------------------------------------------------------------------


def test_funnel_body_and_totals_agree_with_stats(leads, tenant, owner, client_for):
    client = client_for(owner)

    funnel = client.get(FUNNEL_URL).json()
    stats = client.get(STATS_URL).json()

    assert set(funnel) == {"as_of", "cached", "stages", "total", "conversion_rate", "offers"}
    assert funnel["cached"] is False
    assert funnel["total"] == stats["total"] == 8
    assert funnel["conversion_rate"] == stats["conversion_rate"]
    assert funnel["stages"][0] == {"key": "received", "label": "Recibidos", "count": 2, "share": 25.0}
    assert {stage["key"]: stage["count"] for stage in funnel["stages"]} == stats["stages"]
    assert [offer["name"] for offer in funnel["offers"]] == ["Torre", "Parque"]
    tower = funnel["offers"][0]
    assert tower == {
        "offer_id": str(leads["tower"].pk),
        "name": "Torre",
        "status": "ACTIVE",
        "total": 4,
        "stages": {"received": 1, "in_chat": 1, "qualified": 1, "delivered": 1, "not_qualified": 0},
        "conversion_rate": 25.0,
    }
    # The unmapped lead counts in the totals but belongs to no offer.
    assert sum(offer["total"] for offer in funnel["offers"]) + 1 == funnel["total"]
    for key in STAGE_KEYS:
        unmapped = 1 if key == "received" else 0
        assert sum(offer["stages"][key] for offer in funnel["offers"]) + unmapped == stats["stages"][key]
    assert without_volatile(funnel) == funnel_compute(tenant=tenant)


def test_funnel_offer_filter_and_its_cache_key(leads, owner, client_for):
    client = client_for(owner)
    client.get(FUNNEL_URL)

    response = client.get(FUNNEL_URL, {"offer_id": str(leads["park"].pk)})

    body = response.json()
    assert body["cached"] is False
    assert body["total"] == 3
    assert [offer["offer_id"] for offer in body["offers"]] == [str(leads["park"].pk)]
    assert client.get(FUNNEL_URL, {"offer_id": str(leads["park"].pk)}).json()["cached"] is True


def test_funnel_of_another_tenants_offer_is_not_found(leads, other_tenant, owner, client_for):
    foreign = OfferFactory(tenant=other_tenant)
    LeadOfferFactory(offer=foreign)
    client = client_for(owner)

    foreign_response = client.get(FUNNEL_URL, {"offer_id": str(foreign.pk)})
    missing_response = client.get(FUNNEL_URL, {"offer_id": str(uuid.uuid4())})

    assert foreign_response.status_code == missing_response.status_code == 404
    foreign_error, missing_error = foreign_response.json()["error"], missing_response.json()["error"]
    foreign_error.pop("request_id"), missing_error.pop("request_id")
    assert foreign_error == missing_error == {"code": "not_found", "message": "Not found.", "details": {}}


def test_funnel_date_range_in_the_tenants_zone(tenant, owner, client_for):
    tenant.timezone = "America/Argentina/Buenos_Aires"
    tenant.save(update_fields=["timezone"])
    offer = OfferFactory(tenant=tenant)
    late = LeadOfferFactory(offer=offer)
    early = LeadOfferFactory(offer=offer)
    # 02:30 UTC on March 2 is still March 1 in Buenos Aires (UTC-3).
    type(late).objects.filter(pk=late.pk).update(created_at=dt.datetime(2026, 3, 2, 2, 30, tzinfo=dt.UTC))
    type(early).objects.filter(pk=early.pk).update(created_at=dt.datetime(2026, 3, 2, 3, 30, tzinfo=dt.UTC))
    client = client_for(owner)

    march_1 = client.get(FUNNEL_URL, {"created_from": "2026-03-01", "created_to": "2026-03-01"}).json()
    march_2 = client.get(FUNNEL_URL, {"created_from": "2026-03-02"}).json()

    assert (march_1["total"], march_2["total"]) == (1, 1)


# --- HTTP caching -----------------------------------------------------------------------------------


@pytest.mark.parametrize("url", [STATS_URL, FUNNEL_URL], ids=["stats", "funnel"])
def test_etag_and_304(url, leads, owner, client_for):
    client = client_for(owner)

    first = client.get(url)
    second = client.get(url)  # from the server cache: same numbers, same as_of, same ETag
    not_modified = client.get(url, HTTP_IF_NONE_MATCH=first["ETag"])
    listed = client.get(url, HTTP_IF_NONE_MATCH=f'"other", W/{first["ETag"]}')
    stale = client.get(url, HTTP_IF_NONE_MATCH='"stale"')

    assert first["Cache-Control"] == "private, no-cache"
    assert first["ETag"].startswith('"') and first["ETag"].endswith('"')
    assert second.json()["cached"] is True
    assert second["ETag"] == first["ETag"]  # `cached` is not part of the ETag
    assert not_modified.status_code == 304
    assert not_modified.content == b""
    assert not_modified["ETag"] == first["ETag"]
    assert not_modified["Cache-Control"] == "private, no-cache"
    assert listed.status_code == 304
    assert stale.status_code == 200
    assert stale.json()["total"] == first.json()["total"]


def test_changed_numbers_change_the_etag(leads, owner, client_for, django_capture_on_commit_callbacks):
    client = client_for(owner)
    etag = client.get(STATS_URL)["ETag"]

    with django_capture_on_commit_callbacks(execute=True):
        lead_offer_transition(lead_offer=leads["unmapped"], to_status=S.TO_BE_CONTACTED)
    response = client.get(STATS_URL, HTTP_IF_NONE_MATCH=etag)

    assert response.status_code == 200
    assert response["ETag"] != etag


@pytest.mark.parametrize("url", [STATS_URL, FUNNEL_URL], ids=["stats", "funnel"])
def test_fresh_bypasses_the_cache_for_staff(url, leads, tenant, staff_user, client_for):
    client = client_for(staff_user, tenant)
    client.get(url)

    cached = client.get(url).json()
    fresh = client.get(url, {"fresh": "true"}).json()
    after = client.get(url).json()

    assert cached["cached"] is True
    assert fresh["cached"] is False
    assert fresh["as_of"] > cached["as_of"]
    assert after["cached"] is True and after["as_of"] == fresh["as_of"]  # the fresh value was stored


@pytest.mark.parametrize("url", [STATS_URL, FUNNEL_URL], ids=["stats", "funnel"])
def test_fresh_is_forbidden_to_tenant_members(url, leads, owner, client_for):
    client = client_for(owner)

    response = client.get(url, {"fresh": "true"})
    not_fresh = client.get(url, {"fresh": "false"})

    assert response.status_code == 403
    assert response.json()["error"]["code"] == "forbidden"
    assert response.json()["error"]["details"] == {"fresh": ["Staff only."]}
    assert not_fresh.status_code == 200


# --- query budgets ----------------------------------------------------------------------------------


# A token's first use: its user id, token+user, its last_used_at stamp, memberships+tenants. It then
# caches the principal (converzia.principal): later requests authenticate and resolve the tenant
# with no query.
FIRST_USE_OVERHEAD = 4
# Misses. Stats: lead_offers and lead_events aggregates, balance, active offers, view state and
# trend rows. Funnel: offers and the grouped aggregate. Each runs in one guard, which inside the
# test's transaction costs 5 (savepoint, read limits, SET LOCAL, restore, release); outside one
# (production) 3: BEGIN, SET LOCAL, COMMIT (see test_stats_selectors).
MISS_BUDGET = {STATS_URL: 7 + 5, FUNNEL_URL: 2 + 5}


@pytest.mark.parametrize("url", [STATS_URL, FUNNEL_URL], ids=["stats", "funnel"])
def test_query_budget(
    url, leads, owner, client_for, django_assert_max_num_queries, django_assert_num_queries
):
    tenant_stats_refresh()  # a populated view: the trend costs its two queries
    client = client_for(owner)

    with django_assert_max_num_queries(FIRST_USE_OVERHEAD + MISS_BUDGET[url]):
        assert client.get(url).json()["cached"] is False
    with django_assert_num_queries(0):  # a hit reads no table at all
        assert client.get(url).json()["cached"] is True
    etag = client.get(url)["ETag"]
    with django_assert_num_queries(0):  # nor does a 304
        assert client.get(url, HTTP_IF_NONE_MATCH=etag).status_code == 304


def test_funnel_queries_do_not_grow_with_offers(
    leads, tenant, staff_user, client_for, django_assert_max_num_queries
):
    client = client_for(staff_user, tenant)
    with django_assert_max_num_queries(30) as few:
        client.get(FUNNEL_URL, {"fresh": "true"})
    for index in range(6):
        LeadOfferFactory(offer=OfferFactory(tenant=tenant, name=f"Otra {index}"), status=S.SCORED)

    with django_assert_max_num_queries(len(few.captured_queries)):
        body = client.get(FUNNEL_URL, {"fresh": "true"}).json()
    assert len(body["offers"]) == 8


# --- roles and tenancy ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("_case", "role", "expected_status"),
    [
        ("_case_owner", TenantRole.OWNER, 200),
        ("_case_admin", TenantRole.ADMIN, 200),
        ("_case_billing", TenantRole.BILLING, 403),
        ("_case_viewer", TenantRole.VIEWER, 200),
    ],
)
@pytest.mark.parametrize("url", [STATS_URL, FUNNEL_URL], ids=["stats", "funnel"])
def test_role_matrix(_case, role, expected_status, url, tenant, make_member, client_for):
    user = make_member(tenant, role)

    response = client_for(user).get(url)

    assert response.status_code == expected_status
    if expected_status == 403:
        assert response.json()["error"]["code"] == "forbidden"
        assert response.json()["error"]["details"] == {"required_permission": "view_leads"}
        assert "ETag" not in response


@pytest.mark.parametrize("url", [STATS_URL, FUNNEL_URL], ids=["stats", "funnel"])
def test_anonymous_is_unauthenticated(url, api_client):
    response = api_client.get(url)

    assert response.status_code == 401
    assert response.json()["error"]["code"] == "unauthenticated"


@pytest.mark.parametrize("url", [STATS_URL, FUNNEL_URL], ids=["stats", "funnel"])
def test_foreign_tenant_is_not_a_member(url, leads, other_tenant, owner, client_for):
    response = client_for(owner, other_tenant).get(url)

    assert response.status_code == 403
    assert response.json()["error"]["code"] == "not_a_member"


def test_each_tenant_sees_only_its_numbers(leads, owner, other_tenant, make_member, client_for):
    LeadOfferFactory(offer=OfferFactory(tenant=other_tenant), status=S.SENT_TO_DEVELOPER)
    other_owner = make_member(other_tenant, TenantRole.OWNER)

    mine = client_for(owner).get(STATS_URL).json()
    theirs = client_for(other_owner).get(STATS_URL).json()
    their_funnel = client_for(other_owner).get(FUNNEL_URL).json()

    assert (mine["total"], theirs["total"], their_funnel["total"]) == (8, 1, 1)
    assert theirs["tenant_id"] == str(other_tenant.pk)
    assert len(their_funnel["offers"]) == 1


# --- bad parameters ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("_case", "url", "params", "field"),
    [
        ("_case_days_zero", STATS_URL, {"days": "0"}, "days"),
        ("_case_days_too_many", STATS_URL, {"days": "121"}, "days"),
        ("_case_days_not_a_number", STATS_URL, {"days": "week"}, "days"),
        ("_case_fresh_not_bool", STATS_URL, {"fresh": "maybe"}, "fresh"),
        ("_case_unknown_param", STATS_URL, {"tenant_id": "x"}, "tenant_id"),
        ("_case_offer_not_uuid", FUNNEL_URL, {"offer_id": "12"}, "offer_id"),
        ("_case_bad_date", FUNNEL_URL, {"created_from": "yesterday"}, "created_from"),
        (
            "_case_range_reversed",
            FUNNEL_URL,
            {"created_from": "2026-03-02", "created_to": "2026-03-01"},
            "created_to",
        ),
        ("_case_unknown_funnel_param", FUNNEL_URL, {"days": "7"}, "days"),
    ],
)
def test_bad_parameters_are_invalid_input(_case, url, params, field, owner, client_for):
    response = client_for(owner).get(url, params)

    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "invalid_input"
    assert field in error["details"]


def test_days_bounds_are_accepted(owner, client_for):
    client = client_for(owner)

    assert len(client.get(STATS_URL, {"days": "1"}).json()["trend"]) == 1
    assert len(client.get(STATS_URL, {"days": "120"}).json()["trend"]) == 120


# --- schema -----------------------------------------------------------------------------------------


def query_parameters(operation: dict) -> list[str]:
    return [parameter["name"] for parameter in operation["parameters"] if parameter["in"] == "query"]


def test_schema_documents_both_endpoints(api_client):
    schema = api_client.get("/api/schema/", {"format": "json"}).json()

    stats = schema["paths"]["/api/portal/leads/stats"]["get"]
    funnel = schema["paths"]["/api/portal/funnel"]["get"]
    assert query_parameters(stats) == ["days", "fresh"]
    assert query_parameters(funnel) == ["created_from", "created_to", "fresh", "offer_id"]
    # Both answer 304 to a matching If-None-Match; an unknown offer_id is a documented 404.
    for operation in (stats, funnel):
        assert {"name": "If-None-Match", "in": "header"}.items() <= operation["parameters"][0].items()
        assert "304" in operation["responses"]
    assert "404" in funnel["responses"] and "404" not in stats["responses"]
    assert "offer_id" in funnel["responses"]["404"]["description"]
    stats_body = schema["components"]["schemas"]["LeadStats"]
    assert set(stats_body["properties"]) == STATS_KEYS
    assert set(schema["components"]["schemas"]["Funnel"]["properties"]) == {
        "as_of",
        "cached",
        "stages",
        "total",
        "conversion_rate",
        "offers",
    }


def test_a_ledger_entry_and_a_delivery_each_make_the_next_read_fresh_and_exact(
    tenant, owner, client_for, django_capture_on_commit_callbacks
):
    """Stats after each kind of write the cache must follow (a transition and a new lead are above and
    in leads/tests/test_ingestion.py): the next read is recomputed and shows the change."""
    lead_offer = LeadOfferFactory(offer=OfferFactory(tenant=tenant), status=S.QUALIFYING)
    with django_capture_on_commit_callbacks(execute=True):
        credit_bonus_grant(tenant=tenant, amount=5, reason="test")
        lead_offer = lead_offer_qualify(lead_offer=lead_offer, score_total=95)  # LEAD_READY: a delivery
    client = client_for(owner)
    client.get(STATS_URL)
    assert client.get(STATS_URL).json()["cached"] is True

    with django_capture_on_commit_callbacks(execute=True):
        credit_bonus_grant(tenant=tenant, amount=3, reason="test")
    after_ledger = client.get(STATS_URL).json()
    assert (after_ledger["cached"], after_ledger["credit_balance"]) == (False, 8)
    assert client.get(STATS_URL).json()["cached"] is True

    delivery = Delivery.objects.get(lead_offer=lead_offer)
    with django_capture_on_commit_callbacks(execute=True):
        delivery_complete(
            SendRecord(
                delivery_id=delivery.pk,
                attempt_number=1,
                destination_id=None,
                url="https://hooks.example.test/leads",
                status_code=200,
                duration_ms=5,
            )
        )
    after_delivery = client.get(STATS_URL).json()
    assert after_delivery["cached"] is False
    assert (after_delivery["delivered_today"], after_delivery["stages"]["delivered"]) == (1, 1)
    assert after_delivery["credit_balance"] == 7  # the delivery's one credit


@pytest.mark.parametrize(
    ("path", "view"),
    [("/api/portal/leads/stats", LeadStatsViewSet), ("/api/portal/funnel", FunnelViewSet)],
    ids=["stats", "funnel"],
)
@pytest.mark.parametrize("with_leads", [True, False], ids=["leads", "empty"])
def test_bodies_are_byte_equal_to_their_documented_serializer(
    request, path, view, with_leads, owner, client_for
):
    if with_leads:
        request.getfixturevalue("leads")
    client = client_for(owner)
    for _ in range(2):  # computed, then from the cache
        response = client.get(path)
        body = response.json()
        assert response.content == orjson.dumps(dict(view.OutputSerializer(body).data))
