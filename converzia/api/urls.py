"""Kernel routes under /api/: token login, readiness and liveness, the OpenAPI schema and its Swagger UI."""

from __future__ import annotations

from django.urls import path

from converzia.api.views import ApiDocsView, ApiSchemaView, AuthTokenView, HealthLiveView, HealthView

urlpatterns = [
    path("auth/token", AuthTokenView.as_view(), name="api-auth-token"),
    path("health", HealthView.as_view(), name="api-health"),
    path("health/live", HealthLiveView.as_view(), name="api-health-live"),
    # Public on purpose: the contract is not a secret, and clients generate code from it.
    path("schema/", ApiSchemaView.as_view(), name="api-schema"),
    path("docs/", ApiDocsView.as_view(url_name="api-schema"), name="api-docs"),
]
