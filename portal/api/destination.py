"""The tenant's delivery destination (API.md "Portal": `/api/portal/delivery-destination`).

- `GET` answers 200 whether or not a destination exists: with none, `url` is null and `is_active` false,
  so a settings screen renders one shape and needs no 404 branch.
- `PUT {"url", "is_active"?}` creates (201, and the body carries `secret`, shown this once) or
  updates (200, no secret). `is_active` defaults to true, so saving a URL (re)enables delivery.
  Unknown body fields are refused (400 `invalid_input`), as unknown query parameters are.
- `POST …/rotate-secret` answers `{"secret"}` (shown this once); `POST …/test` sends a signed test
  event and answers 200 with the report whatever the receiver said. Both answer 409 `conflict` when
  no destination is configured.

Roles: DOMAIN.md §2.3 has no integration permission. Writes (PUT, rotate, test) need
`manage_offers` (OWNER, ADMIN): whoever sets up what the tenant sells also sets up where its leads
go. Reading needs `view_leads` (OWNER, ADMIN, VIEWER): the destination is where leads are sent, and
the secret is never shown there. Staff may act for any tenant with X-Tenant-ID.
"""

from __future__ import annotations

from typing import Any

from drf_spectacular.utils import extend_schema
from rest_framework import serializers, status
from rest_framework.request import Request
from rest_framework.response import Response

from converzia.api.base import TenantViewSet
from converzia.api.serializers import StrictInputSerializer
from converzia.api.throttling import DeliveryTestRateThrottle
from converzia.tenancy import Permission
from deliveries.models import DeliveryDestination
from deliveries.selectors import destination_get_for_tenant
from deliveries.services.destinations import (
    destination_configure,
    destination_secret_rotate,
    destination_test_send,
)


def _destination_body(destination: DeliveryDestination | None) -> dict[str, Any]:
    if destination is None:
        return {
            "url": None,
            "is_active": False,
            "secret_hint": None,
            "disabled_at": None,
            "disabled_reason": None,
            "last_success_at": None,
            "last_failure_at": None,
        }
    return {
        "url": destination.url,
        "is_active": destination.is_active,
        "secret_hint": destination.secret_hint,
        "disabled_at": destination.disabled_at,
        "disabled_reason": destination.disabled_reason or None,
        "last_success_at": destination.last_success_at,
        "last_failure_at": destination.last_failure_at,
    }


