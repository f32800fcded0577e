"""Meta's side of ingestion: webhook signatures, the leadgen payload, the Graph API lead fetch and
the field extraction (DOMAIN.md §5.1, §5.2). Pure protocol: nothing here touches the database."""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import httpx
from django.conf import settings

logger = logging.getLogger(__name__)

SIGNATURE_PREFIX = "sha256="
SUBSCRIBED_OBJECTS = frozenset({"page"})
LEADGEN_FIELD = "leadgen"
_ID_MAX_LENGTH = 64


# --- Subscription handshake and signatures ------------------------------------------------------------


def verify_token_matches(candidate: str | None) -> bool:
    """The GET handshake: constant-time compare; an unset or empty token never verifies."""
    expected = settings.META_WEBHOOK_VERIFY_TOKEN
    if not expected or not candidate:
        return False
    return hmac.compare_digest(candidate.encode(), expected.encode())


def signature_valid(raw_body: bytes, header: str | None, *, secret: str | None = None) -> bool:
    """`X-Hub-Signature-256: sha256=<hex HMAC-SHA256 of the raw body>`, compared in constant time.

    Computed over the exact bytes received, before any parsing. `sha1=` headers, a missing header or
    a missing app secret never verify.
    """
    secret = settings.META_APP_SECRET if secret is None else secret
    if not secret or not header or not header.startswith(SIGNATURE_PREFIX):
        return False
    expected = hmac.new(secret.encode(), raw_body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(header[len(SIGNATURE_PREFIX) :].strip().lower().encode(), expected.encode())


def signature_header(raw_body: bytes, secret: str) -> str:
    """What Meta would send for `raw_body` (load tests and the measure command sign with it)."""
    return SIGNATURE_PREFIX + hmac.new(secret.encode(), raw_body, hashlib.sha256).hexdigest()


# --- Payload -------------------------------------------------------------------------------------------


class PayloadError(ValueError):
    """The body is JSON but not Meta's webhook shape. `details` says where."""

    def __init__(self, message: str, details: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.details = details or {}


@dataclass(frozen=True)
class LeadgenChange:
    leadgen_id: str
    page_id: str = ""
    form_id: str = ""
    ad_id: str = ""
    adgroup_id: str = ""
    submitted_at: datetime | None = None
    value: dict[str, Any] = field(default_factory=dict)


def _meta_id(value: object, where: str, *, required: bool = False) -> str:
    """Meta sends ids as JSON strings or numbers; we keep them as text."""
    if value is None or value == "":
        if required:
            raise PayloadError(f"{where} is required.", {where: "This field is required."})
        return ""
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise PayloadError(
            f"{where} must be a string or an integer.", {where: "Must be a string or an integer."}
        )
    text = str(value).strip()
    if not text or len(text) > _ID_MAX_LENGTH:
        raise PayloadError(
            f"{where} is not a valid id.", {where: f"Must be 1 to {_ID_MAX_LENGTH} characters."}
        )
    return text


def _unix_time(value: object) -> datetime | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        return datetime.fromtimestamp(value, tz=UTC)
    except (OverflowError, OSError, ValueError):
        return None


def _contains_nul(payload: object) -> bool:
    """Whether any key or string holds U+0000, which PostgreSQL text and jsonb cannot store.

    Iterative, so a deeply nested body cannot exhaust the Python stack."""
    pending = [payload]
    while pending:
        value = pending.pop()
        if isinstance(value, str):
            if "\x00" in value:
                return True
        elif isinstance(value, dict):
            if any("\x00" in key for key in value):
                return True
            pending.extend(value.values())
        elif isinstance(value, list):
            pending.extend(value)
    return False


def leadgen_changes(payload: object, *, max_changes: int | None = None) -> list[LeadgenChange]:
    """The leadgen changes of a `page` payload, in order (entry by entry, change by change).

    Changes of other fields are skipped; a leadgen change without a leadgen_id is a shape error.
    Raises `PayloadError` for anything that is not Meta's shape, carries too many changes or could not
    be stored (a NUL character: the insert would fail every time, and the 503 would make Meta retry
    it forever).
    """
    max_changes = settings.META_WEBHOOK_MAX_CHANGES if max_changes is None else max_changes
    if not isinstance(payload, dict):
        raise PayloadError("The body must be a JSON object.", {"body": "Must be a JSON object."})
    entries = payload.get("entry")
    if not isinstance(entries, list):
        raise PayloadError("`entry` must be a list.", {"entry": "Must be a list."})
    changes: list[LeadgenChange] = []
    for entry_index, entry in enumerate(entries):
        where = f"entry[{entry_index}]"
        if not isinstance(entry, dict):
            raise PayloadError(f"{where} must be an object.", {where: "Must be an object."})
        entry_changes = entry.get("changes", [])
        if not isinstance(entry_changes, list):
            raise PayloadError(f"{where}.changes must be a list.", {f"{where}.changes": "Must be a list."})
        for change_index, change in enumerate(entry_changes):
            at = f"{where}.changes[{change_index}]"
            if not isinstance(change, dict) or not isinstance(change.get("field"), str):
                raise PayloadError(f"{at} must be an object with a `field`.", {at: "Must have a `field`."})
            if change["field"] != LEADGEN_FIELD:
                continue
            value = change.get("value")
            if not isinstance(value, dict):
                raise PayloadError(f"{at}.value must be an object.", {f"{at}.value": "Must be an object."})
            changes.append(
                LeadgenChange(
                    leadgen_id=_meta_id(value.get("leadgen_id"), f"{at}.value.leadgen_id", required=True),
                    page_id=_meta_id(value.get("page_id"), f"{at}.value.page_id")
                    or _meta_id(entry.get("id"), f"{where}.id"),
                    form_id=_meta_id(value.get("form_id"), f"{at}.value.form_id"),
                    ad_id=_meta_id(value.get("ad_id"), f"{at}.value.ad_id"),
                    adgroup_id=_meta_id(value.get("adgroup_id"), f"{at}.value.adgroup_id"),
                    submitted_at=_unix_time(value.get("created_time")),
                    value=value,
                )
            )
            if len(changes) > max_changes:
                raise PayloadError(
                    f"At most {max_changes} leadgen changes per request.",
                    {"entry": f"Over {max_changes} changes."},
                )
    # Only a body that will be stored must be storable; one without leadgen changes is just ignored.
    if changes and _contains_nul(payload):
        raise PayloadError(
            "The body must not contain NUL (\\u0000) characters.",
            {"body": "Must not contain NUL characters."},
        )
    return changes


# --- Graph API -----------------------------------------------------------------------------------------

# Meta's throttling error codes: application, user, page and ad-account rate limits.
RATE_LIMIT_CODES = frozenset({4, 17, 32, 80001, 80004, 613})


# Meta's "get a new access token" codes (API Session, expired or invalid token): no call with this
# token can succeed, whatever the lead.
TOKEN_ERROR_CODES = frozenset({102, 190})


class GraphError(Exception):
    """A Graph call failed. `transient` errors are retried; the others park the change."""

    def __init__(self, message: str, *, transient: bool, status: int | None = None) -> None:
        super().__init__(message)
        self.transient = transient
        self.status = status


class GraphTokenError(GraphError):
    """The page access token is missing or Graph rejected it: a configuration error. Never transient:
    retries would fail the same way until staff fix the token, so the change is parked at once."""

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message, transient=False, status=status)


def page_access_token_configured() -> bool:
    return bool(settings.META_PAGE_ACCESS_TOKEN)


# `access_token=<value>` inside any text (a URL, a log line, an upstream's error message).
_ACCESS_TOKEN_IN_TEXT = re.compile(r"(access_token=)[^&\s\"'<>]+", re.IGNORECASE)
_REDACTED = "[redacted]"


def _redact_token(text: str, token: str = "") -> str:
    text = _ACCESS_TOKEN_IN_TEXT.sub(r"\1" + _REDACTED, text)
    return text.replace(token, _REDACTED) if token else text


class _AccessTokenLogFilter(logging.Filter):
    """httpx logs every request URL at INFO, and Graph URLs carry the page access token: mask it there,
    whatever level an operator turns httpx up to (the settings keep it at WARNING as well)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if "access_token=" in message.lower():
            record.msg, record.args = _redact_token(message), None
        return True


def _install_log_filter() -> None:
    httpx_logger = logging.getLogger("httpx")
    if not any(isinstance(existing, _AccessTokenLogFilter) for existing in httpx_logger.filters):
        httpx_logger.addFilter(_AccessTokenLogFilter())


_install_log_filter()


def graph_client() -> httpx.Client:
    timeout = settings.META_GRAPH_TIMEOUT_S
    return httpx.Client(
        base_url=settings.META_GRAPH_URL.rstrip("/") + "/",
        timeout=httpx.Timeout(timeout, connect=min(timeout, 3.0)),
        limits=httpx.Limits(max_connections=64, max_keepalive_connections=64),
        headers={"Accept": "application/json"},
    )


def graph_lead_fetch(
    client: httpx.Client, leadgen_id: str, *, access_token: str | None = None
) -> dict[str, Any]:
    """GET {META_GRAPH_URL}/{leadgen_id}. The access token travels as a parameter and is never logged
    (httpx error messages carry the URL, so they are replaced by our own)."""
    token = settings.META_PAGE_ACCESS_TOKEN if access_token is None else access_token
    if not token:
        raise GraphTokenError("META_PAGE_ACCESS_TOKEN is not configured: set it and requeue.")
    try:
        response = client.get(leadgen_id, params={"access_token": token})
    except httpx.TimeoutException:
        raise GraphError("Graph API timed out.", transient=True) from None
    except httpx.TransportError as exc:
        raise GraphError(f"Graph API unreachable ({type(exc).__name__}).", transient=True) from None
    status = response.status_code
    try:
        body = response.json()
    except ValueError:
        body = None
    if status >= 400 or not isinstance(body, dict):
        error = (body or {}).get("error") if isinstance(body, dict) else None
        code = error.get("code") if isinstance(error, dict) else None
        # Only a number is one of Meta's codes (and a list or object would not even be hashable).
        code = code if isinstance(code, int) and not isinstance(code, bool) else None
        message = error.get("message", "") if isinstance(error, dict) else ""
        transient = (
            status >= 500
            or status == 429
            or code in RATE_LIMIT_CODES
            or bool(isinstance(error, dict) and error.get("is_transient"))
        )
        detail = f"Graph API answered {status}" + (f" (code {code})" if code is not None else "")
        # Our text is stored and logged: an upstream that quotes the request must not leak the token.
        message = _redact_token(str(message), token)[:200] if message else ""
        if code in TOKEN_ERROR_CODES:
            # Starts with the setting's name, like the missing-token error (the admin filters on it).
            raise GraphTokenError(
                f"META_PAGE_ACCESS_TOKEN was rejected ({detail}"
                + (f": {message.rstrip('.')}" if message else "")
                + "): replace it and requeue.",
                status=status,
            )
        if message:
            detail += f": {message}"
        raise GraphError(detail, transient=transient, status=status)
    return body


# --- Field extraction ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class LeadFields:
    phone: str = ""
    email: str = ""
    first_name: str = ""
    last_name: str = ""
    full_name: str = ""
    purpose: str = ""
    # Fields we recognise and never store in clear (DNI): only the fact that one was given.
    sensitive_fields_dropped: tuple[str, ...] = ()


_PURPOSE_MARKERS = ("propósito", "proposito", "purpose")
_SENSITIVE_MARKERS = ("dni",)


def _field_name(item: dict[str, Any]) -> str:
    return str(item.get("name", "")).strip().lower()


def _is_sensitive(name: str) -> bool:
    return any(marker in name for marker in _SENSITIVE_MARKERS)


def _first_value(item: dict[str, Any]) -> str:
    values = item.get("values")
    if isinstance(values, list) and values:
        return str(values[0]).strip()
    return ""


def extract_lead_fields(graph_lead: dict[str, Any]) -> LeadFields:
    """Read Meta's `field_data` by meaning: names compared in lower case, first value of each."""
    found: dict[str, str] = {}
    dropped: list[str] = []
    for item in graph_lead.get("field_data") or []:
        if not isinstance(item, dict):
            continue
        name = _field_name(item)
        value = _first_value(item)
        if not name or not value:
            continue
        if _is_sensitive(name):
            dropped.append(name)
            continue
        if "phone" in name or "teléfono" in name or "telefono" in name:
            key = "phone"
        elif "email" in name or "e-mail" in name or "correo" in name:
            key = "email"
        elif name in ("first_name", "last_name", "full_name"):
            key = name
        elif any(marker in name for marker in _PURPOSE_MARKERS):
            key = "purpose"
        else:
            continue
        found.setdefault(key, value)
    full_name = found.get("full_name") or " ".join(
        part for part in (found.get("first_name", ""), found.get("last_name", "")) if part
    )
    return LeadFields(
        phone=found.get("phone", ""),
        email=found.get("email", "")[:254],
        first_name=found.get("first_name", "")[:150],
        last_name=found.get("last_name", "")[:150],
        full_name=full_name[:300],
        purpose=found.get("purpose", "")[:200],
        sensitive_fields_dropped=tuple(dropped),
    )


def graph_lead_redacted(graph_lead: dict[str, Any], fields: LeadFields) -> dict[str, Any]:
    """The Graph object as stored on lead_sources.form_data: sensitive answers removed (v1 kept the DNI
    in clear there, DOMAIN.md §10.13). Decided by the field's name, not by what extraction kept: a DNI
    whose first value is empty may still carry one in a later value."""
    field_data = graph_lead.get("field_data")
    if not isinstance(field_data, list):
        return graph_lead
    kept = [item for item in field_data if not (isinstance(item, dict) and _is_sensitive(_field_name(item)))]
    if len(kept) == len(field_data):
        return graph_lead
    return {**graph_lead, "field_data": kept}
