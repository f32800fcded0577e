"""Request-scoped context (request id, tenant, user) in contextvars: never a module global."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

request_id_var: ContextVar[str] = ContextVar("request_id", default="-")
tenant_id_var: ContextVar[str | None] = ContextVar("tenant_id", default=None)
user_id_var: ContextVar[str | None] = ContextVar("user_id", default=None)

# An incoming X-Request-ID is echoed only if it is short and safe to put in logs and headers.
_VALID_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{8,128}$")


def new_request_id() -> str:
    return uuid.uuid4().hex


def accept_request_id(candidate: str | None) -> str:
    if candidate and _VALID_REQUEST_ID.match(candidate):
        return candidate
    return new_request_id()


def current_request_id() -> str:
    return request_id_var.get()


def current_trace_id() -> str:
    """The request id to store on rows (lead events, deliveries, inbox events): empty outside a request."""
    request_id = request_id_var.get()
    return "" if request_id == "-" else request_id


@contextmanager
def job_context(prefix: str = "job") -> Iterator[str]:
    """A trace id for background work run outside any request (one per job run), so its log lines
    and the rows it writes can be told apart and correlated. Inside a request (or a job that carries
    a webhook's request id) the current id is kept."""
    current = request_id_var.get()
    if current != "-":
        yield current
        return
    token = request_id_var.set(f"{prefix}-{new_request_id()}")
    try:
        yield request_id_var.get()
    finally:
        request_id_var.reset(token)
