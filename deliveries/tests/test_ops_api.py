"""The ops API (API.md "Ops"): staff transitions and qualifications of lead_offers.

Each test goes through HTTP with a staff bearer token and then checks the rows the services wrote:
status, events, the delivery and its dispatcher job, the tenant's cache version. Denials also check
that nothing changed.
"""

from __future__ import annotations

import uuid

import pytest

from converzia.cache import tenant_version
from converzia.request_context import tenant_id_var
from converzia.tests.factories import TenantFactory
from deliveries.api.ops import _lead_offer_for_staff
from deliveries.api.serializers import JSON_OBJECT_MAX_BYTES, JSON_OBJECT_MAX_KEYS
from deliveries.models import Delivery, DeliveryStatus
from deliveries.tests.factories import DeliveryFactory
from deliveries.tests.test_dispatch import dispatcher_jobs
from leads.models import ActorType, LeadEvent, LeadEventType, LeadOffer, LeadOfferStatus
from leads.tests.factories import LeadOfferFactory
from leads.transitions import allowed_targets

pytestmark = pytest.mark.django_db

S = LeadOfferStatus
# Query budgets of one request as measured, everything included: the token lookup, the lead_offer
# lookup, the services' statements and SAVEPOINT/RELEASE pairs of their nested atomic blocks (in
# production the outermost pair is BEGIN/COMMIT, which Django does not count), the final read.
# A plain move: token, lookup, lock, UPDATE, trigger-field refresh, event INSERT, final read + 4 savepoints.
TRANSITION_BUDGET = 11
# + the lead re-read for the payload, the delivery INSERT and its check, the event, the job's defer.
LEAD_READY_TRANSITION_BUDGET = 18
# Qualify to LEAD_READY: + the locked read, UPDATE and SCORE_CALCULATED event of the qualification;
# the dispatcher job is already queued here, so its defer hits the queueing lock (one more rollback).
QUALIFICATION_BUDGET = 24

LEAD_OFFER_KEYS = {
    "id",
    "tenant_id",
    "offer_id",
    "status",
    "previous_status",
    "status_changed_at",
    "billing_eligibility",
    "score_total",
    "qualification_fields",
    "score_breakdown",
    "disqualification_category",
    "disqualification_reason",
    "updated_at",
    "delivery",
}
DELIVERY_KEYS = {"id", "status", "blocked_reason", "attempt_count", "next_attempt_at", "delivered_at"}


def transition_url(lead_offer_id: object) -> str:
    return f"/api/ops/lead-offers/{lead_offer_id}/transition"


def qualification_url(lead_offer_id: object) -> str:
    return f"/api/ops/lead-offers/{lead_offer_id}/qualification"


def assert_error(response, status: int, code: str) -> dict:
    """The one error shape (API.md "Errors"); returns `details`."""
    assert response.status_code == status, response.content
    body = response.json()
    assert set(body) == {"error"}
    error = body["error"]
    assert set(error) == {"code", "message", "details", "request_id"}
    assert error["code"] == code
    assert isinstance(error["message"], str) and error["message"]
    assert isinstance(error["details"], dict)
    assert error["request_id"] == response["X-Request-ID"]
    return error["details"]


def status_changes(lead_offer: LeadOffer) -> list[LeadEvent]:
    return list(
        LeadEvent.objects.filter(lead_offer=lead_offer, event_type=LeadEventType.STATUS_CHANGE).order_by(
            "created_at", "id"
        )
    )


@pytest.fixture
def staff_client(client_for, staff_user):
    return client_for(staff_user)


# --- Transition -------------------------------------------------------------------------------------


