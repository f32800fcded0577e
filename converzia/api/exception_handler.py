"""The one DRF exception handler: every error leaves the API as `{"error": {...}}` (API.md "Errors").

Mapping:
- `converzia.errors.DomainError` (and subclasses in every app) → its own code, status and details, plus
  `Retry-After` when it carries `retry_after` (a query timeout, for instance).
- DRF `ValidationError` / `ParseError` → 400 `invalid_input` with field details.
- DRF `NotAuthenticated` / `AuthenticationFailed` → 401 `unauthenticated` with `WWW-Authenticate`.
- DRF and Django `PermissionDenied` → 403 `forbidden`; `NotFound` / `Http404` → 404 `not_found`;
  `MethodNotAllowed` → 405; `Throttled` → 429 `rate_limited` with `Retry-After`.
- Django `ValidationError` → 400 `invalid_input`.
- A database that cannot be reached (connection refused, timed out, closed under us, shutting down)
  → 503 `unavailable` with `Retry-After`: the client did nothing wrong and may try again.
- Anything else → 500 `internal_error`, logged with its traceback; the body says nothing about it.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import psycopg
from django.core.exceptions import NON_FIELD_ERRORS
from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.core.exceptions import ValidationError as DjangoValidationError
from django.db import Error as DatabaseError
from django.http import Http404
from rest_framework import exceptions, status
from rest_framework.response import Response
from rest_framework.views import set_rollback

from converzia.api.authentication import BEARER_REALM
from converzia.errors import DomainError, ErrorCode
from converzia.observability.sentry import report_handled_error
from converzia.request_context import current_request_id

logger = logging.getLogger("converzia.api")

# A query timeout without an explicit hint still tells the client when to come back.
DEFAULT_QUERY_TIMEOUT_RETRY_AFTER_S = 2
# A database outage (failover, restart) usually lasts seconds to a minute.
DATABASE_UNAVAILABLE_RETRY_AFTER_S = 5
# SQLSTATEs that mean "the server is not there for us", as opposed to a fault in the query:
# class 08 (connection exception) and 57P01–57P03 (shutdown, crash shutdown, cannot connect now).
_UNAVAILABLE_SQLSTATE_CLASS = "08"
_UNAVAILABLE_SQLSTATES = frozenset({"57P01", "57P02", "57P03"})

# Codes for DRF exceptions that have no dedicated branch below, by status.
_CODE_BY_STATUS: dict[int, ErrorCode] = {
    400: ErrorCode.INVALID_INPUT,
    401: ErrorCode.UNAUTHENTICATED,
    403: ErrorCode.FORBIDDEN,
    404: ErrorCode.NOT_FOUND,
    405: ErrorCode.METHOD_NOT_ALLOWED,
    409: ErrorCode.CONFLICT,
    429: ErrorCode.RATE_LIMITED,
    503: ErrorCode.UNAVAILABLE,
}

INVALID_INPUT_MESSAGE = "The request is invalid."
NOT_FOUND_MESSAGE = "Not found."
INTERNAL_ERROR_MESSAGE = "Something went wrong on our side. Quote the request id when reporting it."


def error_body(code: str, message: str, details: dict[str, Any] | None = None) -> dict[str, Any]:
    """The error envelope, with the current request's id."""
    return {
        "error": {
            "code": str(code),
            "message": str(message),
            "details": details or {},
            "request_id": current_request_id(),
        }
    }


def error_response(
    code: str,
    message: str,
    http_status: int,
    details: dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
) -> Response:
    return Response(error_body(code, message, details), status=http_status, headers=headers)


def api_exception_handler(exc: Exception, context: dict[str, Any]) -> Response:
    """DRF `EXCEPTION_HANDLER`. Always answers: nothing escapes to Django's HTML error pages."""
    if isinstance(exc, DomainError):
        report_handled_error(exc)  # 5xx only (a query timeout): Sentry, when configured
    response = _response_for(exc, context)
    # Undo the request's writes if it runs in a transaction (ATOMIC_REQUESTS or an enclosing atomic).
    set_rollback()
    return response


def _response_for(exc: Exception, context: dict[str, Any]) -> Response:
    if isinstance(exc, DomainError):
        return _domain_error_response(exc)
    if isinstance(exc, exceptions.APIException):
        return _drf_error_response(exc)
    if isinstance(exc, Http404):
        return error_response(ErrorCode.NOT_FOUND, NOT_FOUND_MESSAGE, status.HTTP_404_NOT_FOUND)
    if isinstance(exc, DjangoPermissionDenied):
        return error_response(ErrorCode.FORBIDDEN, "You do not have permission to do this.", 403)
    if isinstance(exc, DjangoValidationError):
        return error_response(ErrorCode.INVALID_INPUT, INVALID_INPUT_MESSAGE, 400, _django_error_details(exc))
    if database_unreachable(exc):
        logger.warning("Database unavailable: %s", type(exc.__cause__ or exc).__name__)
        return error_response(
            ErrorCode.UNAVAILABLE,
            "The service is temporarily unavailable.",
            503,
            headers={"Retry-After": str(DATABASE_UNAVAILABLE_RETRY_AFTER_S)},
        )
    view = context.get("view")
    logger.exception(
        "Unhandled exception in %s",
        type(view).__name__ if view is not None else "API view",
        exc_info=exc,
    )
    return error_response(ErrorCode.INTERNAL_ERROR, INTERNAL_ERROR_MESSAGE, 500)


