"""/api/portal/delivery-destination (GET, PUT), …/rotate-secret and …/test: shapes, roles, isolation."""

from __future__ import annotations

import json

import pytest
from rest_framework.test import APIClient
from standardwebhooks import Webhook

from converzia.api.throttling import DeliveryTestRateThrottle
from converzia.models import MembershipStatus, TenantRole
from converzia.tests.factories import TenantMemberFactory
from deliveries import outbound
from deliveries.models import DeliveryDestination
from deliveries.tests.address_forms import ALLOWED, ISSUE_15, REFUSED, FakeDNS
from deliveries.tests.factories import DeliveryDestinationFactory

pytestmark = pytest.mark.django_db

URL = "/api/portal/delivery-destination"
ROTATE_URL = f"{URL}/rotate-secret"
TEST_URL = f"{URL}/test"
RECEIVER_URL = "http://127.0.0.1:9/hook"

DESTINATION_FIELDS = [
    "disabled_at",
    "disabled_reason",
    "is_active",
    "last_failure_at",
    "last_success_at",
    "secret_hint",
    "url",
]


def error(response) -> dict:
    return response.json()["error"]


def put(client: APIClient, body: dict):
    return client.put(URL, body, format="json")


def call(client: APIClient, route: str):
    """One request per route of the matrix; writes use a valid body so only the role decides."""
    if route == "get":
        return client.get(URL)
    if route == "put":
        return put(client, {"url": RECEIVER_URL})
    if route == "rotate":
        return client.post(ROTATE_URL)
    return client.post(TEST_URL)


# --- GET -----------------------------------------------------------------------------------------


def test_get_without_a_destination_answers_an_empty_one(owner, client_for):
    response = client_for(owner).get(URL)

    assert response.status_code == 200
    assert response.json() == {
        "url": None,
        "is_active": False,
        "secret_hint": None,
        "disabled_at": None,
        "disabled_reason": None,
        "last_success_at": None,
        "last_failure_at": None,
    }


def test_get_shows_the_destination_with_a_hint_but_never_the_secret(tenant, owner, client_for):
    destination = DeliveryDestinationFactory(tenant=tenant, url=RECEIVER_URL)

    response = client_for(owner).get(URL)

    assert response.status_code == 200
    assert response.json() == {
        "url": RECEIVER_URL,
        "is_active": True,
        "secret_hint": destination.secret_hint,
        "disabled_at": None,
        "disabled_reason": None,
        "last_success_at": None,
        "last_failure_at": None,
    }
    assert destination.secret not in response.content.decode()
    assert destination.secret[10:-4] not in response.content.decode()


def test_get_shows_that_the_tenant_disabled_it(tenant, owner, client_for):
    DeliveryDestinationFactory(tenant=tenant, url=RECEIVER_URL)
    put(client_for(owner), {"url": RECEIVER_URL, "is_active": False})

    body = client_for(owner).get(URL).json()

    assert body["is_active"] is False
    assert body["disabled_at"] is not None
    assert body["disabled_reason"] == "Disabled in the portal."


def test_saving_a_disabled_destination_still_disabled_keeps_the_receivers_reason(tenant, owner, client_for):
    DeliveryDestinationFactory(
        tenant=tenant, url=RECEIVER_URL, is_active=False, disabled_reason="The receiver answered 410 Gone."
    )

    body = put(client_for(owner), {"url": RECEIVER_URL, "is_active": False}).json()

    assert body["is_active"] is False
    assert body["disabled_reason"] == "The receiver answered 410 Gone."


def test_get_shows_only_the_tenants_own_destination(tenant, other_tenant, owner, client_for):
    DeliveryDestinationFactory(tenant=other_tenant, url="http://127.0.0.1:10/theirs")

    body = client_for(owner).get(URL).json()

    assert body["url"] is None


# --- PUT -----------------------------------------------------------------------------------------


def test_put_creates_the_destination_and_shows_the_secret_this_once(tenant, owner, client_for):
    client = client_for(owner)

    created = put(client, {"url": RECEIVER_URL})

    assert created.status_code == 201
    body = created.json()
    assert sorted(body) == sorted([*DESTINATION_FIELDS, "secret"])
    stored = DeliveryDestination.objects.get(tenant=tenant)
    assert body["secret"] == stored.secret
    assert body["secret"].startswith("whsec_")
    assert body["secret_hint"] == stored.secret_hint
    assert (body["url"], body["is_active"]) == (RECEIVER_URL, True)
    fetched = client.get(URL)
    assert "secret" not in fetched.json()
    assert stored.secret not in fetched.content.decode()


