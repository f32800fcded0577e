"""The permission matrix (TARGETS.md "Reliability" 6), generated from the URL configuration.

`MATRIX` declares, for every route under /api/ (and /metrics), each method and who may call it:
- `public`: anyone, signed in or not;
- `webhook`: anyone holding Meta's verify token (GET) or signature (POST); a bearer token is no substitute;
- `tenant(<permission>)`: an ACTIVE member of the acting tenant whose role has the permission
  (DOMAIN.md §2.3, `converzia.tenancy.ROLE_PERMISSIONS`), or staff naming the tenant;
- `staff`: platform staff only.

The URLconf and the table must agree: a route without an entry, an entry without a route, or a method
the view implements but the table does not list (or the reverse) fails the suite by name. Then every
route × method is called by every kind of caller (anonymous, a user with no membership, each role of
tenant A, staff, and tenant B's owner naming A) and the test asserts:
- the status class and, for refusals, the error code and the one error body shape;
- for routes that take an object id: another tenant's id answers 404 `not_found` exactly like a
  missing one (same status and body but the request id), and a refused caller learns nothing more
  from a foreign id than from its own;
- lists and counts hold only the acting tenant's rows;
- no request changes tenant B's data (nor A's, when the caller may not act for A);
- lead PII is masked, in the list and in the detail, for roles without `view_lead_details`.

Routes another change is adding are marked `optional`: their rows are skipped, with the reason, only
while the route is missing from the URLconf; once it exists they are checked like every other row.

Every route is also called with OPTIONS and HEAD by every caller (docs/api.md "OPTIONS and HEAD"):
never a 5xx; OPTIONS answers 200 (the route's methods, as in `Allow`) to whoever may call at least one
of the route's methods and refuses anyone else exactly as the route's first method does; HEAD is the
route's GET without a body, and 405 `method_not_allowed` on a route without GET (after
authentication, and after the staff check on staff routes); the Meta webhook answers only GET and POST.

Tenant status (docs/api.md "Tenant status"): every tenant row is called again, by every caller, with
tenant A SUSPENDED, ARCHIVED and PENDING: reads answer as above, every write by a member of a paused
tenant answers 403 `tenant_suspended` and changes nothing, staff keep full access, PENDING is not paused.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from django.core.cache import cache
from django.db import transaction
from django.urls import reverse
from pytest_httpserver import HTTPServer
from rest_framework.permissions import SAFE_METHODS
from rest_framework.test import APIClient

from billing.models import CreditLedger
from converzia.api.base import TenantMixin
from converzia.models import Tenant, TenantStatus
from converzia.tenancy import PAUSED_TENANT_STATUSES, Permission, role_has
from converzia.tests.api_world import (
    CALLERS,
    CATCH_ALL,
    Route,
    World,
    api_routes,
    assert_error_shape,
    bearer_client,
    build_world,
    implemented_methods,
    meta_signature,
    missing_id,
    tenant_snapshot,
)
from converzia.tests.factories import TenantMemberFactory
from leads.models import LeadOffer
from leads.tests.factories import LeadOfferFactory

pytestmark = pytest.mark.django_db


@dataclass(frozen=True)
class Access:
    kind: str  # "public" | "webhook" | "tenant" | "staff" | "not_found"
    permission: Permission | None = None
    ok: int = 200
    target: str | None = None  # "offer" | "lead_offer": the route's path carries that object's id
    optional: bool = False  # another change is adding this route: skip its rows until it exists


PUBLIC = Access("public")
WEBHOOK = Access("webhook")
STAFF = Access("staff")


def tenant(permission: Permission, **kwargs: Any) -> Access:
    return Access("tenant", permission, **kwargs)


P = Permission
MATRIX: dict[str, dict[str, Access]] = {
    # kernel
    "api-auth-token": {"POST": PUBLIC},
    "api-health": {"GET": PUBLIC},
    "api-health-live": {"GET": PUBLIC},
    "api-schema": {"GET": PUBLIC},
    "api-docs": {"GET": PUBLIC},
    # portal
    "portal-leads-stats": {"GET": tenant(P.VIEW_LEADS)},
    "portal-funnel": {"GET": tenant(P.VIEW_LEADS)},
    "portal-offers-list": {"GET": tenant(P.VIEW_LEADS)},
    "portal-offers-detail": {"GET": tenant(P.VIEW_LEADS, target="offer")},
    "portal-leads-list": {"GET": tenant(P.VIEW_LEADS)},
    "portal-leads-detail": {"GET": tenant(P.VIEW_LEADS, target="lead_offer")},
    "portal-billing-balance": {"GET": tenant(P.VIEW_BILLING)},
    "portal-billing-ledger": {"GET": tenant(P.VIEW_BILLING)},
    "portal-delivery-destination": {"GET": tenant(P.VIEW_LEADS), "PUT": tenant(P.MANAGE_OFFERS)},
    "portal-delivery-destination-rotate-secret": {"POST": tenant(P.MANAGE_OFFERS)},
    "portal-delivery-destination-test": {"POST": tenant(P.MANAGE_OFFERS)},
    # admin (staff reads)
    "admin-queue": {"GET": STAFF},
    "admin-revenue": {"GET": Access("staff", optional=True)},
    "admin-stats": {"GET": Access("staff", optional=True)},
    # webhooks
    "webhook-meta-leads": {"GET": WEBHOOK, "POST": WEBHOOK},
    # ops (staff, across tenants)
    "ops-lead-offer-transition": {"POST": Access("staff", target="lead_offer")},
    "ops-lead-offer-qualification": {"POST": Access("staff", target="lead_offer")},
    # Prometheus: staff, or an allow-listed address (none in the test settings; see the test below)
    "metrics": {"GET": STAFF},
    # anything else under /api/, whatever the method
    CATCH_ALL: {"*": Access("not_found", ok=404)},
}

ROWS = [(name, method) for name, methods in MATRIX.items() for method in methods]


# --- the URLconf ------------------------------------------------------------------------------------


def test_every_api_route_has_a_matrix_entry():
    unlisted = sorted(set(api_routes()) - set(MATRIX))
    assert not unlisted, (
        f"Routes without a permission-matrix entry: {', '.join(unlisted)}. Add them to MATRIX in "
        f"{__name__} with who may call each method."
    )


def test_every_matrix_entry_names_an_existing_route():
    routes = api_routes()
    stale = sorted(
        name
        for name, methods in MATRIX.items()
        if name not in routes and not all(access.optional for access in methods.values())
    )
    assert not stale, f"Matrix entries for routes that no longer exist: {', '.join(stale)}."


def test_matrix_methods_are_exactly_what_each_view_implements():
    mismatched = {
        name: {"views": sorted(implemented_methods(route.pattern)), "matrix": sorted(MATRIX[name])}
        for name, route in api_routes().items()
        if name in MATRIX and implemented_methods(route.pattern) != set(MATRIX[name])
    }
    assert not mismatched, f"Methods differ between the views and the matrix: {mismatched}"


# --- calling each row ---------------------------------------------------------------------------------


@pytest.fixture
def receiver(httpserver: HTTPServer) -> str:
    httpserver.expect_request("/hook").respond_with_data("ok")
    return httpserver.url_for("/hook")


@pytest.fixture(autouse=True)
def fresh_throttles() -> Iterator[None]:
    """Throttle counters live in Redis for a minute; each test starts without them."""
    cache.delete_pattern("*throttle_*")
    yield
    cache.delete_pattern("*throttle_*")


def target_id(world: World, target: str | None, which: str) -> str | None:
    """The id for a route's path: A's object ("own"), B's ("foreign") or one that exists nowhere."""
    if target is None:
        return None
    if which == "missing":
        return missing_id()
    data = world.a if which == "own" else world.b
    return str(data.offer.pk if target == "offer" else data.hidden.pk)


