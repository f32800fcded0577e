"""Request-scoped context (request id, tenant, user) in contextvars: never a module global."""

from __future__ import annotations

import logging
import re
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar

request_id_var: ContextVar[str] = ContextVar("request_id", default="-")
tenant_id_var: ContextVar[str | None] = ContextVar("tenant_id", default=None)
user_id_var: ContextVar[str | None] = ContextVar("user_id", default=None)
# Work left for after the response has been sent; a list only while a request is being answered
# (converzia.middleware starts it, Django's `request_finished` runs it).
_after_response_var: ContextVar[list[Callable[[], None]] | None] = ContextVar("after_response", default=None)

logger = logging.getLogger(__name__)

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


def after_response(callback: Callable[[], None]) -> None:
    """Run `callback` once the current response has been sent (at once outside a request): for work the
    answer does not wait for, such as storing a value just computed in the cache. A callback that fails
    is logged; the response has already gone."""
    pending = _after_response_var.get()
    if pending is None:
        callback()
    else:
        pending.append(callback)


def after_response_begin() -> None:
    _after_response_var.set([])


def after_response_run(**_signal_kwargs: object) -> None:
    """`request_finished` receiver: the WSGI server has sent the response and closed it."""
    pending = _after_response_var.get()
    _after_response_var.set(None)
    for callback in pending or ():
        try:
            callback()
        except Exception:  # noqa: BLE001 — nothing left to fail: the client has its answer
            logger.exception("work after the response failed")
