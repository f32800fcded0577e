"""Logging: the request context on every record, PII masking, and the JSON / console formatters.

Every handler carries two filters, in this order:
- `RequestIdFilter` puts `request_id`, `tenant_id` and `user_id` on the record (from the request
  context, or from the request Django attaches to its own response records);
- `PiiMaskingFilter` masks personal data and secrets (DOMAIN.md §8) in the message and in every extra
  field, so no handler ever sees them unmasked.

Formatters (`LOG_FORMAT`): `json` (one JSON object per line, python-json-logger) everywhere except local
development, which defaults to `console` (one readable line). Both mask tracebacks with the same rules.

This module must not import Django: settings import it.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from typing import Any

from pythonjsonlogger.core import RESERVED_ATTRS
from pythonjsonlogger.json import JsonFormatter as _LibraryJsonFormatter

from converzia.request_context import request_id_var, tenant_id_var, user_id_var

# --- masking rules (DOMAIN.md §8) -----------------------------------------------------------------

# Personal data: partially masked, keeping the first 2 and last 2 characters.
PII_KEYS = frozenset(
    {
        "phone",
        "phone_number",
        "phone_e164",
        "email",
        "dni",
        "full_name",
        "first_name",
        "last_name",
        "name",
        "ip",
        "ip_address",
        "address",
    }
)
# Secrets: fully redacted.
SECRET_KEYS = frozenset(
    {
        "password",
        "token",
        "access_token",
        "refresh_token",
        "api_key",
        "api_token",
        "secret",
        "secret_key",
        "authorization",
        "cookie",
        "set_cookie",
        "ssn",
        "credit_card",
        "card_number",
        "cvv",
        "cuit",
    }
)
SECRET_KEY_SUFFIXES = ("_token", "_secret", "_password")
REDACTED = "[REDACTED]"

# Patterns inside free text (messages, tracebacks, string values of any extra).
_AUTH_HEADER = re.compile(
    r"(?i)\b(authorization|proxy-authorization)((?>\"?\s*[:=]\s*\"?))(?>((?:bearer|basic|token)\s+)?)(?!\[)[^\s\",;}]+"
)
_COOKIE_HEADER = re.compile(r"(?i)\b(cookie|set-cookie)((?>\"?\s*[:=]\s*\"?))(?!\[)([^\"\r\n}]+)")
_BEARER = re.compile(r"(?i)\b(bearer|basic)\s+(?!\[)[A-Za-z0-9._~+/=-]{6,}")
_SECRET_PARAM = re.compile(
    r"(?i)\b((?:access_|refresh_|api_|page_access_)?token|secret|password|api_key|appsecret_proof)"
    r"((?>=|\"?\s*:\s*\"?))(?!\[)([^&\s\"',;}]+)"
)
_WHSEC = re.compile(r"\bwhsec_[A-Za-z0-9+/=_-]+")
_EMAIL = re.compile(r"(?i)\b[a-z0-9._%+-]+@[a-z0-9.-]+\.[a-z]{2,}\b")
# E.164: a plus and 8 to 15 digits, optionally grouped by spaces or dashes.
_PHONE = re.compile(r"(?<![\w+])\+\d(?:[ -]?\d){7,14}\b")

_MAX_DEPTH = 6


def mask_partial(value: str) -> str:
    """Keep the first 2 and last 2 characters; short values are hidden entirely."""
    if len(value) <= 6:
        return "***"
    return f"{value[:2]}***{value[-2:]}"


def mask_text(text: str) -> str:
    """Mask secrets and personal data found inside free text."""
    if not text:
        return text
    text = _AUTH_HEADER.sub(lambda m: f"{m.group(1)}{m.group(2)}{m.group(3) or ''}{REDACTED}", text)
    text = _COOKIE_HEADER.sub(lambda m: f"{m.group(1)}{m.group(2)}{REDACTED}", text)
    text = _BEARER.sub(lambda m: f"{m.group(1)} {REDACTED}", text)
    text = _SECRET_PARAM.sub(lambda m: f"{m.group(1)}{m.group(2)}{REDACTED}", text)
    text = _WHSEC.sub(REDACTED, text)
    text = _EMAIL.sub(lambda m: mask_partial(m.group(0)), text)
    return _PHONE.sub(lambda m: mask_partial(m.group(0)), text)


def _key_kind(key: str) -> str | None:
    lowered = key.lower().replace("-", "_")
    if lowered in SECRET_KEYS or lowered.endswith(SECRET_KEY_SUFFIXES):
        return "secret"
    if lowered in PII_KEYS:
        return "pii"
    return None


def mask_value(value: Any, *, key: str | None = None, depth: int = 0) -> Any:
    """Mask one value: by its key when the key names PII or a secret, else by content, recursively."""
    kind = _key_kind(key) if key is not None else None
    if kind == "secret" and value not in (None, ""):
        return REDACTED
    if kind == "pii" and value not in (None, ""):
        if isinstance(value, (str, int)):
            return mask_partial(str(value))
        return REDACTED
    if depth >= _MAX_DEPTH:
        return value
    if isinstance(value, str):
        return mask_text(value)
    if isinstance(value, Mapping):
        return {k: mask_value(v, key=str(k), depth=depth + 1) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(mask_value(v, depth=depth + 1) for v in value)
    return value


# --- filters -------------------------------------------------------------------------------------


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


# Record attributes that are never user data (plus our own context fields).
_NOT_EXTRAS = frozenset(RESERVED_ATTRS) | {"request_id", "tenant_id", "user_id", "taskName"}


class PiiMaskingFilter(logging.Filter):
    """Masks the rendered message and every extra field, once per record, whatever the handler."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "_pii_masked", False):
            return True
        if isinstance(record.msg, Mapping) and not record.args:
            # python-json-logger logs a dict message as fields.
            record.msg = mask_value(dict(record.msg))
        elif not isinstance(record.msg, str) or record.args:
            try:
                message = record.getMessage()
            except Exception:  # noqa: BLE001 — a bad format string is logging's problem, not ours
                message = str(record.msg)
            record.msg, record.args = message, ()
        if isinstance(record.msg, str):
            record.msg = mask_text(record.msg)
        for key, value in list(record.__dict__.items()):
            if key in _NOT_EXTRAS or key.startswith("_"):
                continue
            if key == "request":
                # Django attaches the HttpRequest to response records: never serialize it whole.
                continue
            record.__dict__[key] = mask_value(value, key=key)
        record._pii_masked = True
        return True