def test_put_updates_without_showing_the_secret_again(tenant, owner, client_for):
    client = client_for(owner)
    secret = put(client, {"url": RECEIVER_URL}).json()["secret"]

    updated = put(client, {"url": "http://127.0.0.1:10/new", "is_active": False})

    assert updated.status_code == 200
    assert sorted(updated.json()) == DESTINATION_FIELDS
    assert secret not in updated.content.decode()
    assert updated.json()["url"] == "http://127.0.0.1:10/new"
    assert updated.json()["is_active"] is False
    stored = DeliveryDestination.objects.get(tenant=tenant)
    assert (stored.url, stored.is_active, stored.secret) == ("http://127.0.0.1:10/new", False, secret)


def test_put_enables_by_default(tenant, owner, client_for):
    DeliveryDestinationFactory(tenant=tenant, is_active=False, disabled_reason="The receiver answered 410.")

    response = put(client_for(owner), {"url": RECEIVER_URL})

    assert response.status_code == 200
    assert response.json()["is_active"] is True
    assert response.json()["disabled_reason"] is None
    assert response.json()["disabled_at"] is None


def test_put_with_an_unusable_url_is_invalid_input_with_the_problems(tenant, owner, client_for):
    response = put(client_for(owner), {"url": "https://u:p@receiver.invalid/hook#x"})

    assert response.status_code == 400
    assert error(response)["code"] == "invalid_input"
    assert error(response)["details"] == {
        "url": [
            "Credentials in the URL are not allowed; the signature authenticates us.",
            "The URL must not have a fragment.",
        ]
    }
    assert not DeliveryDestination.objects.filter(tenant=tenant).exists()


def test_put_refuses_private_addresses_where_they_are_not_allowed(tenant, owner, client_for, settings):
    settings.DELIVERY_ALLOW_PRIVATE_NETWORKS = False

    response = put(client_for(owner), {"url": "https://192.168.1.10/hook"})

    assert response.status_code == 400
    (problem,) = error(response)["details"]["url"]
    assert "non-public address" in problem
    assert not DeliveryDestination.objects.exists()


@pytest.mark.parametrize(("host", "says"), REFUSED)
def test_put_refuses_every_spelling_of_a_non_public_address_and_changes_nothing(
    tenant, owner, client_for, settings, monkeypatch, host, says
):
    """Issue 15: IPv4 inside IPv6, numeric IPv4, plain private addresses (tests/address_forms.py)."""
    settings.DELIVERY_ALLOW_PRIVATE_NETWORKS = False
    dns = FakeDNS()  # every form is a literal: the resolver must not even be asked
    monkeypatch.setattr(outbound, "resolver", dns)
    existing = DeliveryDestinationFactory(tenant=tenant, url="https://93.184.216.34/hook")

    response = put(client_for(owner), {"url": f"https://{host}/hook", "is_active": False})

    assert response.status_code == 400
    body = error(response)
    assert set(body) == {"code", "message", "details", "request_id"}
    assert body["code"] == "invalid_input"
    assert body["message"] == "The destination URL cannot be used."
    assert list(body["details"]) == ["url"]
    (problem,) = body["details"]["url"]
    assert says in problem
    assert dns.questions == []
    stored = DeliveryDestination.objects.get(tenant=tenant)
    assert (stored.pk, stored.url, stored.secret, stored.is_active) == (
        existing.pk,
        "https://93.184.216.34/hook",
        existing.secret,
        True,
    )


@pytest.mark.parametrize(("host", "says"), ISSUE_15)
def test_put_of_a_wrapped_address_stores_nothing(tenant, owner, client_for, settings, host, says):
    settings.DELIVERY_ALLOW_PRIVATE_NETWORKS = False

    response = put(client_for(owner), {"url": f"https://{host}/hook"})

    assert response.status_code == 400
    assert error(response)["code"] == "invalid_input"
    assert says in error(response)["details"]["url"][0]
    assert not DeliveryDestination.objects.exists()


