"""Request id middleware: accept or mint `X-Request-ID`, keep it in context, echo it back."""

from __future__ import annotations

from collections.abc import Callable

from django.http import HttpRequest, HttpResponse

from converzia.request_context import accept_request_id, request_id_var, tenant_id_var, user_id_var


class RequestIdMiddleware:
    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        request_id = accept_request_id(request.headers.get("X-Request-ID"))
        request.request_id = request_id  # type: ignore[attr-defined]
        # Set, never reset: Django logs the response ("Not Found", "Internal Server Error") after the
        # middleware chain returns, and that line must carry this request's id. Each request sets all
        # three at its start, so nothing leaks from one request to the next.
        request_id_var.set(request_id)
        tenant_id_var.set(None)
        user_id_var.set(None)
        response = self.get_response(request)
        response["X-Request-ID"] = request_id
        return response