def test_transition_moves_the_lead_and_records_who_and_why(staff_client, staff_user):
    lead_offer = LeadOfferFactory(status=S.CONTACTED)

    response = staff_client.post(
        transition_url(lead_offer.pk), {"to": "ENGAGED", "reason": "replied by phone"}, format="json"
    )

    assert response.status_code == 200, response.content
    body = response.json()
    assert set(body) == LEAD_OFFER_KEYS
    assert body["id"] == str(lead_offer.pk)
    assert body["tenant_id"] == str(lead_offer.tenant_id)
    assert body["offer_id"] == str(lead_offer.offer_id)
    assert (body["status"], body["previous_status"]) == ("ENGAGED", "CONTACTED")
    assert body["delivery"] is None
    assert body["disqualification_category"] is None
    assert LeadOffer.objects.get(pk=lead_offer.pk).status == S.ENGAGED
    (event,) = status_changes(lead_offer)
    assert event.actor_type == ActorType.ADMIN
    assert event.actor_id == staff_user.pk
    assert event.details == {"from": "CONTACTED", "to": "ENGAGED", "reason": "replied by phone"}
    assert event.trace_id == response["X-Request-ID"]


def test_transition_not_in_the_matrix_is_409_listing_the_allowed_targets(staff_client):
    lead_offer = LeadOfferFactory(status=S.TO_BE_CONTACTED)

    response = staff_client.post(transition_url(lead_offer.pk), {"to": "LEAD_READY"}, format="json")

    details = assert_error(response, 409, "invalid_transition")
    assert details == {
        "from": "TO_BE_CONTACTED",
        "to": "LEAD_READY",
        "allowed": ["CONTACTED", "COOLING", "DISQUALIFIED", "STOPPED"],
    }
    assert LeadOffer.objects.get(pk=lead_offer.pk).status == S.TO_BE_CONTACTED
    assert status_changes(lead_offer) == []
    assert not Delivery.objects.filter(lead_offer=lead_offer).exists()


def test_a_move_to_the_current_status_is_a_no_op(staff_client):
    lead_offer = LeadOfferFactory(status=S.CONTACTED)

    response = staff_client.post(transition_url(lead_offer.pk), {"to": "CONTACTED"}, format="json")

    assert response.status_code == 200, response.content
    assert (response.json()["status"], response.json()["previous_status"]) == ("CONTACTED", None)
    assert status_changes(lead_offer) == []


def test_sent_to_developer_is_refused_even_from_lead_ready(staff_client):
    delivery = DeliveryFactory()
    lead_offer = delivery.lead_offer

    response = staff_client.post(transition_url(lead_offer.pk), {"to": "SENT_TO_DEVELOPER"}, format="json")

    details = assert_error(response, 409, "invalid_transition")
    assert details == {
        "from": "LEAD_READY",
        "to": "SENT_TO_DEVELOPER",
        "allowed": ["DISQUALIFIED", "STOPPED"],
    }
    assert LeadOffer.objects.get(pk=lead_offer.pk).status == S.LEAD_READY
    assert Delivery.objects.get(pk=delivery.pk).status == DeliveryStatus.PENDING
    assert status_changes(lead_offer) == []


def test_disqualified_records_the_category_and_the_reason(staff_client):
    lead_offer = LeadOfferFactory(status=S.QUALIFYING)

    response = staff_client.post(
        transition_url(lead_offer.pk),
        {"to": "DISQUALIFIED", "disqualification_category": "WRONG_ZONE", "reason": "Wants Córdoba"},
        format="json",
    )

    assert response.status_code == 200, response.content
    body = response.json()
    assert (body["status"], body["disqualification_category"], body["disqualification_reason"]) == (
        "DISQUALIFIED",
        "WRONG_ZONE",
        "Wants Córdoba",
    )
    stored = LeadOffer.objects.get(pk=lead_offer.pk)
    assert (stored.disqualification_category, stored.disqualification_reason) == (
        "WRONG_ZONE",
        "Wants Córdoba",
    )
    (event,) = status_changes(lead_offer)
    assert event.details["disqualification_category"] == "WRONG_ZONE"
    assert event.details["reason"] == "Wants Córdoba"


