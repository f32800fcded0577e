"""`GET /metrics`: Prometheus text exposition for staff or an allow-listed scraper (API.md "Metrics")."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from typing import Any

from django.conf import settings
from django.http import HttpResponse
from drf_spectacular.utils import extend_schema
from rest_framework.negotiation import BaseContentNegotiation
from rest_framework.permissions import BasePermission
from rest_framework.request import Request

from converzia.api.base import ApiView
from converzia.observability import exposition


def client_address(request: Request) -> str:
    """The client's address: REMOTE_ADDR, or, when NUM_PROXIES proxies append to X-Forwarded-For,
    the entry the outermost trusted proxy saw (a client cannot choose it)."""
    remote_addr = request.META.get("REMOTE_ADDR", "")
    num_proxies = int(settings.REST_FRAMEWORK.get("NUM_PROXIES") or 0)
    forwarded = request.META.get("HTTP_X_FORWARDED_FOR")
    if num_proxies > 0 and forwarded:
        hops = [hop.strip() for hop in forwarded.split(",") if hop.strip()]
        if hops:
            return hops[-min(num_proxies, len(hops))]
    return remote_addr


def address_allowed(address: str, allowed: Iterable[str]) -> bool:
    try:
        client = ipaddress.ip_address(address)
    except ValueError:
        return False
    for entry in allowed:
        try:
            if client in ipaddress.ip_network(entry.strip(), strict=False):
                return True
        except ValueError:
            continue
    return False


class StaffOrAllowListedAddress(BasePermission):
    """Staff (session or token), or a client address in METRICS_ALLOWED_IPS. Anyone else: 401 when
    anonymous, 403 when signed in without staff."""

    message = "Metrics are for staff or an allow-listed scraper."

    def has_permission(self, request: Request, view: Any) -> bool:
        user = request.user
        if user is not None and user.is_authenticated and user.is_staff:
            return True
        return address_allowed(client_address(request), settings.METRICS_ALLOWED_IPS)


class FirstRendererNegotiation(BaseContentNegotiation):
    """Prometheus asks for its text formats; errors still leave as JSON in the API's error shape."""

    def select_parser(self, request: Request, parsers: list[Any]) -> Any:
        return parsers[0] if parsers else None

    def select_renderer(
        self, request: Request, renderers: list[Any], format_suffix: str | None = None
    ) -> Any:
        return renderers[0], renderers[0].media_type


@extend_schema(exclude=True)
class MetricsView(ApiView):
    permission_classes = (StaffOrAllowListedAddress,)
    throttle_classes = ()
    content_negotiation_class = FirstRendererNegotiation

    def get(self, request: Request) -> HttpResponse:
        response = HttpResponse(exposition.render(), content_type=exposition.CONTENT_TYPE)
        response["Cache-Control"] = "no-store"
        return response