def url_for(route: Route, object_id: str | None) -> str:
    if route.key == CATCH_ALL:
        return "/api/no/such/route"
    if object_id is None:
        return reverse(route.key)
    (kwarg,) = route.pattern.pattern.converters
    return reverse(route.key, kwargs={kwarg: object_id})


def call(world: World, client: APIClient, route: Route, method: str, object_id: str | None, *, valid: bool):
    """One request with a body that would succeed for an allowed caller (`valid`), or the variant that
    must be refused whoever calls (webhooks: wrong verify token, missing signature)."""
    url = url_for(route, object_id)
    name = route.key
    if name == "api-auth-token":
        body = {"email": world.a.owner.email, "password": "pass-word-123"}
        return client.post(url, body, format="json")
    if name == "webhook-meta-leads" and method == "GET":
        token = "test-verify-token" if valid else "wrong-token"
        return client.get(url, {"hub.mode": "subscribe", "hub.verify_token": token, "hub.challenge": "c-42"})
    if name == "webhook-meta-leads" and method == "POST":
        raw = json.dumps({"object": "instagram", "entry": []}).encode()
        headers = {"HTTP_X_HUB_SIGNATURE_256": meta_signature(raw)} if valid else {}
        return client.generic("POST", url, raw, content_type="application/json", **headers)
    if name == "portal-delivery-destination" and method == "PUT":
        return client.put(url, {"url": world.a.destination.url, "is_active": True}, format="json")
    if name == "ops-lead-offer-transition":
        current = (
            LeadOffer.objects.get(pk=object_id).status if object_id and _exists(object_id) else "ENGAGED"
        )
        return client.post(url, {"to": current}, format="json")
    if name == "ops-lead-offer-qualification":
        return client.post(url, {"score_total": 10}, format="json")
    if method == "*":
        return client.get(url)
    return client.generic(method, url)