def test_disqualified_without_a_category_is_other(staff_client):
    lead_offer = LeadOfferFactory(status=S.ENGAGED)

    response = staff_client.post(transition_url(lead_offer.pk), {"to": "DISQUALIFIED"}, format="json")

    assert response.status_code == 200, response.content
    assert response.json()["disqualification_category"] == "OTHER"
    assert LeadOffer.objects.get(pk=lead_offer.pk).disqualification_category == "OTHER"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        pytest.param(
            {"to": "STOPPED", "disqualification_category": "OTHER"},
            "disqualification_category",
            id="_case_category_without_disqualified",
        ),
        pytest.param({"to": "WON"}, "to", id="_case_unknown_status"),
        pytest.param({"to": "disqualified"}, "to", id="_case_status_is_case_sensitive"),
        pytest.param({}, "to", id="_case_missing_to"),
        pytest.param(
            {"to": "DISQUALIFIED", "disqualification_category": "RUDE"},
            "disqualification_category",
            id="_case_unknown_category",
        ),
        pytest.param({"to": "STOPPED", "reason": "x" * 2001}, "reason", id="_case_reason_too_long"),
        pytest.param({"to": "STOPPED", "note": "typo"}, "note", id="_case_unknown_body_field"),
    ],
)
def test_transition_bad_input_is_400_with_field_details(staff_client, body, field):
    lead_offer = LeadOfferFactory(status=S.QUALIFYING)

    response = staff_client.post(transition_url(lead_offer.pk), body, format="json")

    details = assert_error(response, 400, "invalid_input")
    assert list(details) == [field]
    assert LeadOffer.objects.get(pk=lead_offer.pk).status == S.QUALIFYING
    assert status_changes(lead_offer) == []


def test_transition_body_must_be_an_object(staff_client):
    lead_offer = LeadOfferFactory(status=S.QUALIFYING)

    as_list = staff_client.post(transition_url(lead_offer.pk), ["STOPPED"], format="json")
    not_json = staff_client.post(transition_url(lead_offer.pk), "{", content_type="application/json")

    assert list(assert_error(as_list, 400, "invalid_input")) == ["non_field_errors"]
    assert_error(not_json, 400, "invalid_input")
    assert LeadOffer.objects.get(pk=lead_offer.pk).status == S.QUALIFYING


def test_reaching_lead_ready_creates_one_delivery_and_wakes_the_dispatcher(staff_client):
    lead_offer = LeadOfferFactory(status=S.QUALIFYING)
    assert dispatcher_jobs() == 0

    response = staff_client.post(transition_url(lead_offer.pk), {"to": "LEAD_READY"}, format="json")

    assert response.status_code == 200, response.content
    delivery = Delivery.objects.get(lead_offer=lead_offer)
    assert delivery.status == DeliveryStatus.PENDING
    assert delivery.tenant_id == lead_offer.tenant_id
    assert dispatcher_jobs() == 1
    body = response.json()
    assert body["status"] == "LEAD_READY"
    assert set(body["delivery"]) == DELIVERY_KEYS
    assert body["delivery"]["id"] == str(delivery.pk)
    assert (body["delivery"]["status"], body["delivery"]["blocked_reason"]) == ("PENDING", None)
    assert body["delivery"]["attempt_count"] == 0
    assert body["delivery"]["next_attempt_at"] is not None
    assert body["delivery"]["delivered_at"] is None
    assert (
        LeadEvent.objects.filter(lead_offer=lead_offer, event_type=LeadEventType.DELIVERY_ATTEMPTED).count()
        == 1
    )


def test_leaving_lead_ready_for_stopped_dead_letters_the_waiting_delivery(staff_client):
    delivery = DeliveryFactory()
    lead_offer = delivery.lead_offer

    response = staff_client.post(
        transition_url(lead_offer.pk), {"to": "STOPPED", "reason": "opted out"}, format="json"
    )

    assert response.status_code == 200, response.content
    assert response.json()["status"] == "STOPPED"
    assert response.json()["delivery"]["status"] == "DEAD_LETTER"
    delivery.refresh_from_db()
    assert delivery.status == DeliveryStatus.DEAD_LETTER
    assert delivery.dead_letter_reason == "Cancelled before delivery: lead moved to STOPPED."
    assert delivery.next_attempt_at is None
    assert (
        LeadEvent.objects.filter(lead_offer=lead_offer, event_type=LeadEventType.DELIVERY_DEAD_LETTER).count()
        == 1
    )


