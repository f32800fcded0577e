"""Bearer tokens, session auth, POST /api/auth/token (with its throttle) and `create_api_token`."""

from __future__ import annotations

import datetime as dt
import io
import itertools

import pytest
from django.core.management import CommandError, call_command
from django.urls import include, path
from django.utils import timezone
from rest_framework.permissions import IsAuthenticated
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.test import APIClient

from converzia.api.base import ApiView
from converzia.api.throttling import AuthTokenRateThrottle
from converzia.models import ApiToken
from converzia.services import api_token_issue, api_token_revoke
from converzia.tests.factories import UserFactory

pytestmark = [pytest.mark.django_db, pytest.mark.urls(__name__)]

PASSWORD = "pass-word-123"  # UserFactory's
TOKEN_URL = "/api/auth/token"
WHOAMI_URL = "/api/test/whoami"


class WhoAmIView(ApiView):
    permission_classes = (IsAuthenticated,)

    def get(self, request: Request) -> Response:
        return Response({"email": request.user.email})


urlpatterns = [
    path("api/test/whoami", WhoAmIView.as_view()),
    path("", include("converzia.urls")),
]
handler404 = "converzia.views.page_not_found"
handler500 = "converzia.views.server_error"

_addresses = (f"10.9.{a}.{b}" for a, b in itertools.product(range(256), range(1, 255)))


@pytest.fixture
def anonymous_client() -> APIClient:
    # A fresh client address per test: the login throttle counts per address in the shared cache.
    return APIClient(REMOTE_ADDR=next(_addresses))


def bearer(raw: str) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {raw}")
    return client


def assert_unauthenticated(response, message: str) -> None:
    assert response.status_code == 401
    assert response["WWW-Authenticate"] == 'Bearer realm="api"'
    assert response["Content-Type"] == "application/json"
    body = response.json()
    assert body == {
        "error": {
            "code": "unauthenticated",
            "message": message,
            "details": {},
            "request_id": response["X-Request-ID"],
        }
    }


# --- bearer tokens ----------------------------------------------------------------------------------


def test_missing_token_is_401_with_error_shape_and_request_id(anonymous_client):
    response = anonymous_client.get(WHOAMI_URL)

    assert_unauthenticated(response, "Authentication credentials were not provided.")
    assert len(response["X-Request-ID"]) == 32


def test_valid_token_authenticates():
    user = UserFactory()
    issued = api_token_issue(user=user)

    response = bearer(issued.raw).get(WHOAMI_URL)

    assert response.status_code == 200
    assert response.json() == {"email": user.email}


def test_unknown_token_is_rejected():
    api_token_issue(user=UserFactory())

    response = bearer("cvz_not-a-real-token").get(WHOAMI_URL)

    assert_unauthenticated(response, "Invalid token.")


def test_revoked_token_is_rejected():
    issued = api_token_issue(user=UserFactory())
    api_token_revoke(token=issued.token)

    response = bearer(issued.raw).get(WHOAMI_URL)

    assert_unauthenticated(response, "This token has been revoked.")


def test_expired_token_is_rejected():
    issued = api_token_issue(user=UserFactory(), expires_at=timezone.now() - dt.timedelta(seconds=1))

    response = bearer(issued.raw).get(WHOAMI_URL)

    assert_unauthenticated(response, "This token has expired.")


def test_token_of_inactive_user_is_rejected():
    user = UserFactory(is_active=False)
    issued = api_token_issue(user=user)

    response = bearer(issued.raw).get(WHOAMI_URL)

    assert_unauthenticated(response, "This user account is disabled.")


@pytest.mark.parametrize("header", ["Bearer", "Bearer a b", "Bearer caf\u00e9"])
def test_malformed_bearer_header_is_rejected(header):
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=header)

    response = client.get(WHOAMI_URL)

    assert response.status_code == 401
    assert response.json()["error"]["code"] == "unauthenticated"


