"""Portal routes, mounted at /api/portal/ (no trailing slashes, like the rest of the API)."""

from __future__ import annotations

from rest_framework.routers import SimpleRouter

from portal.api.views import OfferViewSet

router = SimpleRouter(trailing_slash=False, use_regex_path=False)
router.register("offers", OfferViewSet, basename="portal-offers")

urlpatterns = [
    *router.urls,
]
