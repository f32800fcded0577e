"""Throttles (DRF's, counted in the shared cache). A cache outage disables them rather than the API."""

from __future__ import annotations

from typing import Any

from rest_framework.request import Request
from rest_framework.throttling import SimpleRateThrottle


class AuthTokenRateThrottle(SimpleRateThrottle):
    """Password guessing on `POST /api/auth/token`: attempts per client address, signed in or not.

    The rate is `REST_FRAMEWORK["DEFAULT_THROTTLE_RATES"]["auth_token"]`; the address honours
    `NUM_PROXIES`, so a client cannot dodge the limit with a forged X-Forwarded-For.
    """

    scope = "auth_token"

    def get_cache_key(self, request: Request, view: Any) -> str:
        return self.cache_format % {"scope": self.scope, "ident": self.get_ident(request)}


class DeliveryTestRateThrottle(SimpleRateThrottle):
    """`POST /api/portal/delivery-destination/test` per tenant: each test holds a web worker for up to
    DELIVERY_TIMEOUT_S while the receiver answers, so a loop of tests must not tie up the server.

    The rate is `REST_FRAMEWORK["DEFAULT_THROTTLE_RATES"]["delivery_test"]`.
    """

    scope = "delivery_test"

    def get_cache_key(self, request: Request, view: Any) -> str:
        return self.cache_format % {"scope": self.scope, "ident": str(view.tenant.pk)}
