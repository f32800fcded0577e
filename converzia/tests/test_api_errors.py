"""Every error leaves the API in one shape, from every layer; request ids are echoed or minted."""

from __future__ import annotations

import logging

import pytest
from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.core.exceptions import ValidationError as DjangoValidationError
from django.http import Http404, HttpRequest, HttpResponse
from django.urls import include, path
from rest_framework.permissions import AllowAny
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.test import APIClient

from converzia.api.base import ApiView
from converzia.api.permissions import IsStaff
from converzia.errors import DomainError, ErrorCode
from converzia.tests.factories import StaffUserFactory, UserFactory

pytestmark = [pytest.mark.django_db, pytest.mark.urls(__name__)]

SECRET_DETAIL = "password=hunter2 at db.internal:5432"


class FakeQueryTimeout(DomainError):
    """Stands in for converzia.db.QueryTimeout until that exists: same code, status and hint."""

    code, http_status, message = ErrorCode.QUERY_TIMEOUT, 503, "The query took too long."


class PublicView(ApiView):
    permission_classes = (AllowAny,)
    authentication_classes = ()


class BoomView(PublicView):
    def get(self, request: Request) -> Response:
        raise RuntimeError(SECRET_DETAIL)


class TimeoutView(PublicView):
    def get(self, request: Request) -> Response:
        raise FakeQueryTimeout()


class TimeoutWithHintView(PublicView):
    def get(self, request: Request) -> Response:
        raise FakeQueryTimeout(retry_after=7, details={"query": "lead_stats"})


class DjangoValidationView(PublicView):
    def get(self, request: Request) -> Response:
        raise DjangoValidationError({"name": ["Too long."], "__all__": ["Inconsistent."]})


class DjangoHttp404View(PublicView):
    def get(self, request: Request) -> Response:
        raise Http404("secret path detail")


class QueryParamsView(PublicView):
    allowed_query_params = {"days"}

    def get(self, request: Request) -> Response:
        return Response({"ok": True})


class StaffOnlyView(ApiView):
    permission_classes = (IsStaff,)

    def get(self, request: Request) -> Response:
        return Response({"ok": True})


def plain_django_boom(request: HttpRequest) -> HttpResponse:
    raise RuntimeError(SECRET_DETAIL)


def plain_django_404(request: HttpRequest) -> HttpResponse:
    raise Http404("secret path detail")


def plain_django_forbidden(request: HttpRequest) -> HttpResponse:
    raise DjangoPermissionDenied("secret reason")


urlpatterns = [
    path("api/test/boom", BoomView.as_view()),
    path("api/test/timeout", TimeoutView.as_view()),
    path("api/test/timeout-hint", TimeoutWithHintView.as_view()),
    path("api/test/django-validation", DjangoValidationView.as_view()),
    path("api/test/drf-http404", DjangoHttp404View.as_view()),
    path("api/test/params", QueryParamsView.as_view()),
    path("api/test/staff", StaffOnlyView.as_view()),
    path("api/test/plain-boom", plain_django_boom),
    path("api/test/plain-404", plain_django_404),
    path("api/test/plain-403", plain_django_forbidden),
    path("", include("converzia.urls")),
]
handler400 = "converzia.views.bad_request"
handler403 = "converzia.views.permission_denied"
handler404 = "converzia.views.page_not_found"
handler500 = "converzia.views.server_error"


def error_of(response) -> dict:
    """The error object, after checking the envelope and that request_id matches the header."""
    assert response["Content-Type"] == "application/json"
    body = response.json()
    assert list(body) == ["error"]
    assert list(body["error"]) == ["code", "message", "details", "request_id"]
    assert body["error"]["request_id"] == response["X-Request-ID"]
    return body["error"]


@pytest.fixture
def client() -> APIClient:
    # Let Django turn escaped exceptions into its 500 response instead of re-raising them in the test.
    return APIClient(raise_request_exception=False)


# --- Django-level 404 and 500 -----------------------------------------------------------------------


@pytest.mark.parametrize("method", ["get", "post", "delete"])
def test_unknown_api_path_is_json_404(method, client):
    response = getattr(client, method)("/api/no/such/thing")

    assert response.status_code == 404
    assert error_of(response) | {"request_id": None} == {
        "code": "not_found",
        "message": "Not found.",
        "details": {},
        "request_id": None,
    }


def test_api_path_missing_its_trailing_slash_is_json_404_not_a_redirect(client):
    response = client.get("/api/schema")

    assert response.status_code == 404
    assert error_of(response)["code"] == "not_found"


def test_http404_from_a_plain_django_view_under_api_is_json(client):
    response = client.get("/api/test/plain-404")

    assert response.status_code == 404
    error = error_of(response)
    assert error["code"] == "not_found"
    assert "secret" not in response.content.decode()


def test_http404_from_an_api_view_is_json(client):
    response = client.get("/api/test/drf-http404")

    assert response.status_code == 404
    assert error_of(response)["message"] == "Not found."
    assert "secret" not in response.content.decode()


def test_permission_denied_from_a_plain_django_view_under_api_is_json(client):
    response = client.get("/api/test/plain-403")

    assert response.status_code == 403
    assert error_of(response)["code"] == "forbidden"
    assert "secret" not in response.content.decode()


