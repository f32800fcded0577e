"""The request id (API.md "Request id"): echoed or minted, on the response, in error bodies, on every log
line, and stored as the trace id of the lead events and deliveries a request writes. Background jobs get
their own trace id; tenant and user ids join the context once known."""

from __future__ import annotations

import logging
import re

import pytest

from conftest import issue_token
from converzia.jobs import db_job
from converzia.request_context import current_request_id, current_trace_id, job_context, request_id_var
from converzia.tests.logcapture import captured_console
from deliveries.models import Delivery
from leads.models import LeadEvent, LeadOfferStatus
from leads.tests.factories import LeadOfferFactory

pytestmark = pytest.mark.django_db

REQUEST_ID = "obs-test-0123456789"
MINTED = re.compile(r"^[0-9a-f]{32}$")


def transition_url(lead_offer_id: object) -> str:
    return f"/api/ops/lead-offers/{lead_offer_id}/transition"


@pytest.fixture
def staff_client(client_for, staff_user):
    return client_for(staff_user)


def test_a_valid_incoming_request_id_is_echoed(api_client):
    response = api_client.get("/api/health/live", HTTP_X_REQUEST_ID=REQUEST_ID)

    assert response.status_code == 200
    assert response["X-Request-ID"] == REQUEST_ID


@pytest.mark.parametrize("incoming", [None, "short", "has spaces in it", "x" * 129, "bad\u00e9chars-123"])
def test_a_missing_or_unsafe_request_id_is_replaced_by_a_new_one(api_client, incoming):
    headers = {} if incoming is None else {"HTTP_X_REQUEST_ID": incoming}

    response = api_client.get("/api/health/live", **headers)

    assert MINTED.match(response["X-Request-ID"])


def test_two_requests_get_different_ids(api_client):
    first = api_client.get("/api/health/live")["X-Request-ID"]
    second = api_client.get("/api/health/live")["X-Request-ID"]

    assert first != second


@pytest.mark.parametrize(
    ("path", "status"),
    [("/api/portal/leads", 401), ("/api/does-not-exist", 404), ("/api/health/live?x=1", 400)],
)
def test_error_bodies_carry_the_request_id(api_client, path, status):
    response = api_client.get(path, HTTP_X_REQUEST_ID=REQUEST_ID)

    assert response.status_code == status
    assert response.json()["error"]["request_id"] == REQUEST_ID == response["X-Request-ID"]


def test_every_log_line_of_a_request_carries_its_ids(client_for, owner, tenant):
    client = client_for(owner, tenant)

    with captured_console() as output:
        response = client.get("/api/portal/offers", HTTP_X_REQUEST_ID=REQUEST_ID)

    assert response.status_code == 200, response.content
    records = output.records()
    assert records, "the request logged nothing"
    for record in records:
        assert record["request_id"] == REQUEST_ID
    # The access line is written after authentication and tenant resolution.
    (access,) = [r for r in records if r["logger"] == "converzia.access"]
    assert access["tenant_id"] == str(tenant.pk)
    assert access["user_id"] == str(owner.pk)
    assert access["status"] == 200
    assert access["route"] == "api/portal/offers"
    assert access["path"] == "/api/portal/offers"


def test_django_response_records_carry_the_request_id(api_client):
    """Django logs 4xx/5xx responses after the middleware has reset the context: the id comes from the
    request attached to the record."""
    with captured_console() as output:
        api_client.get("/api/portal/leads", HTTP_X_REQUEST_ID=REQUEST_ID)

    lines = [r for r in output.records() if r["logger"] == "django.request"]
    assert lines and all(line["request_id"] == REQUEST_ID for line in lines)


def test_the_context_is_reset_after_the_request(client_for, owner, tenant):
    client_for(owner, tenant).get("/api/portal/offers", HTTP_X_REQUEST_ID=REQUEST_ID)

    assert current_request_id() == "-"
    assert current_trace_id() == ""


def test_a_lead_event_written_by_a_request_has_its_request_id(staff_client):
    lead_offer = LeadOfferFactory(status=LeadOfferStatus.CONTACTED)

    response = staff_client.post(
        transition_url(lead_offer.pk), {"to": "ENGAGED"}, format="json", HTTP_X_REQUEST_ID=REQUEST_ID
    )

    assert response.status_code == 200, response.content
    events = LeadEvent.objects.filter(lead_offer=lead_offer)
    assert events.exists()
    assert {event.trace_id for event in events} == {REQUEST_ID}


def test_a_delivery_created_by_a_request_has_its_request_id(staff_client):
    lead_offer = LeadOfferFactory(status=LeadOfferStatus.QUALIFYING)

    response = staff_client.post(
        transition_url(lead_offer.pk), {"to": "LEAD_READY"}, format="json", HTTP_X_REQUEST_ID=REQUEST_ID
    )

    assert response.status_code == 200, response.content
    delivery = Delivery.objects.get(lead_offer=lead_offer)
    assert delivery.trace_id == REQUEST_ID


@pytest.mark.django_db(transaction=True)
def test_a_background_job_gets_its_own_trace_id_on_its_log_lines():
    @db_job
    def job() -> str:
        logging.getLogger("converzia.tests.job").info("job ran")
        return current_trace_id()

    with captured_console() as output:
        first = job()
        second = job()

    assert first.startswith("job-") and second.startswith("job-") and first != second
    (line,) = [r for r in output.records() if r["logger"] == "converzia.tests.job"][:1]
    assert line["request_id"] == first
    assert current_request_id() == "-"


def test_a_job_run_inside_a_traced_context_keeps_that_trace_id():
    """The ingestion job sets the webhook's request id itself; a job context must not replace an id."""
    token = request_id_var.set("webhook-request-0001")
    try:
        with job_context() as trace_id:
            assert trace_id == current_trace_id() == "webhook-request-0001"
    finally:
        request_id_var.reset(token)


def test_a_bearer_token_request_sets_the_user_in_the_context(owner, tenant, api_client):
    api_client.credentials(HTTP_AUTHORIZATION=f"Bearer {issue_token(owner)}", HTTP_X_TENANT_ID=str(tenant.pk))

    with captured_console() as output:
        api_client.get("/api/portal/offers")

    (access,) = [r for r in output.records() if r["logger"] == "converzia.access"]
    assert access["user_id"] == str(owner.pk)
    # The token never reaches a log line.
    assert "Bearer" not in output.text or "[REDACTED]" in output.text