def test_revoke_is_idempotent():
    issued = api_token_issue(user=UserFactory())
    first = api_token_revoke(token=issued.token).revoked_at

    second = api_token_revoke(token=ApiToken.objects.get(pk=issued.token.pk)).revoked_at

    assert first is not None
    assert second == first
    assert ApiToken.objects.get(pk=issued.token.pk).revoked_at == first


def test_last_used_at_is_written_at_most_once_a_minute(django_assert_num_queries, monkeypatch):
    issued = api_token_issue(user=UserFactory())
    client = bearer(issued.raw)

    with django_assert_num_queries(3):  # the token's user id, SELECT token+user, UPDATE last_used_at
        client.get(WHOAMI_URL)
    first_use = ApiToken.objects.get(pk=issued.token.pk).last_used_at
    # Within the minute: no write. The principal is cached (converzia.principal); the one query is
    # the view reading `email`, which the cache does not hold.
    with django_assert_num_queries(1):
        client.get(WHOAMI_URL)
    assert ApiToken.objects.get(pk=issued.token.pk).last_used_at == first_use

    # Two minutes on, the cached principal is too old to trust: the token is read and stamped again
    # (SELECT token+user, UPDATE).
    later = timezone.now() + dt.timedelta(minutes=2)
    monkeypatch.setattr(timezone, "now", lambda: later)
    with django_assert_num_queries(2):
        client.get(WHOAMI_URL)
    assert ApiToken.objects.get(pk=issued.token.pk).last_used_at == later


def test_first_use_records_last_used_at():
    issued = api_token_issue(user=UserFactory())
    before = timezone.now()

    bearer(issued.raw).get(WHOAMI_URL)

    assert ApiToken.objects.get(pk=issued.token.pk).last_used_at >= before


def test_only_the_digest_is_stored():
    issued = api_token_issue(user=UserFactory(), name="ci")

    stored = ApiToken.objects.get(pk=issued.token.pk)

    assert stored.key_digest == ApiToken.digest(issued.raw)
    assert issued.raw not in {stored.key_digest, stored.key_prefix}
    assert stored.key_prefix == issued.raw[:12]
    assert stored.name == "ci"


# --- session authentication -------------------------------------------------------------------------


def test_session_authentication_works():
    user = UserFactory()
    client = APIClient()
    assert client.login(email=user.email, password=PASSWORD)

    response = client.get(WHOAMI_URL)

    assert response.status_code == 200
    assert response.json() == {"email": user.email}


# --- POST /api/auth/token ---------------------------------------------------------------------------


def test_login_returns_a_working_token(anonymous_client):
    user = UserFactory()

    response = anonymous_client.post(TOKEN_URL, {"email": user.email, "password": PASSWORD}, format="json")

    assert response.status_code == 200
    raw = response.json()["token"]
    assert list(response.json()) == ["token"]
    token = ApiToken.objects.get(user=user)
    assert token.key_digest == ApiToken.digest(raw)
    assert token.name == "login"
    assert bearer(raw).get(WHOAMI_URL).json() == {"email": user.email}


def test_login_email_is_case_insensitive(anonymous_client):
    user = UserFactory(email="mixed.case@example.com")

    response = anonymous_client.post(
        TOKEN_URL, {"email": "Mixed.Case@EXAMPLE.com", "password": PASSWORD}, format="json"
    )

    assert response.status_code == 200
    assert ApiToken.objects.filter(user=user).count() == 1


@pytest.mark.parametrize(
    ("_case", "email", "password"),
    [
        ("_case_wrong_password", "known@example.com", "wrong-password"),
        ("_case_unknown_email", "nobody@example.com", PASSWORD),
    ],
)
def test_login_with_bad_credentials_is_401_and_issues_nothing(_case, email, password, anonymous_client):
    UserFactory(email="known@example.com")

    response = anonymous_client.post(TOKEN_URL, {"email": email, "password": password}, format="json")

    assert_unauthenticated(response, "The email or password is incorrect.")
    assert ApiToken.objects.count() == 0


def test_login_of_inactive_user_is_401(anonymous_client):
    user = UserFactory(is_active=False)

    response = anonymous_client.post(TOKEN_URL, {"email": user.email, "password": PASSWORD}, format="json")

    assert response.status_code == 401
    assert ApiToken.objects.count() == 0


