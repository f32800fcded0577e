"""The error vocabulary: every error the API can answer, with its code and HTTP status."""

from __future__ import annotations

import enum
from typing import Any


class ErrorCode(enum.StrEnum):
    INVALID_INPUT = "invalid_input"
    UNAUTHENTICATED = "unauthenticated"
    INVALID_SIGNATURE = "invalid_signature"
    FORBIDDEN = "forbidden"
    NOT_A_MEMBER = "not_a_member"
    TENANT_REQUIRED = "tenant_required"
    TENANT_SUSPENDED = "tenant_suspended"
    NOT_FOUND = "not_found"
    METHOD_NOT_ALLOWED = "method_not_allowed"
    CONFLICT = "conflict"
    INVALID_TRANSITION = "invalid_transition"
    INSUFFICIENT_CREDITS = "insufficient_credits"
    RATE_LIMITED = "rate_limited"
    QUERY_TIMEOUT = "query_timeout"
    UNAVAILABLE = "unavailable"
    INTERNAL_ERROR = "internal_error"


class DomainError(Exception):
    """Base of every expected failure. Subclasses set `code`, `http_status` and `message`."""

    code: ErrorCode = ErrorCode.INTERNAL_ERROR
    http_status: int = 500
    message: str = "Something went wrong."
    # Seconds after which a retry may succeed; the API sends it as `Retry-After` (429/503 errors).
    retry_after: int | None = None

    def __init__(
        self,
        message: str | None = None,
        *,
        details: dict[str, Any] | None = None,
        retry_after: int | None = None,
    ) -> None:
        self.message = message or self.message
        self.details = details or {}
        if retry_after is not None:
            self.retry_after = retry_after
        super().__init__(self.message)


class InvalidInput(DomainError):
    code, http_status, message = ErrorCode.INVALID_INPUT, 400, "The request is invalid."


class Unauthenticated(DomainError):
    code, http_status, message = (
        ErrorCode.UNAUTHENTICATED,
        401,
        "Authentication credentials were not provided or are invalid.",
    )


class Forbidden(DomainError):
    code, http_status, message = ErrorCode.FORBIDDEN, 403, "You do not have permission to do this."


class NotAMember(DomainError):
    code, http_status, message = ErrorCode.NOT_A_MEMBER, 403, "You are not an active member of this tenant."


class TenantRequired(DomainError):
    code, http_status, message = (
        ErrorCode.TENANT_REQUIRED,
        400,
        "Name the tenant to act for with the X-Tenant-ID header.",
    )


class TenantSuspended(DomainError):
    """A member tried to change something while their tenant is SUSPENDED or ARCHIVED (read-only)."""

    code, http_status, message = (
        ErrorCode.TENANT_SUSPENDED,
        403,
        "Your tenant is suspended: you can read its data and billing, but not change anything.",
    )


class NotFound(DomainError):
    code, http_status, message = ErrorCode.NOT_FOUND, 404, "Not found."


class Conflict(DomainError):
    code, http_status, message = ErrorCode.CONFLICT, 409, "The request conflicts with the current state."


class InvalidTransition(DomainError):
    code, http_status, message = ErrorCode.INVALID_TRANSITION, 409, "This status change is not allowed."


class InsufficientCredits(DomainError):
    code, http_status, message = ErrorCode.INSUFFICIENT_CREDITS, 409, "The tenant has too few credits."


class Unavailable(DomainError):
    code, http_status, message = ErrorCode.UNAVAILABLE, 503, "The service is temporarily unavailable."


class QueryTimeout(DomainError):
    code, http_status, message = (
        ErrorCode.QUERY_TIMEOUT,
        503,
        "The database took too long to answer. Try again shortly.",
    )
    retry_after = 2