def _exists(lead_offer_id: str) -> bool:
    return LeadOffer.objects.filter(pk=lead_offer_id).exists()


def expected(access: Access, caller: str) -> tuple[int, str | None]:
    """(status, error code or None for a success) for this caller on a well-formed request."""
    if access.kind in ("public", "webhook"):
        return access.ok, None
    if access.kind == "not_found":
        return 404, "not_found"
    if caller == "anonymous":
        return 401, "unauthenticated"
    if access.kind == "staff":
        return (access.ok, None) if caller == "staff" else (403, "forbidden")
    assert access.kind == "tenant"
    if caller == "outsider":
        # No ACTIVE membership at all: naming a tenant would not help (API.md "Tenant").
        return 403, "not_a_member"
    if caller == "foreign_owner":
        return 403, "not_a_member"
    if caller == "staff" or role_has(caller, access.permission):
        return access.ok, None
    return 403, "forbidden"


def can_view_details(caller: str) -> bool:
    return caller == "staff" or role_has(caller, Permission.VIEW_LEAD_DETAILS)


def without_request_id(response: Any) -> Any:
    body = response.json()
    body["error"].pop("request_id")
    return body


# What an allowed caller must see of tenant A, and nothing of tenant B.
def _ids(body: dict[str, Any]) -> set[str]:
    return {item["id"] for item in body["results"]}


def check_leads_list(world: World, body: dict[str, Any], caller: str) -> None:
    assert _ids(body) == {str(world.a.hidden.pk), str(world.a.delivered.pk)}
    (hidden,) = [item for item in body["results"] if item["id"] == str(world.a.hidden.pk)]
    check_pii(world, hidden, caller)


def check_leads_detail(world: World, body: dict[str, Any], caller: str) -> None:
    assert body["id"] == str(world.a.hidden.pk)
    check_pii(world, body, caller)
    expected_name = "Ana Pérez" if can_view_details(caller) else f"Lead #{str(world.a.hidden.pk)[:8]}"
    assert body["qualification_fields"] == {"name": expected_name}


def check_pii(world: World, item: dict[str, Any], caller: str) -> None:
    if can_view_details(caller):
        assert item["lead"] == {
            "display_name": "Ana Pérez",
            "phone": "+5491122334455",
            "email": "ana@example.com",
        }
    else:
        assert item["lead"] == {
            "display_name": f"Lead #{str(world.a.hidden.pk)[:8]}",
            "phone": "+54911******55",
            "email": "a***@example.com",
        }, item["lead"]


