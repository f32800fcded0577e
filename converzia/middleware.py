"""Request middleware: the request id (accept or mint `X-Request-ID`, keep it in context, echo it back)
and the request metrics (latency and status class by route)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from django.core.signals import request_finished
from django.http import HttpRequest, HttpResponse

from converzia.metrics import HTTP_REQUEST_SECONDS, HTTP_RESPONSES, UNMATCHED_ROUTE
from converzia.request_context import (
    accept_request_id,
    after_response_begin,
    after_response_run,
    request_id_var,
    tenant_id_var,
    user_id_var,
)

# Work deferred with `after_response` runs when the server closes the response, after sending it.
request_finished.connect(after_response_run, dispatch_uid="converzia_after_response")


class RequestIdMiddleware:
    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        after_response_begin()
        request_id = accept_request_id(request.headers.get("X-Request-ID"))
        # Also on the request: Django logs the response after this middleware has reset the context.
        request.request_id = request_id  # type: ignore[attr-defined]
        tokens = (request_id_var.set(request_id), tenant_id_var.set(None), user_id_var.set(None))
        try:
            response = self.get_response(request)
        finally:
            # Reset so work done after the request (tests, commands in the same thread) carries no
            # stale request id or tenant.
            request_id_var.reset(tokens[0])
            tenant_id_var.reset(tokens[1])
            user_id_var.reset(tokens[2])
        response["X-Request-ID"] = request_id
        return response


access_logger = logging.getLogger("converzia.access")

# Methods get their own label; anything else (a scanner's "PROPFIND") shares one.
_KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


def route_label(request: HttpRequest) -> str:
    """The matched URL pattern (e.g. `api/portal/leads/<uuid:lead_id>`), never the raw path."""
    match = getattr(request, "resolver_match", None)
    if match is None:
        return UNMATCHED_ROUTE
    return match.route or match.view_name or UNMATCHED_ROUTE


class RequestMetricsMiddleware:
    """Request latency by route and method, responses by status class (converzia.metrics), and one
    access log line per request (in the request's context: request, tenant and user ids)."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        started = time.perf_counter()
        response = self.get_response(request)
        elapsed = time.perf_counter() - started
        route = route_label(request)
        method = request.method if request.method in _KNOWN_METHODS else "other"
        HTTP_REQUEST_SECONDS.labels(route, method).observe(elapsed)
        HTTP_RESPONSES.labels(route, method, f"{response.status_code // 100}xx").inc()
        # The path without its query string (a Meta verification carries a token there).
        access_logger.info(
            "%s %s %s",
            request.method,
            request.path,
            response.status_code,
            extra={
                "method": request.method,
                "path": request.path,
                "route": route,
                "status": response.status_code,
                "duration_ms": round(elapsed * 1000, 2),
            },
        )
        return response
