"""Portal routes, mounted at /api/portal/ (no trailing slashes, like the rest of the API)."""

from __future__ import annotations

from django.urls import path
from rest_framework.routers import Route, SimpleRouter

from portal.api.billing import billing_balance_view, billing_ledger_view
from portal.api.destination import destination_rotate_secret_view, destination_test_view, destination_view
from portal.api.leads import LeadViewSet
from portal.api.stats import FunnelViewSet, LeadStatsViewSet
from portal.api.views import OfferViewSet


class PortalRouter(SimpleRouter):
    """DRF's routes, plus one for a resource that is neither a collection nor one of its items (the
    tenant's stats, its funnel): `GET {prefix}` served by the viewset's `read` action and named
    `{basename}` itself. A viewset without `read` gets no such route, as one without `list` gets no
    list route."""

    routes = [
        Route(
            url=r"^{prefix}{trailing_slash}$",
            mapping={"get": "read"},
            name="{basename}",
            detail=False,
            initkwargs={},
        ),
        *SimpleRouter.routes,
    ]


router = PortalRouter(trailing_slash=False, use_regex_path=False)
# Before `leads`, so `leads/stats` comes first; `leads/{id}` only matches UUIDs anyway
# (lookup_value_converter), so it never shadows it.
router.register("leads/stats", LeadStatsViewSet, basename="portal-leads-stats")
router.register("funnel", FunnelViewSet, basename="portal-funnel")
router.register("offers", OfferViewSet, basename="portal-offers")
router.register("leads", LeadViewSet, basename="portal-leads")

urlpatterns = [
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