def check_offers_list(world: World, body: dict[str, Any], caller: str) -> None:
    assert _ids(body) == {str(world.a.offer.pk)}
    assert body["results"][0]["funnel"]["total"] == 2


def check_offer_detail(world: World, body: dict[str, Any], caller: str) -> None:
    assert body["id"] == str(world.a.offer.pk)
    assert body["funnel"]["total"] == 2


def check_stats(world: World, body: dict[str, Any], caller: str) -> None:
    assert body["tenant_id"] == str(world.a.tenant.pk)
    assert body["total"] == 2
    assert body["credit_balance"] == 25


def check_funnel(world: World, body: dict[str, Any], caller: str) -> None:
    assert body["total"] == 2
    assert [offer["offer_id"] for offer in body["offers"]] == [str(world.a.offer.pk)]


def check_balance(world: World, body: dict[str, Any], caller: str) -> None:
    assert body["balance"] == 25


def check_ledger(world: World, body: dict[str, Any], caller: str) -> None:
    own = {str(pk) for pk in CreditLedger.objects.filter(tenant=world.a.tenant).values_list("pk", flat=True)}
    assert _ids(body) == own


def check_destination(world: World, body: dict[str, Any], caller: str) -> None:
    assert body["url"] == world.a.destination.url
    assert "secret" not in body


SUCCESS_CHECKS: dict[str, Callable[[World, dict[str, Any], str], None]] = {
    "portal-leads-list": check_leads_list,
    "portal-leads-detail": check_leads_detail,
    "portal-offers-list": check_offers_list,
    "portal-offers-detail": check_offer_detail,
    "portal-leads-stats": check_stats,
    "portal-funnel": check_funnel,
    "portal-billing-balance": check_balance,
    "portal-billing-ledger": check_ledger,
}


def check_caller(
    world: World,
    route: Route,
    method: str,
    access: Access,
    caller: str,
    want: tuple[int, str | None] | None = None,
) -> None:
    """Call the row as `caller` and check the answer: `want` (status, error code), by default what
    the matrix says."""
    client = world.client(caller)
    status, code = want or expected(access, caller)
    before = {"a": tenant_snapshot(world.a.tenant), "b": tenant_snapshot(world.b.tenant)}

    response = call(world, client, route, method, target_id(world, access.target, "own"), valid=True)

    assert response.status_code == status, (response.status_code, response.content[:300])
    if code is not None:
        assert_error_shape(response, code)
    elif route.key == "portal-delivery-destination" and method == "GET":
        check_destination(world, response.json(), caller)
    elif route.key in SUCCESS_CHECKS:
        SUCCESS_CHECKS[route.key](world, response.json(), caller)

    if access.kind == "webhook":
        # The verify token or the signature is what counts; a bearer token changes nothing.
        refused = call(world, client, route, method, None, valid=False)
        assert refused.status_code == 403, refused.content
        assert_error_shape(refused, "forbidden" if method == "GET" else "invalid_signature")

    if access.target is not None:
        missing = call(world, client, route, method, target_id(world, access.target, "missing"), valid=True)
        # Staff operations act across tenants (B's object is theirs to change): only the others try it.
        cross_tenant = code is None and access.kind == "staff"
        foreign = (
            None
            if cross_tenant
            else call(world, client, route, method, target_id(world, access.target, "foreign"), valid=True)
        )
        if code is None and access.kind == "tenant":
            # Another tenant's object is exactly a missing one.
            assert foreign.status_code == missing.status_code == 404, (foreign.content, missing.content)
            assert_error_shape(foreign, "not_found")
            assert without_request_id(foreign) == without_request_id(missing)
        elif code is None:
            # Staff operations act across tenants; only a missing id is 404.
            assert missing.status_code == 404, missing.content
            assert_error_shape(missing, "not_found")
        else:
            # A refused caller learns nothing from the id: the same refusal for any id.
            for other in (foreign, missing):
                assert other is not None
                assert other.status_code == status, other.content
                assert_error_shape(other, code)

    after = {"a": tenant_snapshot(world.a.tenant), "b": tenant_snapshot(world.b.tenant)}
    # Every request acts for tenant A at most: B never changes, and A does not when refused.
    assert after["b"] == before["b"], "tenant B's data changed"  # (staff ops were not sent B's ids)
    if code is not None:
        assert after["a"] == before["a"], "a refused request changed tenant A's data"


