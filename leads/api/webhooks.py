"""`/api/webhooks/meta-leads`: Meta's subscription handshake (GET) and lead notifications (POST).

A plain Django view rather than DRF: the POST must read the raw bytes before any parsing (the
signature covers them), it answers Meta rather than a portal user, and its ack budget is a few
milliseconds. Errors still use the API's one error shape.

Each refusal (4xx) is logged once, here, at WARNING with its reason (logger `converzia.webhooks`), in
place of Django's bare "Forbidden: <path>" line. A reason that is our own configuration (an unset
secret) goes to the log only: the caller gets the same answer as for any bad signature.
"""

from __future__ import annotations

import logging

import orjson
from django.conf import settings
from django.db import Error as DatabaseError
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.utils.decorators import method_decorator
from django.views import View
from django.views.decorators.csrf import csrf_exempt

from converzia.api.exception_handler import error_body
from converzia.errors import ErrorCode, QueryTimeout
from converzia.metrics import WEBHOOK_REQUESTS
from converzia.observability.sentry import report_handled_error
from leads import meta
from leads.ingestion import inbox_event_store

logger = logging.getLogger("converzia.webhooks")

# Meta retries on any non-2xx; tell it (and anyone else) when to come back after a 503.
UNAVAILABLE_RETRY_AFTER_S = 5


def _error(code: str, message: str, status: int, details: dict | None = None, **headers: str) -> JsonResponse:
    response = JsonResponse(error_body(code, message, details), status=status)
    for name, value in headers.items():
        response[name.replace("_", "-")] = value
    return response


def _refused(
    code: str, message: str, status: int, *, reason: str, details: dict | None = None, **fields: object
) -> JsonResponse:
    """A 4xx answer and its one log line, which says why (`fields` go on the record as extras)."""
    logger.warning(
        "meta webhook refused: %s %s: %s",
        status,
        code,
        reason,
        extra={"status": status, "code": str(code), "reason": reason, **fields},
    )
    response = _error(code, message, status, details)
    # Django's request logger would add a bare "Forbidden: /api/webhooks/meta-leads" for the same
    # request; it skips a response marked as already logged (django.utils.log.log_response).
    response._has_been_logged = True  # type: ignore[attr-defined]
    return response


def _invalid_input(message: str, details: dict[str, str]) -> JsonResponse:
    """A signed body that is not Meta's shape: counted, and answered 400 with where it went wrong."""
    WEBHOOK_REQUESTS.labels("invalid_input").inc()
    return _refused(ErrorCode.INVALID_INPUT, message, 400, reason=message, details=details)


def _too_large(limit: int) -> JsonResponse:
    WEBHOOK_REQUESTS.labels("too_large").inc()
    message = f"The body exceeds {limit} bytes."
    return _refused(ErrorCode.INVALID_INPUT, message, 413, reason=message, details={"max_bytes": limit})


def _signature_problem(header: str | None) -> str:
    """Why `meta.signature_valid` said no, for the log only: the caller always gets the same 403."""
    if not settings.META_APP_SECRET:
        return (
            "META_APP_SECRET is not set, so every signature check fails: set it to the Meta app's "
            "secret (make run's local settings default it to a development secret)"
        )
    if not header:
        return "no X-Hub-Signature-256 header"
    if not header.startswith(meta.SIGNATURE_PREFIX):
        return f"the X-Hub-Signature-256 header is not {meta.SIGNATURE_PREFIX}<hex>"
    return "the signature does not match the body"


def _verification_problem(mode: str | None, token_ok: bool) -> str:
    if not settings.META_WEBHOOK_VERIFY_TOKEN:
        return (
            "META_WEBHOOK_VERIFY_TOKEN is not set, so every subscription handshake fails: set it to the "
            "token configured in the Meta app (make run's local settings default it to a development one)"
        )
    if mode != "subscribe":
        return f"hub.mode is {mode!r}, not 'subscribe'"
    if not token_ok:
        return "hub.verify_token does not match"
    return "hub.challenge is missing"


