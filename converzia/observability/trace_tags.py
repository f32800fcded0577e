"""Puts the request id and tenant on the request's trace: Sentry tags and OpenTelemetry span attributes.

Settings install `TraceTagsMiddleware` right after `RequestIdMiddleware`, and only when `SENTRY_DSN` or
`OTEL_EXPORTER_OTLP_ENDPOINT` is set: with neither, requests do not pass through it at all. Errors
captured during a request read the same context themselves (converzia.observability.sentry); the
middleware is for what is finished after the request context is gone (the Sentry transaction, the
OpenTelemetry server span).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import sentry_sdk

from converzia.observability import otel
from converzia.request_context import tenant_id_var

if TYPE_CHECKING:  # settings import this module: no Django HTTP machinery at import time
    from django.http import HttpRequest, HttpResponse

MIDDLEWARE_PATH = "converzia.observability.trace_tags.TraceTagsMiddleware"
REQUEST_ID_ATTRIBUTE = "converzia.request_id"
TENANT_ID_ATTRIBUTE = "converzia.tenant_id"


def install(middleware: list[str], *, after: str = "converzia.middleware.RequestIdMiddleware") -> list[str]:
    """`middleware` with ours inserted after the request id middleware (once)."""
    if MIDDLEWARE_PATH in middleware:
        return middleware
    position = middleware.index(after) + 1 if after in middleware else 0
    return [*middleware[:position], MIDDLEWARE_PATH, *middleware[position:]]


class TraceTagsMiddleware:
    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        sentry_on = sentry_sdk.get_client().is_active()
        span = otel.current_span()
        request_id = getattr(request, "request_id", None)
        if request_id:
            if sentry_on:
                sentry_sdk.set_tag("request_id", request_id)
            if span is not None:
                span.set_attribute(REQUEST_ID_ATTRIBUTE, request_id)
        response = self.get_response(request)
        # The tenant is resolved by the view; RequestIdMiddleware resets it only after we return.
        tenant_id = tenant_id_var.get()
        if tenant_id:
            if sentry_on:
                sentry_sdk.set_tag("tenant_id", tenant_id)
            if span is not None:
                span.set_attribute(TENANT_ID_ATTRIBUTE, tenant_id)
        return response