def assert_every_caller(label: str, check) -> None:
    """`check(caller)` for each caller, each from the same data (its writes rolled back before the next
    one); every caller's failure is reported, not just the first."""
    failures = []
    for caller in CALLERS:
        with transaction.atomic():
            try:
                check(caller)
            except AssertionError as exc:
                failures.append(f"{label} as {caller}: {exc}")
            transaction.set_rollback(True)
        cache.delete_pattern("*throttle_*")
    assert not failures, "\n".join(failures)


@pytest.mark.parametrize(("name", "method"), ROWS, ids=[f"{name} {method}" for name, method in ROWS])
def test_route_answers_each_caller_as_the_matrix_says(name, method, receiver):
    access = MATRIX[name][method]
    routes = api_routes()
    if name not in routes:
        if access.optional:
            pytest.skip(f"{name} is not in the URLconf yet (another change is adding it); row skipped.")
        pytest.fail(f"{name} is in the matrix but not in the URLconf.")
    world = build_world(receiver)
    assert_every_caller(
        f"{name} {method}", lambda caller: check_caller(world, routes[name], method, access, caller)
    )


# --- OPTIONS and HEAD, on every route -------------------------------------------------------------------

META_METHODS = ("OPTIONS", "HEAD")
META_ROWS = [(name, method) for name in MATRIX for method in META_METHODS]


def route_methods(name: str) -> list[str]:
    """The route's methods in DRF's order (GET first), as `Allow` lists them, HEAD and OPTIONS included."""
    methods = set(MATRIX[name]) | {"OPTIONS"} | ({"HEAD"} if "GET" in MATRIX[name] else set())
    order = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"]
    return [method for method in order if method in methods]


def expected_meta(name: str, method: str, caller: str) -> tuple[int, str | None]:
    """(status, error code) of OPTIONS or HEAD on route `name` for this caller."""
    methods = MATRIX[name]
    if name == CATCH_ALL:
        return 404, "not_found"
    if any(access.kind == "webhook" for access in methods.values()):
        # Meta calls GET (verification) and POST (notifications), nothing else.
        return 405, "method_not_allowed"
    first = methods["GET"] if "GET" in methods else next(iter(methods.values()))
    if method == "HEAD":
        if "GET" in methods:
            return expected(methods["GET"], caller)
        # No GET: authentication and the staff check run first (DRF's permission classes); tenant and
        # role checks are skipped for a method the route does not have.
        refusal = expected(first, caller)
        if refusal[1] == "unauthenticated" or (first.kind == "staff" and refusal[1] == "forbidden"):
            return refusal
        return 405, "method_not_allowed"
    # OPTIONS: 200 for whoever may call one of the route's methods; anyone else gets the refusal of
    # the route's first method.
    answers = [expected(access, caller) for access in methods.values()]
    if any(code is None for _status, code in answers):
        return 200, None
    return expected(first, caller)


def check_meta_caller(
    world: World, route: Route, method: str, caller: str, want: tuple[int, str | None] | None = None
) -> None:
    access = next(iter(MATRIX[route.key].values()))
    client = world.client(caller)
    status, code = want or expected_meta(route.key, method, caller)
    before = {"a": tenant_snapshot(world.a.tenant), "b": tenant_snapshot(world.b.tenant)}

    response = client.generic(method, url_for(route, target_id(world, access.target, "own")))

    assert response.status_code < 500, (response.status_code, response.content[:300])
    assert response.status_code == status, (response.status_code, response.content[:300])
    if method == "HEAD":
        assert response.content == b"", "HEAD answers no body"
    elif code is not None:
        assert_error_shape(response, code)
    else:
        body = response.json()
        assert body["methods"] == route_methods(route.key), body
        assert [m.strip() for m in response["Allow"].split(",")] == body["methods"]
        assert body["schema"] == "/api/schema/"
    # OPTIONS and HEAD never change anything.
    assert tenant_snapshot(world.a.tenant) == before["a"]
    assert tenant_snapshot(world.b.tenant) == before["b"]