def test_a_transition_invalidates_the_tenants_cache_after_commit(
    staff_client, django_capture_on_commit_callbacks
):
    lead_offer = LeadOfferFactory(status=S.CONTACTED)
    before = tenant_version(lead_offer.tenant_id)

    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        response = staff_client.post(transition_url(lead_offer.pk), {"to": "ENGAGED"}, format="json")

    assert response.status_code == 200
    assert callbacks, "invalidation is deferred to the commit"
    assert tenant_version(lead_offer.tenant_id) == before + 1


def test_a_refused_transition_leaves_the_cache_alone(staff_client, django_capture_on_commit_callbacks):
    lead_offer = LeadOfferFactory(status=S.STOPPED)
    before = tenant_version(lead_offer.tenant_id)

    with django_capture_on_commit_callbacks(execute=True):
        response = staff_client.post(transition_url(lead_offer.pk), {"to": "CONTACTED"}, format="json")

    assert_error(response, 409, "invalid_transition")
    assert tenant_version(lead_offer.tenant_id) == before


# --- Qualification ----------------------------------------------------------------------------------


def test_qualification_merges_fields_and_stores_the_score(staff_client, staff_user):
    lead_offer = LeadOfferFactory(
        status=S.QUALIFYING,
        qualification_fields={"name": "Ana", "timing": "6 months", "zone": ["Palermo"]},
        score_breakdown={"budget": 5},
    )

    response = staff_client.post(
        qualification_url(lead_offer.pk),
        {
            "score_total": 55,
            "qualification_fields": {"timing": "now", "bedrooms": 2},
            "score_breakdown": {"budget": 20, "zone": 15},
        },
        format="json",
    )

    assert response.status_code == 200, response.content
    stored = LeadOffer.objects.get(pk=lead_offer.pk)
    assert stored.qualification_fields == {"name": "Ana", "timing": "now", "zone": ["Palermo"], "bedrooms": 2}
    assert stored.score_total == 55
    assert stored.score_breakdown == {"budget": 20, "zone": 15}
    assert stored.scored_at is not None
    body = response.json()
    assert body["qualification_fields"] == stored.qualification_fields
    assert (body["score_total"], body["status"]) == (55, "SCORED")
    scored = LeadEvent.objects.get(lead_offer=lead_offer, event_type=LeadEventType.SCORE_CALCULATED)
    assert scored.actor_id == staff_user.pk
    assert scored.details == {"score_total": 55, "threshold": 80, "fields_updated": ["bedrooms", "timing"]}


def test_qualification_without_a_breakdown_keeps_the_stored_one(staff_client):
    lead_offer = LeadOfferFactory(status=S.SCORED, score_total=40, score_breakdown={"budget": 5})

    response = staff_client.post(qualification_url(lead_offer.pk), {"score_total": 45}, format="json")

    assert response.status_code == 200, response.content
    stored = LeadOffer.objects.get(pk=lead_offer.pk)
    assert (stored.status, stored.score_total, stored.score_breakdown) == (S.SCORED, 45, {"budget": 5})


def test_qualification_at_the_threshold_makes_the_lead_ready_with_its_delivery(staff_client):
    lead_offer = LeadOfferFactory(status=S.QUALIFYING)

    response = staff_client.post(qualification_url(lead_offer.pk), {"score_total": 80}, format="json")

    assert response.status_code == 200, response.content
    assert LeadOffer.objects.get(pk=lead_offer.pk).status == S.LEAD_READY
    delivery = Delivery.objects.get(lead_offer=lead_offer)
    assert response.json()["delivery"]["id"] == str(delivery.pk)
    assert dispatcher_jobs() == 1
    assert [(e.details["from"], e.details["to"]) for e in status_changes(lead_offer)] == [
        ("QUALIFYING", "LEAD_READY")
    ]


