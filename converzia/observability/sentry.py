"""Sentry (decision D11): errors as events, warnings as breadcrumbs, traces with DB spans. Off unless
`SENTRY_DSN` is set; settings call `init_sentry` once, so every process that loads them (gunicorn
workers, the background worker, management commands) reports.

What leaves the process, and what never does:
- No personal data by default (`send_default_pii` stays unset, which in sentry-sdk 2.75 means off and
  no deprecation warning): no user, no cookies, no client IP, no SQL parameters.
- No request bodies (`max_request_body_size="never"`) and no local variables: a lead's phone, e-mail
  and name travel in both, and a model's repr (`<Lead: Juana Pérez>`) cannot be recognised by a rule.
- Every event and transaction goes through sentry-sdk's `EventScrubber` with the logging masker's
  keys (converzia.logging: PII_KEYS, SECRET_KEYS) added to its denylist, recursively, then through
  `before_send`, which runs the same masker's free-text rules (`mask_text`: e-mails, E.164 phones,
  bearer tokens, `token=`/`secret=` parameters, Authorization and Cookie values) over every string.
  One rule set for logs and Sentry.

What is added: tags `request_id` and `tenant_id` (from converzia.request_context), `query_name` on
query timeouts, and `delivery_id`/`tenant_id`/`reason` on dead-letter reports.

Grouping and levels (decided in docs/observability.md, "Sentry"):
- `QueryTimeout` (503 `query_timeout`): reported at level warning, fingerprinted by query name, so each
  guarded query is one issue whose count is its timeout rate. It is reported where it is answered (the
  API exception handler, the Meta webhook); a job that fails with one is reported by the logging
  integration (procrastinate logs the failure at ERROR) and gets the same tag, level and fingerprint.
- A delivery moving to DEAD_LETTER: a warning message, fingerprinted by the kind of reason
  (`attempts_exhausted`, `cancelled`, `other`), sent only once the dead-lettering transaction commits.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any
from urllib.parse import parse_qsl, urlencode

import sentry_sdk
from sentry_sdk.integrations.django import DjangoIntegration
from sentry_sdk.integrations.logging import LoggingIntegration
from sentry_sdk.scrubber import DEFAULT_DENYLIST, EventScrubber

from converzia.errors import DomainError, QueryTimeout
from converzia.logging import PII_KEYS, SECRET_KEY_SUFFIXES, SECRET_KEYS, mask_text
from converzia.request_context import request_id_var, tenant_id_var

# Keys the scrubber filters wherever it looks (request headers and data, extra, breadcrumb and span
# data, user): Sentry's own list, the logging masker's, and the header spellings of the secret ones.
EXTRA_DENYLIST = (
    "api_token",
    "x_hub_signature_256",
    "x-hub-signature-256",
    "meta_page_access_token",
    "webhook_secret",
    "signing_secret",
)

# Parts of an event that are ids, timestamps or SDK metadata: never free text, left as they are.
_STRUCTURAL_KEYS = frozenset(
    {
        "event_id",
        "trace_id",
        "span_id",
        "parent_span_id",
        "segment_id",
        "timestamp",
        "start_timestamp",
        "release",
        "environment",
        "platform",
        "sdk",
        "modules",
        "server_name",
        "level",
        "type",
        "_meta",
    }
)

# Values that hold a query string (the request's, an outgoing call's): parsed, then masked per parameter.
_QUERY_STRING_KEYS = frozenset({"query_string", "http.query"})
# Query parameters whose value is whatever a user typed (a search may be a name): always filtered.
FREE_TEXT_PARAMS = frozenset({"q", "search"})
FILTERED = "[Filtered]"

QUERY_TIMEOUT_LEVEL = "warning"
DEAD_LETTER_LEVEL = "warning"


def scrubber_denylist() -> list[str]:
    keys = {*DEFAULT_DENYLIST, *PII_KEYS, *SECRET_KEYS, *EXTRA_DENYLIST}
    # Header names arrive with dashes ("Set-Cookie"); the masker's keys are written with underscores.
    keys |= {key.replace("_", "-") for key in keys}
    return sorted(key.lower() for key in keys)


def init_sentry(
    *,
    dsn: str,
    environment: str,
    release: str,
    traces_sample_rate: float = 0.0,
) -> None:
    """Start the SDK. Idempotent enough for tests: a second call replaces the client."""
    sentry_sdk.init(
        dsn=dsn,
        environment=environment,
        release=release,
        # 0 (the default) sends errors only; a transaction carries DB spans from the Django integration.
        traces_sample_rate=traces_sample_rate,
        integrations=[
            DjangoIntegration(transaction_style="url"),
            LoggingIntegration(level=logging.WARNING, event_level=logging.ERROR),
        ],
        include_local_variables=False,
        max_request_body_size="never",
        event_scrubber=EventScrubber(denylist=scrubber_denylist(), recursive=True),
        before_send=before_send,
        before_send_transaction=before_send_transaction,
    )


def is_enabled() -> bool:
    return sentry_sdk.get_client().is_active()


# --- Reporting handled failures --------------------------------------------------------------------


def report_handled_error(exc: DomainError) -> None:
    """Report a server-side failure that the API answers itself (503 `query_timeout`, `unavailable`):
    nothing raises past the view, so Sentry's Django integration never sees it. Client errors (4xx)
    are not reported."""
    if exc.http_status < 500 or not is_enabled():
        return
    sentry_sdk.capture_exception(exc)


def dead_letter_kind(reason: str) -> str:
    """The dead-letter reason's kind, for grouping: the text itself varies with attempts and errors."""
    if reason.startswith("Gave up after"):
        return "attempts_exhausted"
    if reason.startswith("Cancelled before delivery"):
        return "cancelled"
    return "other"


