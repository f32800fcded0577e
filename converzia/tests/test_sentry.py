"""Sentry (decision D11) against a real local HTTP server standing in for Sentry's ingest.

Each test starts the SDK with a DSN pointing at pytest-httpserver, drives the real app (the WSGI
handler, so Sentry's Django integration wraps the request as in production; the real PostgreSQL for
timeouts and DB spans), flushes, and reads the envelopes the server received. Afterwards the SDK is
closed and left without a client, so no other test reports anything.
"""

from __future__ import annotations

import gzip
import json
import logging
import zlib
from collections.abc import Iterator
from typing import Any

import pytest
import sentry_sdk
from django.core.handlers.wsgi import WSGIHandler
from django.db import connection, transaction
from django.urls import path
from rest_framework.request import Request
from rest_framework.response import Response
from werkzeug import Request as WerkzeugRequest
from werkzeug import Response as WerkzeugResponse
from werkzeug.test import Client as WsgiClient

from conftest import issue_token
from converzia.api.base import TenantApiView
from converzia.db.timeouts import guarded
from converzia.models import TenantRole
from converzia.observability import sentry as sentry_module
from converzia.observability.sentry import dead_letter_kind, init_sentry, scrub_query_string
from converzia.observability.trace_tags import MIDDLEWARE_PATH, install
from converzia.tests.factories import TenantMemberFactory
from leads.models import Lead

pytestmark = pytest.mark.django_db(transaction=True)

PHONE = "+5491155550123"
EMAIL = "juana.testperson@example.org"
FIRST_NAME = "Juanita"
LAST_NAME = "Zarazaga"
FULL_NAME = f"{FIRST_NAME} {LAST_NAME}"
QUERY_NAME = "sentry.test.lead_lookup"


# --- The stand-in for Sentry's ingest ------------------------------------------------------------------


class SentryIngest:
    """Receives envelopes at /api/1/envelope/ (decompressed) and parses them into items."""

    def __init__(self, httpserver: Any) -> None:
        self.raw: list[bytes] = []
        self.dsn = f"http://public@{httpserver.host}:{httpserver.port}/1"
        httpserver.expect_request("/api/1/envelope/", method="POST").respond_with_handler(self.handle)

    def handle(self, request: WerkzeugRequest) -> WerkzeugResponse:
        body = request.get_data()
        encoding = request.headers.get("Content-Encoding", "")
        if encoding == "gzip":
            body = gzip.decompress(body)
        elif encoding == "deflate":
            body = zlib.decompress(body)
        elif encoding == "br":
            import brotli  # only if the SDK found it installed

            body = brotli.decompress(body)
        self.raw.append(body)
        return WerkzeugResponse("{}", status=200, content_type="application/json")

    def all_bytes(self) -> bytes:
        return b"\n".join(self.raw)

    def items(self, item_type: str) -> list[dict[str, Any]]:
        found = []
        for envelope in self.raw:
            for header, payload in parse_envelope(envelope):
                if header.get("type") == item_type:
                    found.append(json.loads(payload))
        return found


def parse_envelope(envelope: bytes) -> Iterator[tuple[dict[str, Any], bytes]]:
    """Sentry's envelope format: a header line, then (item header line, payload) pairs; an item header
    may give the payload's length, else the payload runs to the end of its line."""
    _, _, rest = envelope.partition(b"\n")
    while rest.strip():
        header_line, _, rest = rest.partition(b"\n")
        header = json.loads(header_line)
        if "length" in header:
            payload, rest = rest[: header["length"]], rest[header["length"] :]
            rest = rest.removeprefix(b"\n")
        else:
            payload, _, rest = rest.partition(b"\n")
        yield header, payload


@pytest.fixture
def sentry_ingest(httpserver: Any) -> SentryIngest:
    return SentryIngest(httpserver)


@pytest.fixture
def sentry_on(sentry_ingest: SentryIngest, settings: Any) -> Iterator[Any]:
    """`sentry_on(traces_sample_rate=...)` starts the SDK against the ingest stand-in."""

    def start(traces_sample_rate: float = 0.0) -> SentryIngest:
        init_sentry(
            dsn=sentry_ingest.dsn,
            environment="test",
            release="converzia@test",
            traces_sample_rate=traces_sample_rate,
        )
        settings.MIDDLEWARE = install(list(settings.MIDDLEWARE))
        return sentry_ingest

    yield start
    client = sentry_sdk.get_client()
    client.flush(timeout=5)
    client.close()
    sentry_sdk.get_global_scope().set_client(None)
    assert not sentry_module.is_enabled()


def flush() -> None:
    sentry_sdk.get_client().flush(timeout=5)


# --- A tenant view that holds a lead's personal data, then times out ---------------------------------