def test_qualification_below_the_threshold_scores_without_a_delivery(staff_client):
    lead_offer = LeadOfferFactory(status=S.QUALIFYING)

    response = staff_client.post(qualification_url(lead_offer.pk), {"score_total": 79}, format="json")

    assert response.status_code == 200, response.content
    assert response.json()["status"] == "SCORED"
    assert response.json()["delivery"] is None
    assert LeadOffer.objects.get(pk=lead_offer.pk).status == S.SCORED
    assert not Delivery.objects.filter(lead_offer=lead_offer).exists()
    assert dispatcher_jobs() == 0


def test_human_handoff_below_the_threshold_goes_back_through_qualifying(staff_client):
    lead_offer = LeadOfferFactory(status=S.HUMAN_HANDOFF)

    response = staff_client.post(qualification_url(lead_offer.pk), {"score_total": 30}, format="json")

    assert response.status_code == 200, response.content
    assert (response.json()["status"], response.json()["previous_status"]) == ("SCORED", "QUALIFYING")
    assert [(e.details["from"], e.details["to"]) for e in status_changes(lead_offer)] == [
        ("HUMAN_HANDOFF", "QUALIFYING"),
        ("QUALIFYING", "SCORED"),
    ]
    assert {e.actor_type for e in status_changes(lead_offer)} == {ActorType.ADMIN}


@pytest.mark.parametrize(
    ("threshold", "score", "expected"),
    [
        pytest.param(60, 65, S.LEAD_READY, id="_case_low_threshold_makes_65_ready"),
        pytest.param(90, 85, S.SCORED, id="_case_high_threshold_keeps_85_scored"),
    ],
)
def test_qualification_honours_the_tenants_threshold(staff_client, threshold, score, expected):
    tenant = TenantFactory(default_score_threshold=threshold)
    lead_offer = LeadOfferFactory(status=S.QUALIFYING, offer__tenant=tenant)

    response = staff_client.post(qualification_url(lead_offer.pk), {"score_total": score}, format="json")

    assert response.status_code == 200, response.content
    assert LeadOffer.objects.get(pk=lead_offer.pk).status == expected
    assert Delivery.objects.filter(lead_offer=lead_offer).exists() == (expected == S.LEAD_READY)


