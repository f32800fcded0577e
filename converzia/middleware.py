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