# --- formatters ----------------------------------------------------------------------------------

JSON_FIELDS = ["levelname", "name", "message", "request_id", "tenant_id", "user_id"]


class JsonFormatter(_LibraryJsonFormatter):
    """python-json-logger's formatter with our field names; tracebacks are masked like messages."""

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("fmt", JSON_FIELDS)
        kwargs.setdefault("rename_fields", {"levelname": "level", "name": "logger"})
        kwargs.setdefault("timestamp", True)
        # The HttpRequest Django attaches to its response records is not data; `_pii_masked` is ours.
        kwargs.setdefault("reserved_attrs", [*RESERVED_ATTRS, "request", "_pii_masked"])
        super().__init__(**kwargs)

    def formatException(self, ei: Any) -> str:  # noqa: N802 — logging's name
        return mask_text(str(super().formatException(ei)))


class ConsoleFormatter(logging.Formatter):
    """One readable line for local development."""

    def __init__(self) -> None:
        super().__init__(
            "%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s",
        )

    def formatException(self, ei: Any) -> str:  # noqa: N802 — logging's name
        return mask_text(super().formatException(ei))


LOG_FORMATS = ("json", "console")


def logging_settings(*, log_format: str, level: str, procrastinate_level: str) -> dict[str, Any]:
    """The `LOGGING` dict for settings: one console handler with the chosen format and both filters."""
    if log_format not in LOG_FORMATS:
        raise ValueError(f"LOG_FORMAT must be one of {', '.join(LOG_FORMATS)}, not {log_format!r}.")
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {
            "request_id": {"()": "converzia.logging.RequestIdFilter"},
            "pii": {"()": "converzia.logging.PiiMaskingFilter"},
        },
        "formatters": {
            "json": {"()": "converzia.logging.JsonFormatter"},
            "console": {"()": "converzia.logging.ConsoleFormatter"},
        },
        "handlers": {
            "console": {
                "class": "logging.StreamHandler",
                "formatter": log_format,
                "filters": ["request_id", "pii"],
            },
        },
        "root": {"handlers": ["console"], "level": level},
        "loggers": {
            "django.db.backends": {"level": "WARNING"},
            # httpx logs each request URL at INFO, and Graph URLs carry the page access token.
            "httpx": {"level": "WARNING"},
            "httpcore": {"level": "WARNING"},
            # procrastinate logs every job start and end at INFO; raise it when debugging the queue.
            "procrastinate": {"level": procrastinate_level},
        },
    }