@pytest.mark.parametrize(
    ("name", "method"), META_ROWS, ids=[f"{name} {method}" for name, method in META_ROWS]
)
def test_options_and_head_answer_each_caller_consistently(name, method, receiver):
    routes = api_routes()
    if name not in routes:
        if all(access.optional for access in MATRIX[name].values()):
            pytest.skip(f"{name} is not in the URLconf yet (another change is adding it); row skipped.")
        pytest.fail(f"{name} is in the matrix but not in the URLconf.")
    world = build_world(receiver)
    assert_every_caller(
        f"{name} {method}", lambda caller: check_meta_caller(world, routes[name], method, caller)
    )


# --- tenant status ---------------------------------------------------------------------------------------

TENANT_ROUTES = [
    name for name, methods in MATRIX.items() if all(a.kind == "tenant" for a in methods.values())
]
TENANT_ROWS = [(name, method) for name in TENANT_ROUTES for method in [*MATRIX[name], *META_METHODS]]
TENANT_STATUSES = [TenantStatus.SUSPENDED, TenantStatus.ARCHIVED, TenantStatus.PENDING]


def test_every_tenant_view_is_a_tenant_row_of_the_matrix():
    """So the tenant-status test below covers every tenant route, including the ones added later."""
    routes = api_routes()
    mismatched = sorted(
        name
        for name, route in routes.items()
        if name in MATRIX
        and _is_tenant_view(route) != all(access.kind == "tenant" for access in MATRIX[name].values())
    )
    assert not mismatched, f"Tenant views and tenant rows of the matrix differ: {mismatched}"


def _is_tenant_view(route: Route) -> bool:
    callback = route.pattern.callback
    view_class = getattr(callback, "cls", None) or getattr(callback, "view_class", None)
    return isinstance(view_class, type) and issubclass(view_class, TenantMixin)


def expected_for_status(name: str, method: str, caller: str, status: str) -> tuple[int, str | None]:
    """What the caller gets while tenant A is in `status`: a paused tenant's members may not write."""
    want = (
        expected_meta(name, method, caller)
        if method in META_METHODS
        else expected(MATRIX[name][method], caller)
    )
    paused = status in PAUSED_TENANT_STATUSES
    if paused and method not in SAFE_METHODS and want[1] is None and caller != "staff":
        return 403, "tenant_suspended"
    return want


def set_status(tenant: Tenant, status: str) -> None:
    tenant.status = status
    tenant.save(update_fields=["status", "updated_at"])  # a save: cached principals are invalidated


@pytest.mark.parametrize("status", TENANT_STATUSES)
@pytest.mark.parametrize(
    ("name", "method"), TENANT_ROWS, ids=[f"{name} {method}" for name, method in TENANT_ROWS]
)
def test_a_paused_tenant_is_read_only_for_its_members(name, method, status, receiver):
    """SUSPENDED and ARCHIVED: reads as before, writes 403 `tenant_suspended` (nothing changes); staff
    unaffected. PENDING: as ACTIVE."""
    routes = api_routes()
    if name not in routes:
        pytest.skip(f"{name} is not in the URLconf yet (another change is adding it); row skipped.")
    world = build_world(receiver)
    set_status(world.a.tenant, status)

    def check(caller: str) -> None:
        want = expected_for_status(name, method, caller, status)
        if method in META_METHODS:
            check_meta_caller(world, routes[name], method, caller, want)
        else:
            check_caller(world, routes[name], method, MATRIX[name][method], caller, want)
        if want[1] == "tenant_suspended":
            assert_suspended_details(world, routes[name], method, caller, status)

    assert_every_caller(f"{name} {method} ({status})", check)


