"""A two-tenant world for the API's cross-cutting tests (permission matrix, Redis down, query budgets).

`build_world()` makes tenants A (the one acting) and B (the foreign one), each with an offer, a
lead_offer still hidden from roles without `view_lead_details` (QUALIFYING), a delivered one, a
delivery destination and a ledger entry; and one caller per kind: anonymous, an authenticated user
with no membership, one member of A per role (DOMAIN.md §2.3), platform staff, and B's owner naming A.
Callers are real bearer-token clients (`client_for` in the root conftest).
"""

from __future__ import annotations

import hashlib
import hmac
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from django.conf import settings
from django.urls import URLPattern, URLResolver, get_resolver
from rest_framework.test import APIClient

from billing.services import credit_adjust
from converzia.models import ApiToken, Tenant, TenantRole, User
from converzia.tests.factories import StaffUserFactory, TenantFactory, TenantMemberFactory, UserFactory
from converzia.views import api_not_found
from deliveries.models import DeliveryDestination
from deliveries.tests.factories import DeliveryDestinationFactory, DeliveryFactory
from leads.models import LeadOffer, LeadOfferStatus, Offer
from leads.tests.factories import LeadEventFactory, LeadFactory, LeadOfferFactory, OfferFactory

ROLES: tuple[str, ...] = tuple(TenantRole.values)
# Every kind of caller the matrix tries, in a stable order.
CALLERS: tuple[str, ...] = ("anonymous", "outsider", *ROLES, "staff", "foreign_owner")
ERROR_KEYS = {"code", "message", "details", "request_id"}
CATCH_ALL = "<api catch-all>"


def issue_token(user: User) -> str:
    raw = ApiToken.generate()
    ApiToken.objects.create(user=user, key_prefix=raw[:12], key_digest=ApiToken.digest(raw))
    return raw


def bearer_client(user: User, tenant: Tenant | None = None) -> APIClient:
    client = APIClient()
    headers: dict[str, str] = {"HTTP_AUTHORIZATION": f"Bearer {issue_token(user)}"}
    if tenant is not None:
        headers["HTTP_X_TENANT_ID"] = str(tenant.pk)
    client.credentials(**headers)
    return client


@dataclass
class TenantData:
    tenant: Tenant
    offer: Offer
    hidden: LeadOffer  # QUALIFYING: PII visible only with view_lead_details
    delivered: LeadOffer  # SENT_TO_DEVELOPER: PII visible to every role that may read leads
    destination: DeliveryDestination
    owner: User


@dataclass
class World:
    a: TenantData
    b: TenantData
    users: dict[str, User | None] = field(default_factory=dict)

    def client(self, caller: str) -> APIClient:
        """The caller's client. Members of A send no header (their only membership is used); staff
        name A; B's owner names A too (and is refused)."""
        if caller == "anonymous":
            return APIClient()
        user = self.users[caller]
        assert user is not None
        if caller in ("staff", "foreign_owner"):
            return bearer_client(user, self.a.tenant)
        return bearer_client(user)


def _tenant_data(staff: User, receiver_url: str, phone: str) -> TenantData:
    tenant = TenantFactory()
    owner = TenantMemberFactory(tenant=tenant, role=TenantRole.OWNER).user
    offer = OfferFactory(tenant=tenant)
    lead = LeadFactory(full_name="Ana Pérez", phone=phone, email="ana@example.com")
    hidden = LeadOfferFactory(
        offer=offer, lead=lead, status=LeadOfferStatus.QUALIFYING, qualification_fields={"name": "Ana Pérez"}
    )
    LeadEventFactory(lead_offer=hidden)
    delivered = LeadOfferFactory(offer=offer, status=LeadOfferStatus.SENT_TO_DEVELOPER)
    DeliveryFactory(lead_offer=delivered, delivered=True)
    destination = DeliveryDestinationFactory(tenant=tenant, url=receiver_url)
    credit_adjust(tenant=tenant, amount=25, reason="matrix", actor=staff)
    return TenantData(tenant, offer, hidden, delivered, destination, owner)


