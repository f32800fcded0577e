"""OpenAPI schema, Swagger UI (no CDN) and liveness."""

from __future__ import annotations

import json
import re

import pytest
from drf_spectacular.validation import validate_schema
from rest_framework.test import APIClient

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
    assert sorted(offers_list) == ["200", "400", "401", "403", "500"]
    assert sorted(offer_detail) == ["200", "400", "401", "403", "404", "500"]
    ref = {"$ref": "#/components/schemas/ErrorResponse"}
    assert all(
        offer_detail[code]["content"]["application/json"]["schema"] == ref
        for code in offer_detail
        if code != "200"
    )
    token_responses = schema["paths"]["/api/auth/token"]["post"]["responses"]
    assert sorted(token_responses) == ["200", "400", "401", "429", "500"]


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