def assert_suspended_details(world: World, route: Route, method: str, caller: str, status: str) -> None:
    access = MATRIX[route.key][method]
    response = call(
        world, world.client(caller), route, method, target_id(world, access.target, "own"), valid=True
    )
    error = assert_error_shape(response, "tenant_suspended")
    assert error["details"] == {"tenant_status": status}
    assert ("archived" if status == TenantStatus.ARCHIVED else "suspended") in error["message"]


def test_several_memberships_and_no_header_is_tenant_required_on_every_tenant_route(receiver):
    """API.md "Tenant": a caller with several ACTIVE memberships must name one (400); one with none is
    not a member (403, the `outsider` caller above)."""
    world = build_world(receiver)
    user = world.users["VIEWER"]
    TenantMemberFactory(tenant=world.b.tenant, user=user)
    client = bearer_client(user)
    routes = api_routes()
    got, want = {}, {}
    for name, method in TENANT_ROWS:
        if name not in routes:
            continue
        access = next(iter(MATRIX[name].values()))
        response = client.generic(method, url_for(routes[name], target_id(world, access.target, "own")))
        row = f"{name} {method}"
        # HEAD on a route without GET is 405 before any tenant check; HEAD has no body to look at.
        want[row] = 405 if method == "HEAD" and "GET" not in MATRIX[name] else 400
        got[row] = response.status_code
        if method != "HEAD":
            assert_error_shape(response, "tenant_required")
    assert got == want


def test_the_matrix_covers_every_role_of_the_domain():
    from converzia.models import TenantRole
    from converzia.tenancy import ROLE_PERMISSIONS

    assert set(ROLE_PERMISSIONS) == set(TenantRole.values)
    assert set(TenantRole.values) <= set(CALLERS)


def test_metrics_admit_an_allow_listed_address_without_credentials(settings):
    settings.METRICS_ALLOWED_IPS = ["127.0.0.1/32"]

    allowed = APIClient().get("/metrics", REMOTE_ADDR="127.0.0.1")
    refused = APIClient().get("/metrics", REMOTE_ADDR="10.1.2.3")

    assert allowed.status_code == 200
    assert refused.status_code == 401
    assert_error_shape(refused, "unauthenticated")


# --- ids in query parameters, and cached reads ---------------------------------------------------------


def test_foreign_ids_in_query_parameters_match_nothing_or_answer_like_missing_ones(receiver):
    world = build_world(receiver)
    client = world.client("OWNER")
    foreign, missing = str(world.b.offer.pk), missing_id()

    funnel_foreign = client.get("/api/portal/funnel", {"offer_id": foreign})
    funnel_missing = client.get("/api/portal/funnel", {"offer_id": missing})
    leads_foreign = client.get("/api/portal/leads", {"offer_id": foreign})

    assert funnel_foreign.status_code == funnel_missing.status_code == 404
    assert_error_shape(funnel_foreign, "not_found")
    assert without_request_id(funnel_foreign) == without_request_id(funnel_missing)
    assert leads_foreign.status_code == 200
    assert leads_foreign.json()["results"] == []


@pytest.mark.parametrize("path", ["/api/portal/leads/stats", "/api/portal/funnel"])
def test_a_cached_read_of_one_tenant_is_never_served_to_another(path, receiver):
    world = build_world(receiver)
    LeadOfferFactory(offer=world.b.offer)  # B: 3 lead_offers, A: 2
    cache.delete_pattern("*")
    a_client, b_client = world.client("OWNER"), bearer_client(world.b.owner)

    a_cold, a_warm = a_client.get(path).json(), a_client.get(path).json()
    b_read = b_client.get(path, HTTP_IF_NONE_MATCH=a_client.get(path)["ETag"])

    assert (a_cold["cached"], a_warm["cached"]) == (False, True)
    assert a_warm["total"] == 2
    assert b_read.status_code == 200, "another tenant's ETag never matches"
    assert b_read.json()["total"] == 3
    assert b_read.json()["cached"] is False