def build_world(receiver_url: str = "http://127.0.0.1:9/hook") -> World:
    staff = StaffUserFactory()
    a = _tenant_data(staff, receiver_url, "+5491122334455")
    b = _tenant_data(staff, receiver_url, "+5491122334466")
    users: dict[str, User | None] = {"anonymous": None, "outsider": UserFactory(), "staff": staff}
    users["OWNER"] = a.owner
    for role in ROLES:
        if role != TenantRole.OWNER:
            users[role] = TenantMemberFactory(tenant=a.tenant, role=role).user
    users["foreign_owner"] = b.owner
    return World(a=a, b=b, users=users)


def tenant_snapshot(tenant: Tenant) -> dict[str, Any]:
    """Everything a write route could change for a tenant, to prove it did not."""
    return {
        "destination": list(
            DeliveryDestination.objects.filter(tenant=tenant)
            .order_by("pk")
            .values("pk", "url", "is_active", "secret", "updated_at", "disabled_at")
        ),
        "lead_offers": list(
            LeadOffer.objects.filter(tenant=tenant)
            .order_by("pk")
            .values("pk", "status", "score_total", "updated_at", "qualification_fields")
        ),
    }


def assert_error_shape(response: Any, code: str | None = None) -> dict[str, Any]:
    """The one error body (API.md "Errors"), its request id matching the header; returns `error`."""
    assert response["Content-Type"].startswith("application/json"), response["Content-Type"]
    body = response.json()
    assert set(body) == {"error"}, body
    error = body["error"]
    assert set(error) == ERROR_KEYS, error
    assert isinstance(error["code"], str) and error["code"], error
    assert isinstance(error["message"], str) and error["message"], error
    assert isinstance(error["details"], dict), error
    assert error["request_id"] == response["X-Request-ID"], (error, response["X-Request-ID"])
    if code is not None:
        assert error["code"] == code, error
    return error


def meta_signature(body: bytes) -> str:
    """Meta's `X-Hub-Signature-256`, computed here independently of `leads.meta`."""
    return "sha256=" + hmac.new(settings.META_APP_SECRET.encode(), body, hashlib.sha256).hexdigest()


def missing_id() -> str:
    return str(uuid.uuid4())


# --- the URLconf ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Route:
    key: str
    path: str
    pattern: URLPattern


def _walk(patterns: list[Any], prefix: str) -> Iterator[tuple[str, URLPattern]]:
    for entry in patterns:
        if isinstance(entry, URLResolver):
            yield from _walk(entry.url_patterns, prefix + str(entry.pattern))
        else:
            yield prefix + str(entry.pattern), entry


def api_routes() -> dict[str, Route]:
    """Every route under /api/ and /metrics, keyed by URL name (the catch-all by `CATCH_ALL`)."""
    routes: dict[str, Route] = {}
    for path, pattern in _walk(get_resolver().url_patterns, ""):
        bare = path.lstrip("^")
        if not (bare.startswith("api/") or bare.startswith("metrics")):
            continue
        if pattern.callback is api_not_found:
            key = CATCH_ALL
        else:
            key = pattern.name or f"<unnamed route {path}>"
        assert key not in routes, f"Two routes share the name {key!r}: {routes[key].path} and {path}"
        routes[key] = Route(key, path, pattern)
    return routes


def implemented_methods(pattern: URLPattern) -> set[str]:
    """The methods the view answers other than with 405 (HEAD and OPTIONS aside)."""
    callback = pattern.callback
    actions = getattr(callback, "actions", None)
    if actions:
        return {method.upper() for method in actions if method not in ("head", "options")}
    view_class = getattr(callback, "cls", None) or getattr(callback, "view_class", None)
    if view_class is None:
        return {"*"}  # a plain function view answers every method
    return {
        method.upper()
        for method in view_class.http_method_names
        if method not in ("head", "options") and callable(getattr(view_class, method, None))
    }
