"""Base views for every endpoint: query-parameter checking, tenant resolution and role checks.

Pick one of:
- `ApiView` / `ApiViewSet`: authenticated (or as the view declares) endpoints that act for no tenant.
- `TenantApiView` / `TenantViewSet`: portal endpoints. The tenant is resolved once per request (API.md
  "Tenant"), kept on `request.tenant_context` / `self.tenant`, put in the logging context, and the role
  is checked against the view's declarative `required_permission` (or `action_permissions[action]`).
  Writes (any method but GET, HEAD, OPTIONS) are refused while the tenant is paused (403
  `tenant_suspended`, `converzia.tenancy.PAUSED_TENANT_STATUSES`), except for staff.

OPTIONS is answered by `ApiMetadata` after the same checks as the route's methods: a tenant route
answers it to whoever may call at least one of its methods, and refuses anyone else exactly as that
method would (docs/api.md "OPTIONS and HEAD"). HEAD is GET without the body.

Every view declares the query parameters it understands in `allowed_query_params` (a set, or a mapping
from viewset action to a set); anything else answers 400 `invalid_input`. The pagination parameters
(`cursor`, `page_size`) are allowed automatically where the view paginates, and `format` everywhere.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, ClassVar

from django.core.exceptions import ImproperlyConfigured
from django.db.models import Model
from rest_framework.generics import GenericAPIView
from rest_framework.permissions import SAFE_METHODS
from rest_framework.request import Request
from rest_framework.viewsets import GenericViewSet, ViewSetMixin

from converzia.api.metadata import ApiMetadata
from converzia.api.pagination import KeysetPagination
from converzia.api.schema import ApiAutoSchema
from converzia.db.prepared import PreparedQuery
from converzia.errors import Forbidden, InvalidInput
from converzia.models import Tenant
from converzia.request_context import tenant_id_var, user_id_var
from converzia.tenancy import Permission, TenantContext, resolve_tenant

TENANT_HEADER = "X-Tenant-ID"
# Understood by DRF itself on every view (`?format=json`).
ALWAYS_ALLOWED_QUERY_PARAMS = frozenset({"format"})

_UNDECLARED = object()


class ApiMixin:
    """Shared by every Converzia API view (mixed in ahead of a DRF generic view or viewset)."""

    allowed_query_params: ClassVar[Iterable[str] | Mapping[str, Iterable[str]]] = ()
    schema = ApiAutoSchema()
    metadata_class = ApiMetadata

    def initial(self, request: Request, *args: Any, **kwargs: Any) -> None:
        super().initial(request, *args, **kwargs)  # type: ignore[misc]
        if request.user.is_authenticated:
            user_id_var.set(str(request.user.pk))
        if self.handles_method(request):
            self.check_query_params(request)

    def handles_method(self, request: Request) -> bool:
        """False when DRF is about to answer 405: checks for a route that does not exist are moot."""
        method = (request.method or "").lower()
        return method in self.http_method_names and getattr(self, method, None) is not None  # type: ignore[attr-defined]

    def is_paginated(self) -> bool:
        if getattr(self, "pagination_class", None) is None:
            return False
        if isinstance(self, ViewSetMixin):
            return getattr(self, "action", None) == "list"
        return True

    def paginate_prepared(self, query: PreparedQuery, model: type[Model], **arguments: Any) -> list[Any]:
        """A keyset page from a prepared query (KeysetPagination.paginate_prepared)."""
        return self.paginator.paginate_prepared(query, model, self.request, view=self, **arguments)  # type: ignore[attr-defined]

    def get_allowed_query_params(self) -> frozenset[str]:
        declared = self.allowed_query_params
        if isinstance(declared, Mapping):
            names = set(declared.get(getattr(self, "action", None), ()))
        else:
            names = set(declared)
        if self.is_paginated():
            names |= self.paginator.query_params  # type: ignore[attr-defined]
        return frozenset(names) | ALWAYS_ALLOWED_QUERY_PARAMS

    def check_query_params(self, request: Request) -> None:
        allowed = self.get_allowed_query_params()
        unknown = sorted(set(request.query_params) - allowed)
        if unknown:
            accepted = ", ".join(sorted(allowed - ALWAYS_ALLOWED_QUERY_PARAMS)) or "none"
            raise InvalidInput(
                f"Unknown query parameter(s): {', '.join(unknown)}. Accepted here: {accepted}.",
                details={name: ["Unknown query parameter."] for name in unknown},
            )


class TenantMixin:
    """Resolves the acting tenant and enforces the view's role permission (403 `forbidden`).

    Declare `required_permission` (a `Permission`, or None for "any member") on every subclass;
    `action_permissions` overrides it per viewset action.
    """

    required_permission: ClassVar[Permission | None | object] = _UNDECLARED
    action_permissions: ClassVar[Mapping[str, Permission | None]] = {}

    tenant_context: TenantContext

    @classmethod
    def as_view(cls, *args: Any, **kwargs: Any) -> Any:
        # Fail at URL loading, not on the first request: a tenant view without a declared permission
        # is a hole waiting to be found.
        if cls.required_permission is _UNDECLARED:
            actions = (args[0] if args else kwargs.get("actions")) or {}
            undeclared = sorted(set(actions.values()) - set(cls.action_permissions)) if actions else ["*"]
            if undeclared:
                raise ImproperlyConfigured(
                    f"{cls.__name__} must declare required_permission (or action_permissions for "
                    f"{', '.join(undeclared)})."
                )
        return super().as_view(*args, **kwargs)  # type: ignore[misc]

    def initial(self, request: Request, *args: Any, **kwargs: Any) -> None:
        super().initial(request, *args, **kwargs)  # type: ignore[misc]
        if not self.handles_method(request):  # type: ignore[attr-defined]
            return
        context = resolve_tenant(request.user, request.headers.get(TENANT_HEADER))
        self.tenant_context = context
        # On the DRF request for views, and on the Django request for middleware (metrics, logging).
        request.tenant_context = context  # type: ignore[attr-defined]
        request._request.tenant_context = context  # type: ignore[attr-defined]
        tenant_id_var.set(str(context.tenant.pk))
        if request.method == "OPTIONS":
            candidates = self.get_route_permissions()
        else:
            candidates = [self.get_required_permission()]
        if not any(permission is None or context.can(permission) for permission in candidates):
            # The refusal of the route's first method (its GET, when it has one).
            permission = candidates[0]
            raise Forbidden(
                f"Your role does not allow this ({permission}).",
                details={"required_permission": str(permission)},
            )
        if request.method not in SAFE_METHODS:
            context.ensure_may_write()

    def get_required_permission(self, action: str | None = None) -> Permission | None:
        """The permission the current action (or `action`) needs; None means any member."""
        action = action or getattr(self, "action", None)
        if action in self.action_permissions:
            return self.action_permissions[action]
        permission = self.required_permission
        if permission is _UNDECLARED:
            raise ImproperlyConfigured(f"{type(self).__name__} must declare required_permission.")
        return permission  # type: ignore[return-value]

    def get_route_permissions(self) -> list[Permission | None]:
        """The permission of each method this route answers, in the route's order (GET first).

        OPTIONS describes the route, not one action: DRF runs it as the implicit `metadata` action,
        which no view declares a permission for.
        """
        action_map: Mapping[str, str] = getattr(self, "action_map", None) or {}
        actions = [action for method, action in action_map.items() if method not in ("head", "options")]
        if not actions:  # a plain view: one permission for all its methods
            return [self.get_required_permission()]
        return [self.get_required_permission(action) for action in actions]

    @property
    def tenant(self) -> Tenant:
        return self.tenant_context.tenant


class ApiView(ApiMixin, GenericAPIView):
    pagination_class = None


class ApiViewSet(ApiMixin, GenericViewSet):
    pagination_class = KeysetPagination


class TenantApiView(TenantMixin, ApiView):
    pass


class TenantViewSet(TenantMixin, ApiViewSet):
    pass
