"""Portal routes, mounted at /api/portal/ (no trailing slashes, like the rest of the API)."""

from __future__ import annotations

from django.urls import path
from rest_framework.routers import SimpleRouter

from portal.api.billing import billing_balance_view, billing_ledger_view
from portal.api.destination import destination_rotate_secret_view, destination_test_view, destination_view
from portal.api.leads import LeadViewSet
from portal.api.stats import funnel_view, lead_stats_view
from portal.api.views import OfferViewSet

router = SimpleRouter(trailing_slash=False, use_regex_path=False)
router.register("offers", OfferViewSet, basename="portal-offers")
# `leads/{id}` only matches UUIDs (lookup_value_converter), so `leads/stats` is never shadowed.
router.register("leads", LeadViewSet, basename="portal-leads")

urlpatterns = [
    # Before the router's routes, so `leads/stats` never depends on the `leads/{id}` converter.
    path("leads/stats", lead_stats_view, name="portal-leads-stats"),
    path("funnel", funnel_view, name="portal-funnel"),
    *router.urls,
    path("billing/balance", billing_balance_view, name="portal-billing-balance"),
    path("billing/ledger", billing_ledger_view, name="portal-billing-ledger"),
    path("delivery-destination", destination_view, name="portal-delivery-destination"),
    path(
        "delivery-destination/rotate-secret",
        destination_rotate_secret_view,
        name="portal-delivery-destination-rotate-secret",
    ),
    path("delivery-destination/test", destination_test_view, name="portal-delivery-destination-test"),
]