def database_unreachable(exc: BaseException) -> bool:
    """Whether `exc` says the database could not be reached, rather than that a query failed.

    psycopg raises connection failures (refused, timed out, closed by the server) without a SQLSTATE,
    since no server answered; a server going away answers with class 08 or 57P01–57P03.
    """
    if not isinstance(exc, DatabaseError):
        return False
    cause = exc.__cause__
    sqlstate = getattr(cause, "sqlstate", None)
    if sqlstate is None:
        # Django wraps every psycopg error; only the driver's OperationalError/InterfaceError without a
        # server answer is a connection failure (psycopg_pool's PoolTimeout is an OperationalError).
        return isinstance(cause, (psycopg.OperationalError, psycopg.InterfaceError))
    return sqlstate.startswith(_UNAVAILABLE_SQLSTATE_CLASS) or sqlstate in _UNAVAILABLE_SQLSTATES


def _domain_error_response(exc: DomainError) -> Response:
    retry_after = exc.retry_after
    if retry_after is None and exc.code == ErrorCode.QUERY_TIMEOUT:
        retry_after = DEFAULT_QUERY_TIMEOUT_RETRY_AFTER_S
    headers = {"Retry-After": str(retry_after)} if retry_after is not None else None
    if exc.code == ErrorCode.UNAUTHENTICATED:
        headers = {**(headers or {}), "WWW-Authenticate": BEARER_REALM}
    return error_response(exc.code, exc.message, exc.http_status, _plain(exc.details), headers)


def _drf_error_response(exc: exceptions.APIException) -> Response:
    if isinstance(exc, exceptions.ValidationError):
        return error_response(ErrorCode.INVALID_INPUT, INVALID_INPUT_MESSAGE, 400, _field_details(exc.detail))
    if isinstance(exc, exceptions.ParseError):
        return error_response(ErrorCode.INVALID_INPUT, "The request body could not be parsed.", 400)
    if isinstance(exc, (exceptions.NotAuthenticated, exceptions.AuthenticationFailed)):
        # Always 401 (DRF would downgrade to 403 on views without authenticators): a client that is
        # not authenticated must learn that, with the scheme to use.
        header = getattr(exc, "auth_header", None) or BEARER_REALM
        return error_response(
            ErrorCode.UNAUTHENTICATED, _message(exc), 401, headers={"WWW-Authenticate": header}
        )
    if isinstance(exc, exceptions.NotFound):
        return error_response(ErrorCode.NOT_FOUND, NOT_FOUND_MESSAGE, 404)
    if isinstance(exc, exceptions.Throttled):
        wait = math.ceil(exc.wait) if exc.wait is not None else None
        headers = {"Retry-After": str(max(wait, 1))} if wait is not None else None
        details = {"retry_after": max(wait, 1)} if wait is not None else {}
        return error_response(
            ErrorCode.RATE_LIMITED, "Too many requests. Try again later.", 429, details, headers
        )
    code = _CODE_BY_STATUS.get(exc.status_code)
    if code is None:
        code = ErrorCode.INVALID_INPUT if exc.status_code < 500 else ErrorCode.INTERNAL_ERROR
    return error_response(code, _message(exc), exc.status_code)


def _message(exc: exceptions.APIException) -> str:
    detail = exc.detail
    if isinstance(detail, str):
        return str(detail)
    return str(exc.default_detail)


def _field_details(detail: Any) -> dict[str, Any]:
    """DRF error detail as `{field: [messages]}`; errors not tied to a field go under `non_field_errors`."""
    plain = _plain(detail)
    if isinstance(plain, dict):
        return plain
    if isinstance(plain, list):
        return {"non_field_errors": plain}
    return {"non_field_errors": [plain]}


def _django_error_details(exc: DjangoValidationError) -> dict[str, Any]:
    if hasattr(exc, "error_dict"):
        return {
            ("non_field_errors" if field == NON_FIELD_ERRORS else field): list(messages)
            for field, messages in exc.message_dict.items()
        }
    return {"non_field_errors": list(exc.messages)}


def _plain(value: Any) -> Any:
    """ErrorDetail and lazy strings → str, recursively, so any renderer can serialise the details."""
    if isinstance(value, dict):
        return {str(key): _plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    if value is None or isinstance(value, (bool, int, float)):
        return value
    return str(value)