def _client_hint(request: HttpRequest) -> str:
    """A partial address for security logs: enough to spot a pattern, not a full identifier."""
    address = request.META.get("REMOTE_ADDR", "")
    return address.rsplit(".", 1)[0] + ".x" if "." in address else address[:8]


@method_decorator(csrf_exempt, name="dispatch")
class MetaLeadsWebhookView(View):
    http_method_names = ["get", "post"]

    def http_method_not_allowed(self, request: HttpRequest, *args: object, **kwargs: object) -> HttpResponse:
        response = _error(ErrorCode.METHOD_NOT_ALLOWED, f"Method {request.method} is not allowed here.", 405)
        response["Allow"] = "GET, POST"
        return response

    def get(self, request: HttpRequest) -> HttpResponse:
        mode = request.GET.get("hub.mode")
        token_ok = meta.verify_token_matches(request.GET.get("hub.verify_token"))
        challenge = request.GET.get("hub.challenge", "")
        if mode == "subscribe" and token_ok and challenge:
            return HttpResponse(challenge, content_type="text/plain; charset=utf-8")
        return _refused(
            ErrorCode.FORBIDDEN,
            "Webhook verification failed.",
            403,
            reason=_verification_problem(mode, token_ok),
            mode=mode,
            token_matched=token_ok,
        )

    def post(self, request: HttpRequest) -> HttpResponse:
        limit = settings.META_WEBHOOK_MAX_BODY_BYTES
        declared = request.META.get("CONTENT_LENGTH") or "0"
        if not declared.isdigit() or int(declared) > limit:
            return _too_large(limit)
        raw = request.read(limit + 1)
        if len(raw) > limit:
            return _too_large(limit)

        header = request.headers.get("X-Hub-Signature-256")
        if not meta.signature_valid(raw, header):
            WEBHOOK_REQUESTS.labels("invalid_signature").inc()
            client = _client_hint(request)
            return _refused(
                ErrorCode.INVALID_SIGNATURE,
                "The X-Hub-Signature-256 signature is missing or invalid.",
                403,
                reason=f"{_signature_problem(header)} (from {client}, {len(raw)} bytes)",
                client=client,
                bytes=len(raw),
            )

        try:
            payload = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return _invalid_input("The body is not valid JSON.", {"body": "Not valid JSON."})
        if not isinstance(payload, dict):
            return _invalid_input("The body must be a JSON object.", {"body": "Must be a JSON object."})
        if not isinstance(payload.get("object"), str):
            return _invalid_input(
                "The body must have an `object` field.", {"object": "This field is required."}
            )
        if payload["object"] not in meta.SUBSCRIBED_OBJECTS:
            WEBHOOK_REQUESTS.labels("ignored").inc()
            return JsonResponse({"status": "ignored"})
        try:
            changes = meta.leadgen_changes(payload)
        except meta.PayloadError as exc:
            return _invalid_input(str(exc), exc.details)
        if not changes:
            WEBHOOK_REQUESTS.labels("ignored").inc()
            return JsonResponse({"status": "accepted", "events": 0})

        try:
            inbox_event_store(payload=payload, changes=changes)
        except QueryTimeout as exc:
            WEBHOOK_REQUESTS.labels("unavailable").inc()
            report_handled_error(exc)  # Sentry, when configured
            return _error(exc.code, exc.message, 503, Retry_After=str(UNAVAILABLE_RETRY_AFTER_S))
        except DatabaseError:
            WEBHOOK_REQUESTS.labels("unavailable").inc()
            logger.exception("meta webhook could not store an event: database unavailable")
            return _error(
                ErrorCode.UNAVAILABLE,
                "The event could not be stored; retry later.",
                503,
                Retry_After=str(UNAVAILABLE_RETRY_AFTER_S),
            )
        WEBHOOK_REQUESTS.labels("accepted").inc()
        return JsonResponse({"status": "accepted", "events": len(changes)})
