"""`Authorization: Bearer <token>` authentication against `converzia.models.ApiToken`."""

from __future__ import annotations

from typing import Any

from drf_spectacular.extensions import OpenApiAuthenticationExtension
from rest_framework import exceptions
from rest_framework.authentication import BaseAuthentication, get_authorization_header
from rest_framework.request import Request

from converzia.errors import Unauthenticated
from converzia.models import ApiToken, User
from converzia.principal import principal_authenticate
from converzia.request_context import user_id_var

BEARER_REALM = 'Bearer realm="api"'


class BearerTokenAuthentication(BaseAuthentication):
    """Per-user API tokens. Requests without a Bearer header fall through to the next class (session).

    The principal comes from Redis when cached (converzia.principal); `request.user` is then a `User`
    with its id and flags loaded and other fields deferred. The principal rides on the user as
    `_principal`, so tenant resolution can use its cached memberships.
    """

    keyword = b"bearer"

    def authenticate(self, request: Request) -> tuple[User, ApiToken] | None:
        parts = get_authorization_header(request).split()
        if not parts or parts[0].lower() != self.keyword:
            return None
        if len(parts) != 2:
            raise exceptions.AuthenticationFailed("The Authorization header must be 'Bearer <token>'.")
        try:
            raw_token = parts[1].decode("ascii")
        except UnicodeDecodeError:
            raise exceptions.AuthenticationFailed("Invalid token.") from None
        try:
            principal = principal_authenticate(raw_token=raw_token)
        except Unauthenticated as exc:
            # DRF only resets `request.user` on its own exception type; a foreign one would leave the
            # request half-authenticated for the renderer.
            raise exceptions.AuthenticationFailed(exc.message) from None
        user = principal.user
        user._principal = principal  # type: ignore[attr-defined]
        user_id_var.set(str(user.pk))
        return user, principal.token

    def authenticate_header(self, request: Request) -> str:
        return BEARER_REALM


class BearerTokenScheme(OpenApiAuthenticationExtension):
    """Documents the Bearer scheme in the OpenAPI schema."""

    target_class = BearerTokenAuthentication
    name = "bearerAuth"

    def get_security_definition(self, auto_schema: Any) -> dict[str, str]:
        return {
            "type": "http",
            "scheme": "bearer",
            "description": (
                "A personal API token: `manage.py create_api_token <email>` or POST /api/auth/token."
            ),
        }
