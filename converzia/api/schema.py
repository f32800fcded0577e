"""OpenAPI schema pieces shared by every endpoint: the error envelope and the default error responses."""

from __future__ import annotations

from typing import Any

from drf_spectacular.openapi import AutoSchema
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse
from rest_framework import serializers
from rest_framework.permissions import SAFE_METHODS, AllowAny

from converzia.errors import ErrorCode


def error_code_choices() -> list[str]:
    """The error codes, for the `code` field and SPECTACULAR_SETTINGS["ENUM_NAME_OVERRIDES"]."""
    return [code.value for code in ErrorCode]


class ErrorSerializer(serializers.Serializer):
    code = serializers.ChoiceField(choices=error_code_choices())
    message = serializers.CharField(help_text="A human sentence; not meant for parsing.")
    details = serializers.DictField(help_text="Field errors for 400s (`{field: [messages]}`), else context.")
    request_id = serializers.CharField(help_text="The X-Request-ID of the request; quote it in reports.")


class ErrorResponseSerializer(serializers.Serializer):
    """`{"error": {...}}`: the one shape of every error response (API.md "Errors")."""

    error = ErrorSerializer()


def error_response(description: str) -> OpenApiResponse:
    """An error response in the one error shape, for `extend_schema(responses={404: ...})` where the
    view's own wording says more than the default description (e.g. which parameter named nothing)."""
    return OpenApiResponse(ErrorResponseSerializer, description=description)


NOT_MODIFIED_DESCRIPTION = "Not modified: `If-None-Match` matched the current `ETag`. No body."
IF_NONE_MATCH = OpenApiParameter(
    "If-None-Match",
    OpenApiTypes.STR,
    OpenApiParameter.HEADER,
    description="The `ETag` of an earlier answer: 304 without a body while the numbers are the same.",
)

ERROR_DESCRIPTIONS: dict[int, str] = {
    400: "`invalid_input`: field errors and unknown query parameters are listed in `details`.",
    401: "`unauthenticated`: no, invalid, expired or revoked credentials.",
    403: "`forbidden`: not allowed to do this.",
    404: "`not_found`: missing, or belongs to another tenant (the two are indistinguishable).",
    409: "`conflict`, `invalid_transition` or `insufficient_credits`: the current state does not allow it.",
    429: "`rate_limited`, with `Retry-After`.",
    500: "`internal_error`.",
    503: "`query_timeout` or `unavailable`, with `Retry-After`.",
}

TENANT_ERROR_DESCRIPTIONS: dict[int, str] = {
    400: " `tenant_required`: several memberships (or staff) and no X-Tenant-ID header.",
    403: (
        " `not_a_member`: X-Tenant-ID names a tenant the caller is not an active member of, or the "
        "caller has no active membership."
    ),
}
# Only writes are refused while the tenant is paused (converzia.tenancy.PAUSED_TENANT_STATUSES).
TENANT_WRITE_ERROR_DESCRIPTIONS: dict[int, str] = {
    403: " `tenant_suspended`: the tenant is SUSPENDED or ARCHIVED; its members may read, not write.",
}


class ApiAutoSchema(AutoSchema):
    """Adds the responses an operation can produce besides its success, errors pointing at the shared
    error component:
    - 400 and 500 everywhere; 401 and 403 unless the view is public; 404 when the path has an id;
      429 when the view is throttled;
    - 503 (`unavailable`, `query_timeout`) unless the view declares `schema_uses_database = False`;
    - 304 (and the `If-None-Match` header) when the view declares `schema_not_modified = True`;
    - what the view adds with `schema_error_statuses` (e.g. `(409,)`), or with its own
      `extend_schema(responses={404: error_response("...")})`, whose wording is kept.
    """

    def get_override_parameters(self) -> list[Any]:
        parameters = list(super().get_override_parameters())
        if getattr(self.view, "schema_not_modified", False):
            parameters.append(IF_NONE_MATCH)
        return parameters

    def get_serializer_name(self, serializer: Any, direction: Any) -> str:
        """Component names for serializers nested in views (STYLE.md pattern 3).

        `OfferViewSet.OutputSerializer` → `Offer`, `OfferViewSet.InputSerializer` → `OfferInput`, so
        every view can call its nested classes Output/Input without colliding in the schema.
        """
        qualname = type(serializer).__qualname__
        outer, _, inner = qualname.rpartition(".")
        if not outer or "<locals>" in qualname:
            return super().get_serializer_name(serializer, direction)
        base = outer.rpartition(".")[2]
        for suffix in ("ViewSet", "View"):
            base = base.removesuffix(suffix)
        inner = inner.removesuffix("Serializer")
        return base if inner == "Output" else base + inner

    def _get_response_bodies(self, direction: Any = "response") -> dict[str, Any]:
        responses = super()._get_response_bodies(direction)
        for status_code in sorted(self._error_statuses()):
            key = str(status_code)
            if key in responses:
                continue
            response = self._get_response_for_code(ErrorResponseSerializer, key, direction=direction)
            response["description"] = self._error_description(status_code)
            responses[key] = response
        if getattr(self.view, "schema_not_modified", False) and "304" not in responses:
            responses["304"] = {"description": NOT_MODIFIED_DESCRIPTION}
        return dict(sorted(responses.items()))

    def _error_description(self, status_code: int) -> str:
        description = ERROR_DESCRIPTIONS.get(status_code, "An error.")
        if hasattr(self.view, "required_permission"):  # a tenant view (converzia.api.base.TenantMixin)
            description += TENANT_ERROR_DESCRIPTIONS.get(status_code, "")
            if self.method.upper() not in SAFE_METHODS:
                description += TENANT_WRITE_ERROR_DESCRIPTIONS.get(status_code, "")
        return description

    def _error_statuses(self) -> set[int]:
        view = self.view
        statuses = {400, 500}
        permission_classes = getattr(view, "permission_classes", ())
        if not all(issubclass(cls, AllowAny) for cls in permission_classes):
            statuses |= {401, 403}
        if "{" in self.path:
            statuses.add(404)
        if getattr(view, "throttle_classes", ()):
            statuses.add(429)
        # A view that reads the database answers 503 `unavailable` when it cannot be reached.
        if getattr(view, "schema_uses_database", True):
            statuses.add(503)
        statuses |= set(getattr(view, "schema_error_statuses", ()))
        return statuses