@pytest.mark.parametrize(
    ("body", "field"),
    [
        pytest.param({"score_total": 101}, "score_total", id="_case_above_100"),
        pytest.param({"score_total": -1}, "score_total", id="_case_negative"),
        pytest.param({"score_total": "95"}, "score_total", id="_case_numeric_string"),
        pytest.param({"score_total": "high"}, "score_total", id="_case_string"),
        pytest.param({"score_total": True}, "score_total", id="_case_boolean"),
        pytest.param({"score_total": 90.5}, "score_total", id="_case_fraction"),
        pytest.param({"score_total": None}, "score_total", id="_case_null"),
        pytest.param({"qualification_fields": {"name": "Ana"}}, "score_total", id="_case_missing_score"),
        pytest.param(
            {"score_total": 90, "qualification_fields": ["name"]},
            "qualification_fields",
            id="_case_fields_a_list",
        ),
        pytest.param(
            {"score_total": 90, "qualification_fields": "name=Ana"},
            "qualification_fields",
            id="_case_fields_a_string",
        ),
        pytest.param(
            {"score_total": 90, "score_breakdown": [1, 2]}, "score_breakdown", id="_case_breakdown_a_list"
        ),
        pytest.param(
            {
                "score_total": 90,
                "qualification_fields": {f"k{i}": i for i in range(JSON_OBJECT_MAX_KEYS + 1)},
            },
            "qualification_fields",
            id="_case_too_many_keys",
        ),
        pytest.param(
            {"score_total": 90, "qualification_fields": {"notes": "x" * JSON_OBJECT_MAX_BYTES}},
            "qualification_fields",
            id="_case_too_large",
        ),
        pytest.param(
            {"score_total": 90, "score_breakdown": {"notes": "é" * (JSON_OBJECT_MAX_BYTES // 2)}},
            "score_breakdown",
            id="_case_too_large_in_utf8_bytes",
        ),
        pytest.param({"score_total": 90, "score": 90}, "score", id="_case_unknown_body_field"),
    ],
)
def test_qualification_bad_input_is_400_with_field_details(staff_client, body, field):
    lead_offer = LeadOfferFactory(status=S.QUALIFYING, qualification_fields={"name": "Ana"})

    response = staff_client.post(qualification_url(lead_offer.pk), body, format="json")

    details = assert_error(response, 400, "invalid_input")
    assert list(details) == [field]
    stored = LeadOffer.objects.get(pk=lead_offer.pk)
    assert (stored.status, stored.score_total, stored.qualification_fields) == (
        S.QUALIFYING,
        None,
        {"name": "Ana"},
    )


def test_qualification_at_the_size_limits_is_accepted(staff_client):
    lead_offer = LeadOfferFactory(status=S.QUALIFYING)
    fields = {f"k{i}": i for i in range(JSON_OBJECT_MAX_KEYS)}

    response = staff_client.post(
        qualification_url(lead_offer.pk), {"score_total": 10, "qualification_fields": fields}, format="json"
    )

    assert response.status_code == 200, response.content
    assert LeadOffer.objects.get(pk=lead_offer.pk).qualification_fields == fields


@pytest.mark.parametrize("status", [S.CONTACTED, S.LEAD_READY, S.STOPPED, S.SENT_TO_DEVELOPER])
def test_qualification_of_a_lead_in_another_status_is_409(staff_client, status):
    lead_offer = LeadOfferFactory(status=status)

    response = staff_client.post(qualification_url(lead_offer.pk), {"score_total": 95}, format="json")

    details = assert_error(response, 409, "invalid_transition")
    assert details["from"] == status
    assert details["qualifiable_from"] == ["QUALIFYING", "SCORED", "HUMAN_HANDOFF"]
    assert details["allowed"] == allowed_targets(status)
    stored = LeadOffer.objects.get(pk=lead_offer.pk)
    assert (stored.status, stored.score_total) == (status, None)
    assert not LeadEvent.objects.filter(lead_offer=lead_offer).exists()


# --- Authentication, permission, lookup -------------------------------------------------------------

ROUTES = [
    pytest.param(transition_url, {"to": "ENGAGED"}, id="_case_transition"),
    pytest.param(qualification_url, {"score_total": 50}, id="_case_qualification"),
]


@pytest.mark.parametrize(("url", "body"), ROUTES)
def test_anonymous_is_401(api_client, url, body):
    lead_offer = LeadOfferFactory(status=S.CONTACTED)

    response = api_client.post(url(lead_offer.pk), body, format="json")
    malformed = api_client.post(url("not-a-uuid"), body, format="json")

    assert_error(response, 401, "unauthenticated")
    assert response["WWW-Authenticate"] == 'Bearer realm="api"'
    assert_error(malformed, 401, "unauthenticated")
    assert LeadOffer.objects.get(pk=lead_offer.pk).status == S.CONTACTED


@pytest.mark.parametrize(("url", "body"), ROUTES)
def test_a_tenant_owner_is_403_even_for_their_own_lead(client_for, owner, tenant, url, body):
    lead_offer = LeadOfferFactory(status=S.CONTACTED, offer__tenant=tenant)

    response = client_for(owner, tenant).post(url(lead_offer.pk), body, format="json")

    assert_error(response, 403, "forbidden")
    stored = LeadOffer.objects.get(pk=lead_offer.pk)
    assert (stored.status, stored.score_total) == (S.CONTACTED, None)
    assert not LeadEvent.objects.filter(lead_offer=lead_offer).exists()


@pytest.mark.parametrize(("url", "body"), ROUTES)
@pytest.mark.parametrize(
    "lead_offer_id",
    [uuid.uuid4(), "not-a-uuid", "123"],
    ids=["_case_unknown", "_case_malformed", "_case_number"],
)
def test_unknown_or_malformed_id_is_404(staff_client, url, body, lead_offer_id):
    response = staff_client.post(url(lead_offer_id), body, format="json")

    assert_error(response, 404, "not_found")


@pytest.mark.parametrize(("url", "body"), ROUTES)
def test_unknown_query_parameter_is_400(staff_client, url, body):
    lead_offer = LeadOfferFactory(status=S.CONTACTED)

    response = staff_client.post(f"{url(lead_offer.pk)}?force=1", body, format="json")

    assert assert_error(response, 400, "invalid_input") == {"force": ["Unknown query parameter."]}
    assert LeadOffer.objects.get(pk=lead_offer.pk).status == S.CONTACTED


@pytest.mark.parametrize(("url", "body"), ROUTES)
def test_other_methods_are_405(staff_client, url, body):
    lead_offer = LeadOfferFactory(status=S.CONTACTED)

    assert_error(staff_client.get(url(lead_offer.pk)), 405, "method_not_allowed")


def test_staff_need_no_tenant_header_and_act_in_any_tenant(staff_client):
    first = LeadOfferFactory(status=S.CONTACTED)
    second = LeadOfferFactory(status=S.CONTACTED)
    assert first.tenant_id != second.tenant_id

    responses = [
        staff_client.post(transition_url(lo.pk), {"to": "ENGAGED"}, format="json") for lo in (first, second)
    ]

    assert [r.status_code for r in responses] == [200, 200]
    assert [r.json()["tenant_id"] for r in responses] == [str(first.tenant_id), str(second.tenant_id)]


def test_the_lead_offers_tenant_goes_into_the_logging_context():
    lead_offer = LeadOfferFactory()
    token = tenant_id_var.set(None)
    try:
        _lead_offer_for_staff(str(lead_offer.pk))
        assert tenant_id_var.get() == str(lead_offer.tenant_id)
    finally:
        tenant_id_var.reset(token)


# --- Query budgets ----------------------------------------------------------------------------------


def test_query_budgets_of_the_hot_paths(staff_client, django_assert_max_num_queries):
    plain = LeadOfferFactory(status=S.CONTACTED)
    ready = LeadOfferFactory(status=S.QUALIFYING)
    scored = LeadOfferFactory(status=S.QUALIFYING)
    # Warm up: the first request of a client may load things later ones do not.
    staff_client.post(
        transition_url(LeadOfferFactory(status=S.CONTACTED).pk), {"to": "ENGAGED"}, format="json"
    )

    with django_assert_max_num_queries(TRANSITION_BUDGET):
        assert (
            staff_client.post(transition_url(plain.pk), {"to": "ENGAGED"}, format="json").status_code == 200
        )
    with django_assert_max_num_queries(LEAD_READY_TRANSITION_BUDGET):
        assert (
            staff_client.post(transition_url(ready.pk), {"to": "LEAD_READY"}, format="json").status_code
            == 200
        )
    with django_assert_max_num_queries(QUALIFICATION_BUDGET):
        response = staff_client.post(
            qualification_url(scored.pk),
            {"score_total": 95, "qualification_fields": {"name": "Ana"}},
            format="json",
        )
        assert response.status_code == 200


def test_the_schema_documents_both_routes_under_ops(api_client):
    schema = api_client.get("/api/schema/", {"format": "json"}).json()

    for route, request_component in (
        ("transition", "LeadOfferTransitionRequest"),
        ("qualification", "LeadOfferQualificationRequest"),
    ):
        operation = schema["paths"][f"/api/ops/lead-offers/{{id}}/{route}"]["post"]
        assert operation["tags"] == ["ops"]
        assert sorted(operation["responses"]) == ["200", "400", "401", "403", "404", "409", "500", "503"]
        body = operation["requestBody"]["content"]["application/json"]["schema"]
        assert body == {"$ref": f"#/components/schemas/{request_component}"}
        assert operation["parameters"][0]["schema"] == {"type": "string", "format": "uuid"}
    lead_offer = schema["components"]["schemas"]["LeadOffer"]
    assert set(lead_offer["properties"]) == LEAD_OFFER_KEYS