def report_dead_letter(*, delivery_id: object, tenant_id: object, reason: str) -> None:
    """A warning for a delivery moved to DEAD_LETTER, sent when the transaction that moved it commits
    (a rolled-back dead-lettering never happened)."""
    if not is_enabled():
        return
    from django.db import transaction

    kind = dead_letter_kind(reason)
    tags = {"delivery_id": str(delivery_id), "tenant_id": str(tenant_id), "reason": kind}

    def capture() -> None:
        sentry_sdk.capture_message(
            f"Delivery dead-lettered ({kind})",
            level=DEAD_LETTER_LEVEL,
            tags=tags,
            fingerprint=["delivery-dead-letter", kind],
            extras={"reason_detail": reason},
        )

    transaction.on_commit(capture)


# --- Event processing --------------------------------------------------------------------------------


def before_send(event: dict[str, Any], hint: dict[str, Any]) -> dict[str, Any]:
    exc = _exception_of(hint)
    if isinstance(exc, QueryTimeout):
        query_name = str(exc.details.get("query") or "unknown")
        event.setdefault("tags", {})["query_name"] = query_name
        event["fingerprint"] = ["query-timeout", query_name]
        event["level"] = QUERY_TIMEOUT_LEVEL
    _add_context_tags(event)
    return scrub_event(event)


def before_send_transaction(event: dict[str, Any], hint: dict[str, Any]) -> dict[str, Any]:
    _add_context_tags(event)
    return scrub_event(event)


def _exception_of(hint: Mapping[str, Any]) -> BaseException | None:
    exc_info = hint.get("exc_info")
    if exc_info and len(exc_info) == 3:
        return exc_info[1]
    return None


def _add_context_tags(event: dict[str, Any]) -> None:
    """The request id and tenant of the code that captured the event (a request or a job)."""
    tags = event.setdefault("tags", {})
    request_id = request_id_var.get()
    if request_id != "-":
        tags.setdefault("request_id", request_id)
    tenant_id = tenant_id_var.get()
    if tenant_id:
        tags.setdefault("tenant_id", tenant_id)


def scrub_event(event: dict[str, Any]) -> dict[str, Any]:
    """Mask personal data and secrets inside every free-text string of the event (the keys were
    already filtered by the EventScrubber)."""
    return _scrub(event, depth=0)


_MAX_DEPTH = 24


def is_sensitive_key(key: str) -> bool:
    lowered = key.lower().replace("-", "_")
    return lowered in PII_KEYS or lowered in SECRET_KEYS or lowered.endswith(SECRET_KEY_SUFFIXES)


def scrub_query_string(query: str) -> str:
    """A query string with sensitive or free-text parameters filtered and the rest masked as text
    (decoded first: `juana%40example.com` is an e-mail too)."""
    pairs = parse_qsl(query, keep_blank_values=True)
    return urlencode(
        [
            (key, FILTERED if is_sensitive_key(key) or key.lower() in FREE_TEXT_PARAMS else mask_text(value))
            for key, value in pairs
        ],
        safe="[]*",
    )


def _scrub(value: Any, *, depth: int) -> Any:
    if isinstance(value, str):
        return mask_text(value)
    if depth >= _MAX_DEPTH:
        return value
    if isinstance(value, dict):
        for key, item in value.items():
            if key in _QUERY_STRING_KEYS and isinstance(item, str):
                value[key] = scrub_query_string(item)
            elif key not in _STRUCTURAL_KEYS:
                value[key] = _scrub(item, depth=depth + 1)
        return value
    if isinstance(value, list):
        for index, item in enumerate(value):
            value[index] = _scrub(item, depth=depth + 1)
        return value
    if isinstance(value, tuple):
        return tuple(_scrub(item, depth=depth + 1) for item in value)
    return value