def test_disallowed_host_under_api_is_json_400(client):
    response = client.get("/api/health/live", HTTP_HOST="evil.example")

    assert response.status_code == 400
    assert error_of(response)["code"] == "invalid_input"


def test_non_api_404_stays_django_html(client):
    response = client.get("/no-such-page/")

    assert response.status_code == 404
    assert response["Content-Type"].startswith("text/html")


def test_crash_in_a_plain_django_view_under_api_is_json_500(client):
    response = client.get("/api/test/plain-boom")

    assert response.status_code == 500
    error = error_of(response)
    assert error["code"] == "internal_error"
    assert "hunter2" not in response.content.decode()


def test_crash_in_an_api_view_is_json_500_and_logged_with_traceback(client, caplog):
    with caplog.at_level(logging.ERROR, logger="converzia.api"):
        response = client.get("/api/test/boom")

    assert response.status_code == 500
    error = error_of(response)
    assert error["code"] == "internal_error"
    assert error["details"] == {}
    assert "hunter2" not in response.content.decode()
    records = [record for record in caplog.records if record.name == "converzia.api"]
    assert len(records) == 1
    assert records[0].exc_info[0] is RuntimeError
    assert "BoomView" in records[0].getMessage()


def test_crash_inside_the_offers_endpoint_is_json_500(tenant, owner, client_for, monkeypatch):
    def explode(**kwargs):
        raise RuntimeError(SECRET_DETAIL)

    monkeypatch.setattr("portal.api.views.offer_list_for_tenant", explode)

    response = client_for(owner).get("/api/portal/offers")

    assert response.status_code == 500
    assert error_of(response)["code"] == "internal_error"
    assert "hunter2" not in response.content.decode()


# --- DRF and domain errors --------------------------------------------------------------------------


def test_query_timeout_is_503_with_retry_after(client):
    response = client.get("/api/test/timeout")

    assert response.status_code == 503
    assert response["Retry-After"] == "2"
    assert error_of(response)["code"] == "query_timeout"


def test_domain_error_retry_after_and_details_reach_the_client(client):
    response = client.get("/api/test/timeout-hint")

    assert response.status_code == 503
    assert response["Retry-After"] == "7"
    error = error_of(response)
    assert error["message"] == "The query took too long."
    assert error["details"] == {"query": "lead_stats"}


def test_django_validation_error_is_400_invalid_input(client):
    response = client.get("/api/test/django-validation")

    assert response.status_code == 400
    error = error_of(response)
    assert error["code"] == "invalid_input"
    assert error["details"] == {"name": ["Too long."], "non_field_errors": ["Inconsistent."]}


def test_method_not_allowed_is_405(owner, client_for):
    response = client_for(owner).delete("/api/portal/offers")

    assert response.status_code == 405
    assert error_of(response)["code"] == "method_not_allowed"
    assert response["Allow"] == "GET, HEAD, OPTIONS"


def test_unknown_query_parameter_is_400_listing_them(client):
    response = client.get("/api/test/params", {"days": "7", "dayz": "7", "x": "1"})

    assert response.status_code == 400
    error = error_of(response)
    assert error["code"] == "invalid_input"
    assert error["details"] == {"dayz": ["Unknown query parameter."], "x": ["Unknown query parameter."]}


def test_declared_query_parameters_and_format_are_accepted(client):
    assert client.get("/api/test/params", {"days": "7", "format": "json"}).status_code == 200


def test_unauthenticated_check_comes_before_query_parameters(client):
    response = client.get("/api/portal/offers", {"bogus": "1"})

    assert response.status_code == 401
    assert error_of(response)["code"] == "unauthenticated"


# --- IsStaff ----------------------------------------------------------------------------------------


def test_is_staff_permission(client_for):
    staff = client_for(StaffUserFactory()).get("/api/test/staff")
    member = client_for(UserFactory()).get("/api/test/staff")
    anonymous = APIClient().get("/api/test/staff")

    assert staff.status_code == 200
    assert member.status_code == 403
    assert error_of(member) | {"request_id": None} == {
        "code": "forbidden",
        "message": "This endpoint is for Converzia staff.",
        "details": {},
        "request_id": None,
    }
    assert anonymous.status_code == 401
    assert error_of(anonymous)["code"] == "unauthenticated"


# --- request ids ------------------------------------------------------------------------------------


def test_valid_incoming_request_id_is_echoed_in_header_and_error_body(client):
    response = client.get("/api/no/such/thing", HTTP_X_REQUEST_ID="req-abc.123:XYZ")

    assert response["X-Request-ID"] == "req-abc.123:XYZ"
    assert error_of(response)["request_id"] == "req-abc.123:XYZ"


@pytest.mark.parametrize("incoming", ["short", "has spaces in it", "x" * 129, "semi;colon;header"])
def test_invalid_incoming_request_id_is_replaced(incoming, client):
    response = client.get("/api/no/such/thing", HTTP_X_REQUEST_ID=incoming)

    assert response["X-Request-ID"] != incoming
    assert len(response["X-Request-ID"]) == 32
    assert error_of(response)["request_id"] == response["X-Request-ID"]


def test_successful_responses_carry_a_request_id(client):
    response = client.get("/api/health/live")

    assert response.status_code == 200
    assert len(response["X-Request-ID"]) == 32