def test_login_with_missing_fields_is_400_with_field_details(anonymous_client):
    response = anonymous_client.post(TOKEN_URL, {}, format="json")

    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "invalid_input"
    assert error["details"] == {"email": ["This field is required."], "password": ["This field is required."]}
    assert ApiToken.objects.count() == 0


def test_login_with_malformed_json_is_400(anonymous_client):
    response = anonymous_client.post(TOKEN_URL, b"{not json", content_type="application/json")

    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_input"
    assert response.json()["error"]["message"] == "The request body could not be parsed."


def test_login_ignores_a_bad_bearer_header(anonymous_client):
    user = UserFactory()
    anonymous_client.credentials(HTTP_AUTHORIZATION="Bearer stale-token")

    response = anonymous_client.post(TOKEN_URL, {"email": user.email, "password": PASSWORD}, format="json")

    assert response.status_code == 200


def test_login_get_is_method_not_allowed(anonymous_client):
    response = anonymous_client.get(TOKEN_URL)

    assert response.status_code == 405
    assert response.json()["error"]["code"] == "method_not_allowed"


def test_login_is_throttled_per_client_address(anonymous_client, monkeypatch):
    monkeypatch.setattr(AuthTokenRateThrottle, "THROTTLE_RATES", {"auth_token": "2/minute"})
    user = UserFactory()
    bad = {"email": user.email, "password": "wrong"}

    statuses = [anonymous_client.post(TOKEN_URL, bad, format="json").status_code for _ in range(2)]
    throttled = anonymous_client.post(TOKEN_URL, {"email": user.email, "password": PASSWORD}, format="json")
    other_address = APIClient(REMOTE_ADDR="10.250.0.1").post(TOKEN_URL, bad, format="json")

    assert statuses == [401, 401]
    assert throttled.status_code == 429
    assert throttled.json()["error"]["code"] == "rate_limited"
    assert 1 <= int(throttled["Retry-After"]) <= 60
    assert throttled.json()["error"]["details"] == {"retry_after": int(throttled["Retry-After"])}
    assert other_address.status_code == 401
    assert ApiToken.objects.count() == 0


def test_throttle_ignores_forged_forwarded_for(anonymous_client, monkeypatch):
    monkeypatch.setattr(AuthTokenRateThrottle, "THROTTLE_RATES", {"auth_token": "1/minute"})
    body = {"email": "x@example.com", "password": "wrong"}

    first = anonymous_client.post(TOKEN_URL, body, format="json", HTTP_X_FORWARDED_FOR="1.1.1.1")
    second = anonymous_client.post(TOKEN_URL, body, format="json", HTTP_X_FORWARDED_FOR="2.2.2.2")

    assert (first.status_code, second.status_code) == (401, 429)


# --- manage.py create_api_token ---------------------------------------------------------------------


def test_create_api_token_prints_a_working_token_once():
    user = UserFactory(email="ops@example.com")
    out, err = io.StringIO(), io.StringIO()

    call_command("create_api_token", "OPS@example.com", "--name", "ci", stdout=out, stderr=err)

    raw = out.getvalue().strip()
    token = ApiToken.objects.get(user=user)
    assert token.name == "ci"
    assert token.key_digest == ApiToken.digest(raw)
    assert raw not in err.getvalue()
    assert "cannot be shown again" in err.getvalue()
    assert bearer(raw).get(WHOAMI_URL).json() == {"email": "ops@example.com"}


def test_create_api_token_for_unknown_email_fails():
    UserFactory(email="someone@example.com")

    with pytest.raises(CommandError, match="No user with email 'nobody@example.com'"):
        call_command("create_api_token", "nobody@example.com", stdout=io.StringIO())

    assert ApiToken.objects.count() == 0


def test_create_api_token_for_inactive_user_fails():
    UserFactory(email="gone@example.com", is_active=False)

    with pytest.raises(CommandError, match="inactive"):
        call_command("create_api_token", "gone@example.com", stdout=io.StringIO())

    assert ApiToken.objects.count() == 0