def test_put_refuses_a_name_whose_dns_answer_wraps_a_private_address(
    tenant, owner, client_for, settings, monkeypatch
):
    settings.DELIVERY_ALLOW_PRIVATE_NETWORKS = False
    monkeypatch.setattr(outbound, "resolver", FakeDNS({"receiver.example": ["64:ff9b::a9fe:a9fe"]}))

    response = put(client_for(owner), {"url": "https://receiver.example/hook"})

    assert response.status_code == 400
    assert error(response)["details"] == {
        "url": [
            "receiver.example resolves to a non-public address (64:ff9b::a9fe:a9fe is NAT64 IPv6"
            " (64:ff9b::/96) carrying 169.254.169.254 (link-local); IPv4 inside IPv6 is never accepted);"
            " deliveries only go to public addresses."
        ]
    }
    assert not DeliveryDestination.objects.exists()


@pytest.mark.parametrize("host", ALLOWED)
def test_put_accepts_native_public_addresses(tenant, owner, client_for, settings, host):
    settings.DELIVERY_ALLOW_PRIVATE_NETWORKS = False

    response = put(client_for(owner), {"url": f"https://{host}/hook"})

    assert response.status_code == 201  # created
    assert response.json()["url"] == f"https://{host}/hook"
    assert DeliveryDestination.objects.get(tenant=tenant).url == f"https://{host}/hook"


@pytest.mark.parametrize(
    ("body", "details"),
    [
        pytest.param({}, {"url": ["This field is required."]}, id="_case_missing_url"),
        pytest.param({"url": ""}, {"url": ["This field may not be blank."]}, id="_case_blank_url"),
        pytest.param(
            {"url": RECEIVER_URL, "is_active": "maybe"},
            {"is_active": ["Must be a valid boolean."]},
            id="_case_not_a_boolean",
        ),
        pytest.param(
            {"url": RECEIVER_URL, "secret": "whsec_mine"},
            {"secret": ["Unknown field."]},
            id="_case_unknown_field",
        ),
    ],
)
def test_put_validates_its_body(body, details, owner, client_for):
    response = put(client_for(owner), body)

    assert response.status_code == 400
    assert error(response)["code"] == "invalid_input"
    assert error(response)["details"] == details
    assert not DeliveryDestination.objects.exists()


def test_put_with_a_non_json_body_is_invalid_input(owner, client_for):
    response = client_for(owner).put(URL, "{not json", content_type="application/json")

    assert response.status_code == 400
    assert error(response)["code"] == "invalid_input"


# --- rotate-secret ----------------------------------------------------------------------------------


def test_rotate_returns_the_new_secret_once_and_changes_the_hint(tenant, owner, client_for):
    client = client_for(owner)
    old_secret = put(client, {"url": RECEIVER_URL}).json()["secret"]
    old_hint = client.get(URL).json()["secret_hint"]

    response = client.post(ROTATE_URL)

    assert response.status_code == 200
    assert list(response.json()) == ["secret"]
    new_secret = response.json()["secret"]
    assert new_secret.startswith("whsec_")
    assert new_secret != old_secret
    assert DeliveryDestination.objects.get(tenant=tenant).secret == new_secret
    after = client.get(URL)
    assert after.json()["secret_hint"] not in (None, old_hint)
    assert new_secret not in after.content.decode()


def test_rotate_without_a_destination_is_a_conflict(owner, client_for):
    response = client_for(owner).post(ROTATE_URL)

    assert response.status_code == 409
    assert error(response)["code"] == "conflict"
    assert error(response)["message"] == "No delivery destination is configured yet. Set its URL first."
    assert sorted(error(response)) == ["code", "details", "message", "request_id"]


# --- test ----------------------------------------------------------------------------------------


def test_test_sends_a_signed_event_and_reports_it(tenant, owner, client_for, receiver):
    receiver.expect_request("/hook", method="POST").respond_with_data("ok")
    client = client_for(owner)
    secret = put(client, {"url": receiver.url_for("/hook")}).json()["secret"]

    response = client.post(TEST_URL)

    assert response.status_code == 200
    body = response.json()
    assert sorted(body) == ["delivered", "error", "latency_ms", "status_code", "webhook_id"]
    assert (body["delivered"], body["status_code"], body["error"]) == (True, 200, None)
    assert isinstance(body["latency_ms"], int)
    ((request, _response),) = receiver.log
    assert request.headers["webhook-id"] == body["webhook_id"]
    payload = Webhook(secret).verify(request.get_data(), dict(request.headers))
    assert payload["type"] == "converzia.test"
    assert payload["data"]["tenant_id"] == str(tenant.pk)


