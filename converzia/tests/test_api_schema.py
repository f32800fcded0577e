"""OpenAPI schema, Swagger UI (no CDN) and liveness.

The schema documents every status the API answers: every operation of the generated schema is sent a
set of requests known to produce a status (anonymous, no or several memberships, a role without the
permission, an unknown query parameter, an empty body, a missing id, `If-None-Match`, a paused
tenant, the database down), and each answer must be a response the operation lists.
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

import pytest
from django.core.cache import cache
from django.db import transaction
from django.urls import resolve
from drf_spectacular.validation import validate_schema
from rest_framework.permissions import AllowAny
from rest_framework.test import APIClient

from converzia.api.base import TenantMixin
from converzia.api.permissions import IsStaff
from converzia.models import TenantStatus
from converzia.tests.api_world import World, bearer_client, build_world
from converzia.tests.factories import TenantMemberFactory
from converzia.tests.outages import database_down

pytestmark = pytest.mark.django_db


@pytest.fixture
def schema() -> dict:
    response = APIClient().get("/api/schema/", {"format": "json"})
    assert response.status_code == 200
    return json.loads(response.content)


def test_schema_is_valid_openapi(schema):
    validate_schema(schema)  # raises on any violation of the OpenAPI 3.0 JSON schema


def test_schema_is_openapi_3_with_the_kernel_and_portal_paths(schema):
    assert schema["openapi"].startswith("3.")
    assert schema["info"]["title"] == "Converzia API"
    assert {"/api/auth/token", "/api/health/live", "/api/portal/offers", "/api/portal/offers/{id}"} <= set(
        schema["paths"]
    )
    assert schema["components"]["securitySchemes"]["bearerAuth"] == {
        "type": "http",
        "scheme": "bearer",
        "description": "A personal API token: `manage.py create_api_token <email>` or POST /api/auth/token.",
    }


def test_schema_documents_errors_with_one_shared_component(schema):
    error = schema["components"]["schemas"]["Error"]
    assert sorted(error["required"]) == ["code", "details", "message", "request_id"]
    offers_list = schema["paths"]["/api/portal/offers"]["get"]["responses"]
    offer_detail = schema["paths"]["/api/portal/offers/{id}"]["get"]["responses"]
    assert sorted(offers_list) == ["200", "400", "401", "403", "500", "503"]
    assert sorted(offer_detail) == ["200", "400", "401", "403", "404", "500", "503"]
    ref = {"$ref": "#/components/schemas/ErrorResponse"}
    assert all(
        offer_detail[code]["content"]["application/json"]["schema"] == ref
        for code in offer_detail
        if code != "200"
    )
    token_responses = schema["paths"]["/api/auth/token"]["post"]["responses"]
    assert sorted(token_responses) == ["200", "400", "401", "429", "500", "503"]
    # Liveness touches no database: it cannot answer 503.
    assert sorted(schema["paths"]["/api/health/live"]["get"]["responses"]) == ["200", "400", "500"]


def test_schema_describes_the_paginated_offer_list(schema):
    operation = schema["paths"]["/api/portal/offers"]["get"]
    assert [parameter["name"] for parameter in operation["parameters"]] == ["cursor", "page_size", "status"]
    page = schema["components"]["schemas"]["PaginatedOfferList"]
    assert sorted(page["properties"]) == ["next", "previous", "results"]
    assert page["properties"]["results"]["items"] == {"$ref": "#/components/schemas/Offer"}
    assert sorted(schema["components"]["schemas"]["FunnelStages"]["properties"]) == sorted(
        ["received", "in_chat", "qualified", "delivered", "not_qualified"]
    )


def test_schema_is_public_even_with_a_bad_token():
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION="Bearer nope")

    assert client.get("/api/schema/", {"format": "json"}).status_code == 200


def test_docs_page_uses_only_local_assets():
    response = APIClient().get("/api/docs/")

    assert response.status_code == 200
    html = response.content.decode()
    assets = re.findall(r'(?:src|href)="([^"]+)"', html)
    assert assets, html
    assert all(asset.startswith("/static/") for asset in assets), assets
    assert not re.search(r"https?://", html)
    assert "//cdn" not in html
    assert "unpkg" not in html
    assert "jsdelivr" not in html
    assert "/api/schema/" in html


def test_health_live_without_database_or_auth(django_assert_num_queries):
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION="Bearer not-checked-here")

    with django_assert_num_queries(0):
        response = client.get("/api/health/live")

    assert response.status_code == 200
    assert response.json() == {"status": "ok"}
    assert response["Cache-Control"] == "no-store"
    assert response["Content-Type"] == "application/json"


# --- every status the API answers is in the schema -------------------------------------------------------

SCHEMA_METHODS = ("get", "post", "put", "patch", "delete")


@dataclass(frozen=True)
class Probe:
    """One request known to produce a status: who sends it, and what it changes from a valid call."""

    label: str
    caller: str  # a caller of `World` ("anonymous", "OWNER", "staff", …), or "several" / "staff_no_header"
    query: dict[str, str] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)
    object_id: str = "own"  # "own" (tenant A's object) or "missing"
    body: str = "valid"  # "valid" or "empty"
    tenant_status: str | None = None  # tenant A's status for this request


PROBES = [
    Probe("valid request, allowed caller", "allowed"),
    Probe("anonymous", "anonymous"),
    Probe("no active membership", "outsider"),
    Probe("several memberships, no X-Tenant-ID", "several"),
    Probe("staff without X-Tenant-ID", "staff_no_header"),
    Probe("role without the permission (BILLING)", "BILLING"),
    Probe("role without the permission (VIEWER)", "VIEWER"),
    Probe("not staff", "OWNER"),
    Probe("unknown query parameter", "allowed", query={"no_such_parameter": "1"}),
    Probe("empty body", "allowed", body="empty"),
    Probe("missing object", "allowed", object_id="missing"),
    Probe("If-None-Match: *", "allowed", headers={"HTTP_IF_NONE_MATCH": "*"}),
    Probe("suspended tenant's owner", "OWNER", tenant_status=TenantStatus.SUSPENDED),
    Probe("archived tenant's owner", "OWNER", tenant_status=TenantStatus.ARCHIVED),
]
# Requests whose status is known exactly (issue 15): (path, probe, expected status).
EXACT_PROBES = [
    ("/api/portal/funnel", Probe("unknown offer_id", "allowed", query={"offer_id": str(uuid.uuid4())}), 404),
    (
        "/api/admin/revenue",
        Probe("unknown tenant_id", "allowed", query={"tenant_id": str(uuid.uuid4())}),
        404,
    ),
    (
        "/api/portal/leads/stats",
        Probe("If-None-Match: *", "allowed", headers={"HTTP_IF_NONE_MATCH": "*"}),
        304,
    ),
    ("/api/portal/funnel", Probe("If-None-Match: *", "allowed", headers={"HTTP_IF_NONE_MATCH": "*"}), 304),
    ("/api/portal/leads", Probe("no active membership", "outsider"), 403),
    ("/api/portal/leads", Probe("several memberships, no X-Tenant-ID", "several"), 400),
    (
        "/api/portal/delivery-destination/rotate-secret",
        Probe("suspended tenant's owner", "OWNER", tenant_status=TenantStatus.SUSPENDED),
        403,
    ),
]


def operations(schema: dict[str, Any]) -> list[tuple[str, str, set[str]]]:
    return [
        (path, method.upper(), set(operation["responses"]))
        for path, item in schema["paths"].items()
        for method, operation in item.items()
        if method in SCHEMA_METHODS
    ]


def view_kind(path: str) -> str:
    """The kind of caller the view behind the path admits: tenant, staff, public or user."""
    callback = resolve(path.replace("{id}", str(uuid.uuid4()))).func
    view_class = getattr(callback, "cls", None) or getattr(callback, "view_class", None)
    if view_class is not None and issubclass(view_class, TenantMixin):
        return "tenant"
    permissions = getattr(view_class, "permission_classes", ())
    if any(issubclass(cls, IsStaff) for cls in permissions):
        return "staff"
    if permissions and all(issubclass(cls, AllowAny) for cls in permissions):
        return "public"
    return "user"


def probe_client(world: World, probe: Probe, kind: str) -> APIClient:
    caller = probe.caller
    if caller == "allowed":
        caller = {"tenant": "OWNER", "staff": "staff", "public": "anonymous", "user": "OWNER"}[kind]
    if caller == "several":
        user = world.users["VIEWER"]
        TenantMemberFactory(tenant=world.b.tenant, user=user)
        return bearer_client(user)
    if caller == "staff_no_header":
        return bearer_client(world.users["staff"])
    return world.client(caller)


def probe_path(world: World, path: str, probe: Probe) -> str:
    if "{id}" not in path:
        return path
    if probe.object_id == "missing":
        object_id = uuid.uuid4()
    elif "/portal/offers/" in path:
        object_id = world.a.offer.pk
    else:
        object_id = world.a.hidden.pk
    return path.replace("{id}", str(object_id))


def valid_body(world: World, path: str, method: str) -> dict[str, Any] | None:
    """A body the operation accepts from an allowed caller (None: it takes none, or none is known)."""
    if path == "/api/auth/token":
        return {"email": world.a.owner.email, "password": "pass-word-123"}
    if path == "/api/portal/delivery-destination" and method == "PUT":
        return {"url": world.a.destination.url}
    if path.endswith("/transition"):
        return {"to": world.a.hidden.status}
    if path.endswith("/qualification"):
        return {"score_total": 10}
    return None


def send(world: World, path: str, method: str, probe: Probe) -> Any:
    kind = view_kind(path)
    if probe.tenant_status is not None:
        world.a.tenant.status = probe.tenant_status
        world.a.tenant.save(update_fields=["status", "updated_at"])
    client = probe_client(world, probe, kind)
    url = probe_path(world, path, probe)
    if probe.query:
        url += "?" + urlencode(probe.query)
    body = valid_body(world, path, method) if probe.body == "valid" else {}
    if body is None:
        return client.generic(method, url, **probe.headers)
    return client.generic(method, url, json.dumps(body), content_type="application/json", **probe.headers)


def test_every_operation_answers_only_statuses_its_schema_documents(schema, httpserver):
    httpserver.expect_request("/hook").respond_with_data("ok")
    world = build_world(httpserver.url_for("/hook"))
    undocumented = []
    seen: set[tuple[str, str, int]] = set()
    for path, method, documented in operations(schema):
        exact = [probe for exact_path, probe, _status in EXACT_PROBES if exact_path == path]
        for probe in [*PROBES, *exact]:
            # Each request starts from the same data: its writes are rolled back.
            with transaction.atomic():
                response = send(world, path, method, probe)
                transaction.set_rollback(True)
            cache.delete_pattern("*throttle_*")
            seen.add((path, method, response.status_code))
            if str(response.status_code) not in documented:
                undocumented.append(f"{method} {path} [{probe.label}] → {response.status_code}")
    assert not undocumented, "Statuses the schema does not document:\n" + "\n".join(undocumented)
    # The probes did reach the interesting answers, not only 401s.
    statuses = {status for _path, _method, status in seen}
    assert {200, 304, 400, 401, 403, 404} <= statuses, statuses


@pytest.mark.parametrize(
    ("path", "probe", "status"),
    EXACT_PROBES,
    ids=[f"{path} {probe.label}" for path, probe, _ in EXACT_PROBES],
)
def test_known_requests_answer_their_documented_status(schema, path, probe, status):
    world = build_world()
    method = "POST" if path.endswith("rotate-secret") else "GET"

    response = send(world, path, method, probe)

    assert response.status_code == status, response.content[:300]
    assert str(status) in schema["paths"][path][method.lower()]["responses"]


@pytest.mark.django_db(transaction=True)
def test_with_the_database_down_every_operation_answers_a_documented_status(schema):
    world = build_world()
    clients = {kind: probe_client(world, Probe("allowed", "allowed"), kind) for kind in ("tenant", "staff")}
    clients["public"] = clients["user"] = APIClient()
    undocumented = []
    with database_down():
        for path, method, documented in operations(schema):
            url = probe_path(world, path, Probe("down", "allowed"))
            body = valid_body(world, path, method)
            client = clients[view_kind(path)]
            if body is None:
                response = client.generic(method, url)
            else:
                response = client.generic(method, url, json.dumps(body), content_type="application/json")
            if path != "/api/health/live":
                assert response.status_code == 503, f"{method} {path}: {response.status_code}"
            if str(response.status_code) not in documented:
                undocumented.append(f"{method} {path} → {response.status_code}")
    assert not undocumented, "Statuses the schema does not document:\n" + "\n".join(undocumented)
