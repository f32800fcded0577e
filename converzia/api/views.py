"""Kernel endpoints: token login, liveness and readiness."""

from __future__ import annotations

from typing import Any

from django.contrib.auth import authenticate
from drf_spectacular.utils import extend_schema
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView
from rest_framework import serializers
from rest_framework.permissions import AllowAny
from rest_framework.request import Request
from rest_framework.response import Response

from converzia.api.base import ApiView
from converzia.api.metadata import ApiMetadata
from converzia.api.renderers import OrjsonRenderer
from converzia.api.serializers import (
    HealthLiveSerializer,
    TokenCredentialsSerializer,
    TokenResponseSerializer,
)
from converzia.api.throttling import AuthTokenRateThrottle
from converzia.errors import Unauthenticated
from converzia.observability.health import readiness
from converzia.services import api_token_issue

LOGIN_TOKEN_NAME = "login"


class AuthTokenView(ApiView):
    """Exchange an email and password for a new personal API token."""

    # Credentials are in the body; a session or a stale bearer header must not get in the way
    # (and without authenticators the view needs no CSRF token).
    authentication_classes = ()
    permission_classes = (AllowAny,)
    throttle_classes = (AuthTokenRateThrottle,)
    schema_error_statuses = (401,)
    serializer_class = TokenCredentialsSerializer

    @extend_schema(
        operation_id="auth_token_create",
        request=TokenCredentialsSerializer,
        responses={200: TokenResponseSerializer},
        auth=[],
        tags=["auth"],
    )
    def post(self, request: Request) -> Response:
        serializer = TokenCredentialsSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        # The auth backend lower-cases the email (emails are stored lower-cased), rejects inactive users
        # and spends the same hashing time on unknown emails as on wrong passwords.
        user = authenticate(
            request._request,
            email=serializer.validated_data["email"],
            password=serializer.validated_data["password"],
        )
        if user is None:
            raise Unauthenticated("The email or password is incorrect.")
        issued = api_token_issue(user=user, name=LOGIN_TOKEN_NAME)
        return Response(TokenResponseSerializer({"token": issued.raw}).data)


class HealthLiveView(ApiView):
    """Liveness: the process answers requests. Touches neither the database nor the cache."""

    authentication_classes = ()
    permission_classes = (AllowAny,)
    throttle_classes = ()
    schema_uses_database = False

    @extend_schema(
        operation_id="health_live", responses={200: HealthLiveSerializer}, auth=[], tags=["health"]
    )
    def get(self, request: Request) -> Response:
        return Response({"status": "ok"}, headers={"Cache-Control": "no-store"})


class HealthView(ApiView):
    """Readiness: database, cache, queue depth and stats-view age (converzia.observability.health).

    200 `ok` or `degraded` (Redis down, a stale stats view); 503 `unavailable` when the database is
    unreachable. No auth, never cached.
    """

    authentication_classes = ()
    permission_classes = (AllowAny,)
    throttle_classes = ()

    class OutputSerializer(serializers.Serializer):
        status = serializers.ChoiceField(choices=["ok", "degraded", "unavailable"])
        version = serializers.CharField()
        time = serializers.DateTimeField()
        checks = serializers.JSONField()

    @extend_schema(
        operation_id="health_ready",
        responses={200: OutputSerializer, 503: OutputSerializer},
        auth=[],
        tags=["health"],
        description=(
            "checks: database {status, latency_ms}; cache {status, latency_ms}; queue {status,"
            " pending_events, due_deliveries, oldest_pending_age_s, latency_ms}; stats_view {status,"
            " refreshed_at, age_s, latency_ms}."
        ),
    )
    def get(self, request: Request) -> Response:
        result = readiness()
        return Response(result.body, status=result.http_status, headers={"Cache-Control": "no-store"})


class JsonOptionsMixin:
    """For views whose renderers are not JSON (the schema's YAML, the docs page's HTML template, which
    cannot render it at all: that was a 500): OPTIONS answers JSON, like on every other route."""

    metadata_class = ApiMetadata

    def get_renderers(self) -> list[Any]:
        request = getattr(self, "request", None)
        if request is not None and request.method == "OPTIONS":
            return [OrjsonRenderer()]
        return super().get_renderers()  # type: ignore[misc]


class ApiSchemaView(JsonOptionsMixin, SpectacularAPIView):
    """The OpenAPI schema. Public on purpose: the contract is not a secret, and clients generate code
    from it."""

    authentication_classes = ()
    permission_classes = (AllowAny,)


class ApiDocsView(JsonOptionsMixin, SpectacularSwaggerView):
    """The Swagger UI page (public, like the schema it renders)."""

    authentication_classes = ()
    permission_classes = (AllowAny,)
