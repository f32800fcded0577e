"""Logging helpers: every record carries the request id of the request that produced it."""

from __future__ import annotations

import logging

from converzia.request_context import request_id_var, tenant_id_var, user_id_var


class RequestIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        # Django logs a response ("Not Found", "Internal Server Error") after the middleware chain has
        # returned and the context is reset; those records carry the request itself.
        request = getattr(record, "request", None)
        record.request_id = getattr(request, "request_id", None) or request_id_var.get()
        # A line about a specific tenant (extra={"tenant_id": …}) keeps it; others get the context's.
        record.tenant_id = getattr(record, "tenant_id", None) or tenant_id_var.get()
        record.user_id = user_id_var.get()
        return True