class DeliveryDestinationViewSet(TenantViewSet):
    """The tenant's webhook destination: read, configure, rotate its secret, send a test event."""

    queryset = DeliveryDestination.objects.none()
    pagination_class = None
    action_permissions = {
        "retrieve": Permission.VIEW_LEADS,
        "update": Permission.MANAGE_OFFERS,
        "rotate_secret": Permission.MANAGE_OFFERS,
        "test": Permission.MANAGE_OFFERS,
    }

    @property
    def schema_error_statuses(self) -> tuple[int, ...]:
        # Only these need an existing destination (409 `conflict` without one); tests are rate limited.
        action = getattr(self, "action", None)
        if action == "test":
            return (409, 429)
        return (409,) if action == "rotate_secret" else ()

    def get_throttles(self) -> list[Any]:
        # The test throttle counts per tenant, which is resolved only after DRF's own throttle check
        # in `initial`; `test` runs the check again once the tenant (and the role) are known.
        if getattr(self, "action", None) == "test" and hasattr(self, "tenant_context"):
            return [DeliveryTestRateThrottle()]
        return super().get_throttles()

    class InputSerializer(StrictInputSerializer):
        url = serializers.CharField(
            help_text="Your receiver's https URL. Its host must resolve to public addresses only."
        )
        is_active = serializers.BooleanField(
            required=False, default=True, help_text="Deliver to it (default true)."
        )

    class OutputSerializer(serializers.Serializer):
        url = serializers.CharField(allow_null=True, help_text="Null when no destination is configured.")
        is_active = serializers.BooleanField()
        secret_hint = serializers.CharField(
            allow_null=True, help_text="The first and last characters of the signing secret."
        )
        disabled_at = serializers.DateTimeField(allow_null=True)
        disabled_reason = serializers.CharField(
            allow_null=True, help_text="Why it was disabled (by you, or after a 410 from the receiver)."
        )
        last_success_at = serializers.DateTimeField(allow_null=True)
        last_failure_at = serializers.DateTimeField(allow_null=True)

    class CreatedSerializer(OutputSerializer):
        secret = serializers.CharField(
            help_text="The `whsec_` signing secret. Shown only in this response: store it now."
        )

    class SecretSerializer(serializers.Serializer):
        secret = serializers.CharField(
            help_text="The new `whsec_` signing secret. Shown only in this response: store it now."
        )

    class TestResultSerializer(serializers.Serializer):
        delivered = serializers.BooleanField(help_text="True when the receiver answered 2xx.")
        status_code = serializers.IntegerField(allow_null=True, help_text="Null when no response came back.")
        latency_ms = serializers.IntegerField()
        error = serializers.CharField(allow_null=True, help_text="Why it was not delivered; null if it was.")
        webhook_id = serializers.CharField(help_text="The `webhook-id` header the test event carried.")

    @extend_schema(
        summary="The delivery destination",
        description="`url` is null and `is_active` false when none is configured. Never shows the secret.",
        responses=OutputSerializer,
        tags=["portal"],
    )
    def retrieve(self, request: Request) -> Response:
        destination = destination_get_for_tenant(tenant=self.tenant)
        return Response(self.OutputSerializer(_destination_body(destination)).data)

    @extend_schema(
        summary="Configure the delivery destination",
        description=(
            "Creates it (201, with `secret` shown this once) or updates it (200, the secret is kept). "
            "Saving with `is_active` true (the default) re-enables a disabled destination and resumes "
            "deliveries that were waiting for one."
        ),
        request=InputSerializer,
        responses={200: OutputSerializer, 201: CreatedSerializer},
        tags=["portal"],
    )
    def update(self, request: Request) -> Response:
        payload = self.InputSerializer(data=request.data)
        payload.is_valid(raise_exception=True)
        destination, secret = destination_configure(
            tenant=self.tenant,
            url=payload.validated_data["url"],
            is_active=payload.validated_data["is_active"],
            actor=request.user,
        )
        body = _destination_body(destination)
        if secret is None:
            return Response(self.OutputSerializer(body).data)
        return Response(
            self.CreatedSerializer({**body, "secret": secret}).data, status=status.HTTP_201_CREATED
        )

    @extend_schema(
        summary="Rotate the signing secret",
        description="The old secret stops working at once. 409 when no destination is configured.",
        request=None,
        responses=SecretSerializer,
        tags=["portal"],
    )
    def rotate_secret(self, request: Request) -> Response:
        secret = destination_secret_rotate(tenant=self.tenant, actor=request.user)
        return Response(self.SecretSerializer({"secret": secret}).data)

    @extend_schema(
        summary="Send a signed test event",
        description=(
            "Sends a `converzia.test` event (active or not) and answers 200 with what happened, whatever "
            "the receiver said. Writes nothing. 409 when no destination is configured."
        ),
        request=None,
        responses=TestResultSerializer,
        tags=["portal"],
    )
    def test(self, request: Request) -> Response:
        self.check_throttles(request)
        result = destination_test_send(tenant=self.tenant)
        return Response(self.TestResultSerializer(result).data)


destination_view = DeliveryDestinationViewSet.as_view({"get": "retrieve", "put": "update"})
destination_rotate_secret_view = DeliveryDestinationViewSet.as_view({"post": "rotate_secret"})
destination_test_view = DeliveryDestinationViewSet.as_view({"post": "test"})
