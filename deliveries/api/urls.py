"""Ops routes, mounted at /api/ops/ (staff only; no trailing slashes, like the rest of the API)."""

from __future__ import annotations

from django.urls import path

from deliveries.api.ops import lead_offer_qualification_view, lead_offer_transition_view

# `str`, not `uuid`: a malformed id then reaches the view, which authenticates before answering 404.
urlpatterns = [
    path("lead-offers/<str:id>/transition", lead_offer_transition_view, name="ops-lead-offer-transition"),
    path(
        "lead-offers/<str:id>/qualification",
        lead_offer_qualification_view,
        name="ops-lead-offer-qualification",
    ),
]