class LeadLookupView(TenantApiView):
    required_permission = None
    allowed_query_params = ("email", "search")

    def post(self, request: Request) -> Response:
        phone, email, full_name = request.data["phone"], request.data["email"], request.data["full_name"]
        lead = Lead.objects.get(phone=phone)
        # A warning becomes a breadcrumb: free-text PII is masked by pattern, extras by key.
        logging.getLogger("converzia.test").warning(
            "looking up %s / %s", email, phone, extra={"full_name": full_name, "lead_phone": lead.phone}
        )
        guarded(QUERY_NAME, timeout_ms=20, backoff_s=0).run(_sleep_with, lead.phone)
        return Response({"ok": True})

    def get(self, request: Request) -> Response:
        return Response({"leads": Lead.objects.filter(phone=PHONE).count()})


def _sleep_with(phone: str) -> None:
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_sleep(5) WHERE %s::text IS NOT NULL", [phone])


class ExplodingView(TenantApiView):
    required_permission = None

    def get(self, request: Request) -> Response:
        raise RuntimeError(f"could not reach {EMAIL} at {PHONE}")


urlpatterns = [path("lookup", LeadLookupView.as_view()), path("explode", ExplodingView.as_view())]


@pytest.fixture
def member_headers() -> tuple[dict[str, str], str, str]:
    membership = TenantMemberFactory(role=TenantRole.OWNER)
    token = issue_token(membership.user)
    headers = {"Authorization": f"Bearer {token}", "X-Tenant-ID": str(membership.tenant.pk)}
    return headers, token, str(membership.tenant.pk)


def wsgi_client() -> WsgiClient:
    """The real WSGI handler (what gunicorn runs), built after the settings changes above."""
    return WsgiClient(WSGIHandler())


def make_lead() -> Lead:
    return Lead.objects.create(
        phone=PHONE, email=EMAIL, first_name=FIRST_NAME, last_name=LAST_NAME, full_name=FULL_NAME
    )


def assert_no_personal_data(raw: bytes, *secrets: str) -> None:
    for value in (PHONE, PHONE[1:], EMAIL, FIRST_NAME, LAST_NAME, FULL_NAME, *secrets):
        assert value.encode() not in raw, f"{value!r} reached Sentry"


# --- Tests -------------------------------------------------------------------------------------------


@pytest.mark.urls(__name__)
def test_query_timeout_is_reported_with_its_query_name_and_no_personal_data(sentry_on, member_headers):
    ingest = sentry_on()
    headers, token, tenant_id = member_headers
    make_lead()

    response = wsgi_client().post(
        f"/lookup?email={EMAIL}&search={FIRST_NAME}",
        json={"phone": PHONE, "email": EMAIL, "full_name": FULL_NAME},
        headers={**headers, "Cookie": f"sessionid=secret-{token}"},
    )
    flush()

    assert response.status_code == 503
    assert response.json["error"]["code"] == "query_timeout"
    [event] = ingest.items("event")
    assert event["tags"]["query_name"] == QUERY_NAME
    assert event["tags"]["request_id"] == response.headers["X-Request-ID"]
    assert event["tags"]["tenant_id"] == tenant_id
    assert event["level"] == "warning"
    assert event["fingerprint"] == ["query-timeout", QUERY_NAME]
    assert event["exception"]["values"][-1]["type"] == "QueryTimeout"
    assert event["environment"] == "test" and event["release"] == "converzia@test"
    # The request is there, without its body, cookies or credentials.
    assert event["request"]["url"].endswith("/lookup")
    assert event["request"].get("data", "") == ""  # removed by config (max_request_body_size)
    assert event["request"]["headers"]["Authorization"] == "[Filtered]"
    assert event["request"]["query_string"] == "email=[Filtered]&search=[Filtered]"
    # The warning logged in the view is a breadcrumb, masked.
    [crumb] = [c for c in event["breadcrumbs"]["values"] if c.get("category") == "converzia.test"]
    assert crumb["message"].startswith("looking up ju***")
    # Nothing personal anywhere in what left the process: not in the request, the breadcrumbs, the
    # exception chain (the SQL parameter was the phone), nor the token.
    assert_no_personal_data(ingest.all_bytes(), token)


@pytest.mark.urls(__name__)
def test_a_request_is_a_transaction_with_db_spans_and_the_request_id(sentry_on, member_headers):
    ingest = sentry_on(traces_sample_rate=1.0)
    headers, token, tenant_id = member_headers
    make_lead()

    response = wsgi_client().get("/lookup", headers=headers)
    flush()

    assert response.status_code == 200
    [transaction] = ingest.items("transaction")
    assert transaction["transaction"] == "/lookup"
    assert transaction["tags"]["request_id"] == response.headers["X-Request-ID"]
    assert transaction["tags"]["tenant_id"] == tenant_id
    db_spans = [span for span in transaction["spans"] if span["op"] == "db"]
    assert any('FROM "leads" WHERE "leads"."phone" = %s' in span["description"] for span in db_spans)
    # Statements only, never their parameters.
    assert_no_personal_data(ingest.all_bytes(), token)