def test_tests_are_rate_limited_per_tenant(
    tenant, other_tenant, owner, make_member, client_for, receiver, monkeypatch
):
    monkeypatch.setattr(DeliveryTestRateThrottle, "THROTTLE_RATES", {"delivery_test": "2/minute"})
    receiver.expect_request("/hook", method="POST").respond_with_data("ok")
    DeliveryDestinationFactory(tenant=tenant, url=receiver.url_for("/hook"))
    DeliveryDestinationFactory(tenant=other_tenant, url=receiver.url_for("/hook"))
    client = client_for(owner)

    assert [client.post(TEST_URL).status_code for _ in range(2)] == [200, 200]
    throttled = client.post(TEST_URL)

    assert throttled.status_code == 429
    assert throttled.json()["error"]["code"] == "rate_limited"
    assert 1 <= int(throttled["Retry-After"]) <= 60
    assert len(receiver.log) == 2, "a throttled test sends nothing"
    # Another tenant has its own allowance.
    assert client_for(make_member(other_tenant, "OWNER")).post(TEST_URL).status_code == 200


def test_test_answers_200_whatever_the_receiver_said(tenant, owner, client_for, receiver):
    receiver.expect_request("/hook").respond_with_data("no", status=503)
    DeliveryDestinationFactory(tenant=tenant, url=receiver.url_for("/hook"))

    response = client_for(owner).post(TEST_URL)

    assert response.status_code == 200
    assert response.json()["delivered"] is False
    assert response.json()["status_code"] == 503
    assert "HTTP 503" in response.json()["error"]


def test_test_of_an_unreachable_receiver_reports_the_error(tenant, owner, client_for, settings):
    settings.DELIVERY_ALLOW_PRIVATE_NETWORKS = False
    DeliveryDestinationFactory(tenant=tenant, url=RECEIVER_URL)

    body = client_for(owner).post(TEST_URL).json()

    assert body["delivered"] is False
    assert body["status_code"] is None
    assert body["error"].startswith("refused: ")


def test_test_without_a_destination_is_a_conflict(owner, client_for):
    response = client_for(owner).post(TEST_URL)

    assert response.status_code == 409
    assert error(response)["code"] == "conflict"


# --- routes, methods, query parameters ---------------------------------------------------------------


@pytest.mark.parametrize("route", ["get", "put", "rotate", "test"])
def test_unknown_query_parameters_are_rejected(route, tenant, owner, client_for):
    DeliveryDestinationFactory(tenant=tenant)
    client = client_for(owner)
    path = {"get": URL, "put": URL, "rotate": ROTATE_URL, "test": TEST_URL}[route]

    method = client.get if route == "get" else client.put if route == "put" else client.post
    response = method(f"{path}?verbose=1", {"url": RECEIVER_URL} if route == "put" else None, format="json")

    assert response.status_code == 400
    assert error(response)["details"] == {"verbose": ["Unknown query parameter."]}


@pytest.mark.parametrize(
    ("method", "path"),
    [("delete", URL), ("post", URL), ("patch", URL), ("get", ROTATE_URL), ("get", TEST_URL)],
)
def test_other_methods_are_not_allowed(method, path, owner, client_for):
    response = getattr(client_for(owner), method)(path)

    assert response.status_code == 405
    assert error(response)["code"] == "method_not_allowed"


# --- roles and tenants -------------------------------------------------------------------------------

ROLE_MATRIX = [
    # (role, route, expected status): writes need manage_offers, reading needs view_leads.
    *[(TenantRole.OWNER, route, 200) for route in ("get", "put", "rotate", "test")],
    *[(TenantRole.ADMIN, route, 200) for route in ("get", "put", "rotate", "test")],
    *[(TenantRole.BILLING, route, 403) for route in ("get", "put", "rotate", "test")],
    (TenantRole.VIEWER, "get", 200),
    *[(TenantRole.VIEWER, route, 403) for route in ("put", "rotate", "test")],
]