@pytest.mark.urls(__name__)
def test_an_unhandled_error_is_an_error_event_with_its_message_masked(sentry_on, member_headers):
    ingest = sentry_on()
    headers, token, tenant_id = member_headers

    response = wsgi_client().get("/explode", headers=headers)
    flush()

    assert response.status_code == 500
    [event] = ingest.items("event")  # one event: the logged error, not also the 500 response line
    assert event["level"] == "error"
    assert event["tags"]["request_id"] == response.headers["X-Request-ID"]
    assert event["tags"]["tenant_id"] == tenant_id
    [exception] = event["exception"]["values"]
    assert exception["type"] == "RuntimeError"
    assert exception["value"].startswith("could not reach ju***rg at +5***23")
    assert_no_personal_data(ingest.all_bytes(), token)


def test_a_job_failing_on_a_query_timeout_is_grouped_like_the_api_ones(sentry_on):
    from converzia.errors import QueryTimeout

    ingest = sentry_on()
    try:
        raise QueryTimeout(details={"query": "deliveries.claim"})
    except QueryTimeout as exc:
        # What procrastinate logs for a job that failed for good.
        logging.getLogger("procrastinate.worker").error("Job deliveries.dispatch[7]() failed", exc_info=exc)
    flush()

    [event] = ingest.items("event")
    assert event["tags"]["query_name"] == "deliveries.claim"
    assert event["fingerprint"] == ["query-timeout", "deliveries.claim"]
    assert event["level"] == "warning"


def test_dead_letter_is_a_warning_grouped_by_reason(
    sentry_on, httpserver, settings, django_capture_on_commit_callbacks
):
    from deliveries.models import Delivery, DeliveryStatus
    from deliveries.services import deliveries_dispatch
    from deliveries.tests.test_dispatch import Receiver, make_due, ready_lead
    from leads.tests.test_worker import clear_queue

    ingest = sentry_on()
    settings.DELIVERY_MAX_ATTEMPTS = 1
    receiver = Receiver(httpserver, default=(500, {}))
    lead_offer = ready_lead(destination_url=receiver.url, lead=make_lead())
    delivery = Delivery.objects.get(lead_offer=lead_offer)
    make_due(delivery)

    with django_capture_on_commit_callbacks(execute=True):
        deliveries_dispatch()
    flush()
    clear_queue()

    delivery.refresh_from_db()
    assert delivery.status == DeliveryStatus.DEAD_LETTER
    [event] = ingest.items("event")
    assert event["level"] == "warning"
    assert event["message"] == "Delivery dead-lettered (attempts_exhausted)" or (
        event["logentry"]["message"] == "Delivery dead-lettered (attempts_exhausted)"
    )
    assert event["tags"]["delivery_id"] == str(delivery.pk)
    assert event["tags"]["tenant_id"] == str(delivery.tenant_id)
    assert event["tags"]["reason"] == "attempts_exhausted"
    assert event["fingerprint"] == ["delivery-dead-letter", "attempts_exhausted"]
    assert event["extra"]["reason_detail"].startswith("Gave up after 1 attempts")
    assert_no_personal_data(ingest.all_bytes())


def test_a_rolled_back_dead_letter_is_not_reported(sentry_on):
    ingest = sentry_on()
    with pytest.raises(RuntimeError), transaction.atomic():
        sentry_module.report_dead_letter(delivery_id="d", tenant_id="t", reason="Gave up after 8 attempts.")
        raise RuntimeError("the dead-lettering transaction fails after all")
    flush()
    assert ingest.items("event") == []


def test_off_by_default_and_no_middleware(settings):
    assert not settings.SENTRY_DSN
    assert not sentry_module.is_enabled()
    assert MIDDLEWARE_PATH not in settings.MIDDLEWARE
    # Reporting with no client costs one check and sends nothing.
    sentry_module.report_dead_letter(delivery_id="d", tenant_id="t", reason="x")


@pytest.mark.django_db(transaction=False)
def test_query_strings_are_masked_per_parameter() -> None:
    masked = scrub_query_string(
        "email=juana%40example.org&q=Juana&access_token=abc123&page=2&note=call+%2B5491155550123"
    )
    assert "juana" not in masked.lower() and "abc123" not in masked and "5491155550123" not in masked
    assert "page=2" in masked
    assert "email=[Filtered]" in masked and "access_token=[Filtered]" in masked and "q=[Filtered]" in masked


@pytest.mark.django_db(transaction=False)
def test_dead_letter_reasons_group_by_kind() -> None:
    assert dead_letter_kind("Gave up after 8 attempts. Last error: HTTP 500") == "attempts_exhausted"
    assert dead_letter_kind("Cancelled before delivery: the lead is DISQUALIFIED.") == "cancelled"
    assert dead_letter_kind("something else") == "other"