@pytest.mark.parametrize(
    ("role", "route", "expected_status"),
    [pytest.param(*row, id=f"_case_{row[0].lower()}_{row[1]}") for row in ROLE_MATRIX],
)
def test_role_matrix(role, route, expected_status, tenant, make_member, client_for, receiver):
    receiver.expect_request("/hook").respond_with_data("ok")
    destination = DeliveryDestinationFactory(tenant=tenant, url=receiver.url_for("/hook"))
    user = make_member(tenant, role)

    response = call(client_for(user), route)

    assert response.status_code == expected_status
    stored = DeliveryDestination.objects.get(pk=destination.pk)
    if expected_status == 403:
        required = "view_leads" if route == "get" else "manage_offers"
        assert error(response) == {
            "code": "forbidden",
            "message": f"Your role does not allow this ({required}).",
            "details": {"required_permission": required},
            "request_id": response["X-Request-ID"],
        }
        # Denied means untouched: same URL and secret, and no test event went out.
        assert (stored.url, stored.secret) == (destination.url, destination.secret)
        assert receiver.log == []
    else:
        assert destination.secret not in response.content.decode() or route == "rotate"


@pytest.mark.parametrize("route", ["get", "put", "rotate", "test"])
def test_staff_may_act_for_any_tenant(route, tenant, staff_user, client_for, receiver):
    receiver.expect_request("/hook").respond_with_data("ok")
    destination = DeliveryDestinationFactory(tenant=tenant, url=receiver.url_for("/hook"))

    response = call(client_for(staff_user, tenant), route)

    assert response.status_code == 200
    if route == "put":
        assert DeliveryDestination.objects.get(pk=destination.pk).url == RECEIVER_URL
    if route == "get":
        assert response.json()["url"] == destination.url


@pytest.mark.parametrize("route", ["get", "put", "rotate", "test"])
def test_a_member_cannot_act_for_another_tenant(route, tenant, other_tenant, owner, client_for, receiver):
    receiver.expect_request("/hook").respond_with_data("ok")
    theirs = DeliveryDestinationFactory(tenant=other_tenant, url=receiver.url_for("/hook"))

    response = call(client_for(owner, other_tenant), route)

    assert response.status_code == 403
    assert error(response)["code"] == "not_a_member"
    stored = DeliveryDestination.objects.get(pk=theirs.pk)
    assert (stored.url, stored.secret) == (theirs.url, theirs.secret)
    assert receiver.log == []
    assert not DeliveryDestination.objects.filter(tenant=tenant).exists()


@pytest.mark.parametrize("status", [MembershipStatus.PENDING_APPROVAL, MembershipStatus.SUSPENDED])
def test_an_inactive_membership_is_not_a_member(status, tenant, client_for):
    user = TenantMemberFactory(tenant=tenant, status=status).user

    response = put(client_for(user, tenant), {"url": RECEIVER_URL})

    assert response.status_code == 403
    assert error(response)["code"] == "not_a_member"
    assert not DeliveryDestination.objects.exists()


@pytest.mark.parametrize("route", ["get", "put", "rotate", "test"])
def test_unauthenticated_requests_get_401(route, tenant):
    DeliveryDestinationFactory(tenant=tenant)

    response = call(APIClient(), route)

    assert response.status_code == 401
    assert error(response)["code"] == "unauthenticated"
    assert "Bearer" in response["WWW-Authenticate"]


# --- schema ------------------------------------------------------------------------------------------


def test_the_schema_documents_the_destination_routes():
    schema = json.loads(APIClient().get("/api/schema/", {"format": "json"}).content)

    paths = schema["paths"]
    assert sorted(paths[URL]) == ["get", "put"]
    assert sorted(paths[ROTATE_URL]) == ["post"]
    assert sorted(paths[TEST_URL]) == ["post"]
    assert all(
        operation["tags"] == ["portal"]
        for path in (URL, ROTATE_URL, TEST_URL)
        for operation in paths[path].values()
    )
    assert sorted(paths[URL]["get"]["responses"]) == ["200", "400", "401", "403", "500", "503"]
    assert sorted(paths[URL]["put"]["responses"]) == ["200", "201", "400", "401", "403", "500", "503"]
    assert sorted(paths[ROTATE_URL]["post"]["responses"]) == ["200", "400", "401", "403", "409", "500", "503"]
    assert sorted(paths[TEST_URL]["post"]["responses"]) == [
        *("200", "400", "401", "403", "409", "429", "500", "503")
    ]
    # Writes say that a paused tenant refuses them; reads do not.
    assert "tenant_suspended" in paths[URL]["put"]["responses"]["403"]["description"]
    assert "tenant_suspended" not in paths[URL]["get"]["responses"]["403"]["description"]
    components = schema["components"]["schemas"]
    assert "secret" not in components["DeliveryDestination"]["properties"]
    assert "secret" in components["DeliveryDestinationCreated"]["properties"]
