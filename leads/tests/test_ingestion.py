"""The ingestion job (decision D4, DOMAIN.md §5.2): stored inbox events become leads, lead_sources and
lead_offers. `leads.ingestion` is called directly; the Meta Graph API is a real local HTTP server."""

from __future__ import annotations

import json
import logging
import re
import time
from datetime import timedelta
from typing import Any

import pytest
from django.db import connection
from django.urls import reverse
from django.utils import timezone
from procrastinate.jobs import Job
from pytest_httpserver import HTTPServer
from werkzeug import Request, Response

from converzia.cache import tenant_version
from converzia.request_context import request_id_var
from converzia.tests.factories import TenantFactory
from converzia.tests.test_admin import messages_of, post_action
from leads import meta
from leads.ingestion import (
    DRAIN_BATCH_EVENTS,
    DrainReport,
    InboxRetryLater,
    drain_shard,
    drain_shards,
    inbox_changes_requeue,
    inbox_drain,
    inbox_event_process,
    inbox_event_store,
    inbox_events_requeue,
    inbox_stale_sweep,
)
from leads.measure.graph_stub import phone_for_leadgen
from leads.models import (
    ActorType,
    BillingEligibility,
    InboxChange,
    InboxChangeStatus,
    InboxEvent,
    InboxEventStatus,
    Lead,
    LeadEvent,
    LeadEventType,
    LeadOffer,
    LeadOfferStatus,
    LeadSource,
)
from leads.services import ad_mapping_set_active
from leads.tasks import INGESTION_RETRY, event_final_attempt
from leads.tests.factories import AdOfferMapFactory, LeadFactory, LeadOfferFactory, OfferFactory
from leads.tests.test_meta import VECTORS

pytestmark = pytest.mark.django_db

S = LeadOfferStatus
C = InboxChangeStatus
TOKEN = "page-token-ingest-4b1e"
PAGE_ID = "153125381133"
FORM_ID = "444444444444"
AD_ID = "44444444444"
LEADGEN_ID = "444444444444"
PHONE = "+5491155550101"


# --- The Meta Graph API stand-in ----------------------------------------------------------------------------


def graph_lead(leadgen_id: str, *fields: tuple[str, str], ad_id: str = AD_ID) -> dict[str, Any]:
    return {
        "id": leadgen_id,
        "created_time": "2026-11-29T10:00:00+0000",
        "ad_id": ad_id,
        "form_id": FORM_ID,
        "field_data": [{"name": name, "values": [value]} for name, value in fields],
    }


class GraphStub:
    """Answers `GET /{leadgen_id}?access_token=…` from a table the test fills. A leadgen with several
    queued answers gets them in order, then keeps the last one. Unknown ids get Meta's 400."""

    def __init__(self, server: HTTPServer) -> None:
        self.server = server
        self.answers: dict[str, list[tuple[int, Any]]] = {}
        server.expect_request(re.compile(r"^/[^/]+$"), method="GET").respond_with_handler(self._answer)

    def _answer(self, request: Request) -> Response:
        if request.args.get("access_token") != TOKEN:
            return self._json(400, {"error": {"message": "Invalid OAuth access token.", "code": 190}})
        queue = self.answers.get(request.path.lstrip("/"))
        if not queue:
            return self._json(400, {"error": {"message": "Unsupported get request.", "code": 100}})
        status, body = queue.pop(0) if len(queue) > 1 else queue[0]
        if callable(body):
            return body(request)
        return self._json(status, body)

    @staticmethod
    def _json(status: int, body: Any) -> Response:
        return Response(json.dumps(body), status=status, content_type="application/json")

    def answer(self, leadgen_id: str, *answers: tuple[int, Any]) -> None:
        self.answers[leadgen_id] = list(answers)

    def lead(self, leadgen_id: str, *fields: tuple[str, str], ad_id: str = AD_ID) -> dict[str, Any]:
        lead = graph_lead(leadgen_id, *fields, ad_id=ad_id)
        self.answer(leadgen_id, (200, lead))
        return lead

    def calls(self, leadgen_id: str) -> int:
        return sum(1 for request, _response in self.server.log if request.path == f"/{leadgen_id}")


@pytest.fixture
def graph(settings, httpserver: HTTPServer) -> GraphStub:
    settings.META_GRAPH_URL = httpserver.url_for("")
    settings.META_PAGE_ACCESS_TOKEN = TOKEN
    settings.META_GRAPH_TIMEOUT_S = 2.0
    return GraphStub(httpserver)


# --- Events, as the webhook stores them ---------------------------------------------------------------------


def leadgen(leadgen_id: str, ad_id: str = AD_ID, form_id: str = FORM_ID) -> dict[str, Any]:
    value: dict[str, Any] = {
        "leadgen_id": leadgen_id,
        "page_id": PAGE_ID,
        "form_id": form_id,
        "created_time": 1764409990,
    }
    if ad_id:
        value.update(ad_id=ad_id, adgroup_id=ad_id)
    return {"field": "leadgen", "value": value}


def payload(*changes: dict[str, Any]) -> dict[str, Any]:
    return {"object": "page", "entry": [{"id": PAGE_ID, "time": 1764410000, "changes": list(changes)}]}


def store(body: dict[str, Any], *, request_id: str = "") -> InboxEvent:
    token = request_id_var.set(request_id or "-")
    try:
        return inbox_event_store(payload=body, changes=meta.leadgen_changes(body))
    finally:
        request_id_var.reset(token)


def process(event: InboxEvent, *, final_attempt: bool = False) -> dict[str, int]:
    counts = inbox_event_process(event.pk, final_attempt=final_attempt).counts
    event.refresh_from_db()
    return counts


def changes_of(event: InboxEvent) -> list[InboxChange]:
    return list(InboxChange.objects.filter(event=event).order_by("position"))


def jobs_of(event: InboxEvent) -> list[tuple[str, str, dict[str, Any]]]:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT status, task_name, args FROM procrastinate_jobs WHERE queueing_lock = %s ORDER BY id",
            [f"inbox-event:{event.pk}"],
        )
        # Django reads jsonb from a raw cursor as text.
        return [(status, task, json.loads(args)) for status, task, args in cursor.fetchall()]


def drain_jobs(event: InboxEvent) -> list[tuple[str, str, dict[str, Any]]]:
    """The drain jobs of the event's shard (the webhook queues one; later events join it)."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT status, task_name, args FROM procrastinate_jobs WHERE queueing_lock = %s ORDER BY id",
            [f"inbox-drain:{drain_shard(event.pk)}"],
        )
        return [(status, task, json.loads(args)) for status, task, args in cursor.fetchall()]


def delete_jobs() -> None:
    """What a worker leaves behind once it has run the jobs (finished jobs are deleted)."""
    with connection.cursor() as cursor:
        cursor.execute("DELETE FROM procrastinate_jobs")


def nothing_created() -> bool:
    return not (Lead.objects.exists() or LeadSource.objects.exists() or LeadOffer.objects.exists())


@pytest.fixture
def offer(tenant):
    return OfferFactory(tenant=tenant)


@pytest.fixture
def mapping(tenant, offer):
    return AdOfferMapFactory(tenant=tenant, offer=offer, ad_id=AD_ID)


# --- The happy path -----------------------------------------------------------------------------------------


def test_a_mapped_lead_becomes_a_lead_a_source_and_a_lead_offer(graph, tenant, offer, mapping):
    lead_with_dni = dict(VECTORS["graph_lead_response_example"])
    lead_with_dni["field_data"] = [*lead_with_dni["field_data"], {"name": "DNI", "values": ["30123456"]}]
    graph.answer(LEADGEN_ID, (200, lead_with_dni))
    body = json.loads(VECTORS["cases"][0]["body"])
    event = store(body, request_id="req-happy-path-0001")
    assert drain_jobs(event) == [("todo", "leads.drain_inbox", {"shard": drain_shard(event.pk)})]

    counts = process(event)

    assert counts == {C.PROCESSED: 1}
    lead = Lead.objects.get()
    assert (lead.phone, lead.full_name, lead.email, lead.country_code) == (
        PHONE,
        "María José Pérez",
        "mjperez@example.com",
        "AR",
    )

    source = LeadSource.objects.get()
    assert (source.lead_id, source.tenant_id, source.leadgen_id, source.ad_id, source.form_id) == (
        lead.pk,
        tenant.pk,
        LEADGEN_ID,
        AD_ID,
        FORM_ID,
    )
    assert source.platform == "META"
    assert source.form_data["leadgen"] == body["entry"][0]["changes"][0]["value"]
    assert source.form_data["lead"] == VECTORS["graph_lead_response_example"]
    assert "30123456" not in json.dumps(source.form_data)

    lead_offer = LeadOffer.objects.get()
    assert (lead_offer.lead_id, lead_offer.tenant_id, lead_offer.offer_id, lead_offer.lead_source_id) == (
        lead.pk,
        tenant.pk,
        offer.pk,
        source.pk,
    )
    assert lead_offer.status == S.TO_BE_CONTACTED
    assert lead_offer.billing_eligibility == BillingEligibility.PENDING
    assert lead_offer.billing_notes == ""
    assert lead_offer.next_attempt_at is not None
    assert lead_offer.next_attempt_at <= timezone.now()
    assert lead_offer.qualification_fields == {
        "name": "María José Pérez",
        "purpose": "Inversión",
        "is_investor": True,
        "meta": {"ad_id": AD_ID, "leadgen_id": LEADGEN_ID, "form_id": FORM_ID},
    }

    created = LeadEvent.objects.get(lead_offer=lead_offer)
    assert created.event_type == LeadEventType.CREATED
    assert (created.lead_id, created.tenant_id, created.actor_type) == (lead.pk, tenant.pk, ActorType.SYSTEM)
    assert created.trace_id == event.request_id == "req-happy-path-0001"
    assert created.details == {
        "source": "META_LEAD_AD",
        "ad_id": AD_ID,
        "form_id": FORM_ID,
        "leadgen_id": LEADGEN_ID,
        "inbox_change_id": changes_of(event)[0].pk,
    }

    (change,) = changes_of(event)
    assert (change.status, change.lead_offer_id, change.tenant_id, change.attempts, change.last_error) == (
        C.PROCESSED,
        lead_offer.pk,
        tenant.pk,
        1,
        "",
    )
    assert change.processed_at is not None
    assert (event.status, event.attempts, event.last_error) == (InboxEventStatus.DONE, 1, "")
    assert event.processed_at is not None
    assert graph.calls(LEADGEN_ID) == 1


def test_an_investor_only_when_the_purpose_says_so(graph, mapping):
    graph.lead("1001", ("phone_number", PHONE), ("propósito", "Vivienda propia"))
    process(store(payload(leadgen("1001"))))

    assert LeadOffer.objects.get().qualification_fields == {
        "purpose": "Vivienda propia",
        "is_investor": False,
        "meta": {"ad_id": AD_ID, "leadgen_id": "1001", "form_id": FORM_ID},
    }


def test_without_a_request_id_the_trace_id_names_the_event(graph, mapping):
    graph.lead("1002", ("phone_number", PHONE))
    event = store(payload(leadgen("1002")))
    assert event.request_id == ""

    process(event)

    assert LeadEvent.objects.get().trace_id == f"inbox-{event.pk}"


def test_processing_invalidates_the_tenants_cached_reads(
    graph, tenant, mapping, django_capture_on_commit_callbacks
):
    graph.lead("1003", ("phone_number", PHONE))
    event = store(payload(leadgen("1003")))
    before = tenant_version(tenant.pk)

    with django_capture_on_commit_callbacks(execute=True):
        process(event)

    assert LeadOffer.objects.filter(tenant=tenant).count() == 1
    assert tenant_version(tenant.pk) == before + 1


# --- Unmapped offers, unknown ads ---------------------------------------------------------------------------


def test_a_mapping_without_an_offer_parks_the_lead_in_pending_mapping_and_reuses_that_row(graph, tenant):
    AdOfferMapFactory(tenant=tenant, offer=None, ad_id=AD_ID)
    graph.lead("2001", ("full_name", "Ana Gómez"), ("phone_number", PHONE))
    graph.lead("2002", ("full_name", "Ana Gómez"), ("phone_number", "011 15 5555-0101"))

    first = store(payload(leadgen("2001")))
    process(first)

    lead_offer = LeadOffer.objects.get()
    assert (lead_offer.tenant_id, lead_offer.offer_id, lead_offer.status) == (
        tenant.pk,
        None,
        S.PENDING_MAPPING,
    )
    assert lead_offer.next_attempt_at is None
    assert lead_offer.billing_eligibility == BillingEligibility.PENDING
    assert changes_of(first)[0].status == C.PROCESSED

    second = store(payload(leadgen("2002")))
    process(second)

    assert LeadOffer.objects.get().pk == lead_offer.pk
    assert LeadSource.objects.filter(tenant=tenant).count() == 2
    assert Lead.objects.count() == 1
    (change,) = changes_of(second)
    assert (change.status, change.lead_offer_id) == (C.PROCESSED, lead_offer.pk)
    repeat = LeadEvent.objects.get(lead_offer=lead_offer, event_type=LeadEventType.FIELD_UPDATED)
    assert repeat.details["repeat"] is True and repeat.details["leadgen_id"] == "2002"
    assert second.status == InboxEventStatus.DONE


def test_an_unknown_ad_is_parked_until_a_mapping_is_activated(graph, tenant, offer):
    graph.lead("3001", ("full_name", "Ana Gómez"), ("phone_number", PHONE))
    # An inactive mapping routes nothing.
    mapping = AdOfferMapFactory(tenant=tenant, offer=offer, ad_id=AD_ID, is_active=False)
    event = store(payload(leadgen("3001")))

    counts = process(event)

    assert counts == {C.UNROUTED: 1}
    (change,) = changes_of(event)
    assert change.status == C.UNROUTED
    assert change.last_error == f"No active ad mapping for ad {AD_ID}."
    assert (change.tenant_id, change.lead_offer_id) == (None, None)
    assert change.processed_at is not None
    assert (event.status, event.last_error) == (InboxEventStatus.PARKED, change.last_error)
    assert nothing_created()
    assert graph.calls("3001") == 0

    delete_jobs()
    ad_mapping_set_active(mapping=mapping, is_active=True)

    change.refresh_from_db()
    event.refresh_from_db()
    assert (change.status, change.processed_at) == (C.PENDING, None)
    assert event.status == InboxEventStatus.PENDING
    assert jobs_of(event) == [("todo", "leads.process_inbox_event", {"event_id": event.pk})]

    counts = process(event)

    assert counts == {C.PROCESSED: 1}
    lead_offer = LeadOffer.objects.get()
    assert (lead_offer.tenant_id, lead_offer.offer_id, lead_offer.status) == (
        tenant.pk,
        offer.pk,
        S.TO_BE_CONTACTED,
    )
    change.refresh_from_db()
    assert (change.status, change.lead_offer_id, change.last_error) == (C.PROCESSED, lead_offer.pk, "")
    assert (event.status, event.last_error) == (InboxEventStatus.DONE, "")


def test_an_organic_lead_without_an_ad_stays_unrouted(graph, tenant, mapping):
    graph.lead("3002", ("phone_number", PHONE))
    event = store(payload(leadgen("3002", ad_id="")))

    process(event)
    # Activating some mapping does not pick up a change that has no ad at all.
    other = AdOfferMapFactory(tenant=tenant, offer=OfferFactory(tenant=tenant), is_active=False)
    ad_mapping_set_active(mapping=other, is_active=True)

    (change,) = changes_of(event)
    assert change.status == C.UNROUTED
    assert "no ad_id" in change.last_error
    event.refresh_from_db()
    assert event.status == InboxEventStatus.PARKED
    assert nothing_created()
    assert graph.calls("3002") == 0


# --- Idempotency --------------------------------------------------------------------------------------------


def test_the_same_event_replayed_ten_times_creates_one_lead(graph, tenant, mapping):
    graph.lead(LEADGEN_ID, ("full_name", "Ana Gómez"), ("phone_number", PHONE))
    body = payload(leadgen(LEADGEN_ID))

    events = [store(body) for _ in range(10)]
    for event in events:
        process(event)

    assert LeadSource.objects.count() == 1
    lead_offer = LeadOffer.objects.get()
    statuses = [change.status for event in events for change in changes_of(event)]
    assert statuses == [C.PROCESSED] + [C.REPLAY] * 9
    assert {change.lead_offer_id for change in InboxChange.objects.all()} == {lead_offer.pk}
    assert {change.tenant_id for change in InboxChange.objects.all()} == {tenant.pk}
    assert {event.status for event in events} == {InboxEventStatus.DONE}
    assert LeadEvent.objects.filter(event_type=LeadEventType.CREATED).count() == 1
    # Replays are recognised before the Graph call.
    assert graph.calls(LEADGEN_ID) == 1


def test_a_replay_inside_one_batch_creates_one_lead(graph, mapping):
    graph.lead("4001", ("phone_number", PHONE))
    event = store(payload(leadgen("4001"), leadgen("4001")))

    assert process(event) == {C.PROCESSED: 1, C.REPLAY: 1}

    assert LeadOffer.objects.count() == LeadSource.objects.count() == 1
    assert event.status == InboxEventStatus.DONE


def test_processing_a_done_event_again_changes_nothing(graph, mapping):
    graph.lead("4002", ("phone_number", PHONE))
    event = store(payload(leadgen("4002")))
    process(event)

    assert process(event) == {}

    assert [change.status for change in changes_of(event)] == [C.PROCESSED]
    assert (event.status, event.attempts) == (InboxEventStatus.DONE, 2)
    assert graph.calls("4002") == 1
    assert inbox_event_process(10**12).counts == {}


def test_the_same_leadgen_for_two_tenants_creates_a_source_for_each(graph, tenant, other_tenant, mapping):
    other_mapping = AdOfferMapFactory(
        tenant=other_tenant, offer=OfferFactory(tenant=other_tenant), ad_id="55555555555"
    )
    graph.lead("5001", ("full_name", "Ana Gómez"), ("phone_number", PHONE))
    body = payload(leadgen("5001", ad_id=AD_ID), leadgen("5001", ad_id=other_mapping.ad_id))

    event = store(body)
    assert process(event) == {C.PROCESSED: 2}

    assert Lead.objects.count() == 1
    sources = {(s.tenant_id, s.leadgen_id) for s in LeadSource.objects.all()}
    assert sources == {(tenant.pk, "5001"), (other_tenant.pk, "5001")}
    offers = {(lo.tenant_id, lo.offer_id) for lo in LeadOffer.objects.all()}
    assert offers == {(tenant.pk, mapping.offer_id), (other_tenant.pk, other_mapping.offer_id)}
    assert [change.tenant_id for change in changes_of(event)] == [tenant.pk, other_tenant.pk]

    replay = store(body)
    assert process(replay) == {C.REPLAY: 2}
    assert LeadSource.objects.count() == 2 and LeadOffer.objects.count() == 2


# --- Graph failures -----------------------------------------------------------------------------------------


def test_a_graph_server_error_is_retried_and_then_succeeds(graph, tenant, mapping):
    lead = graph_lead("6001", ("phone_number", PHONE))
    graph.answer("6001", (503, {"error": {"message": "Service unavailable", "code": 2}}), (200, lead))
    event = store(payload(leadgen("6001")))

    with pytest.raises(InboxRetryLater):
        inbox_event_process(event.pk)

    (change,) = changes_of(event)
    event.refresh_from_db()
    assert change.status == C.PENDING
    assert change.last_error == "Graph API answered 503 (code 2): Service unavailable"
    assert (change.attempts, change.processed_at) == (1, None)
    assert (event.status, event.last_error, event.processed_at) == (
        InboxEventStatus.PENDING,
        change.last_error,
        None,
    )
    assert nothing_created()

    assert process(event) == {C.PROCESSED: 1}

    change.refresh_from_db()
    assert (change.status, change.attempts, change.last_error) == (C.PROCESSED, 2, "")
    assert (event.status, event.attempts, event.last_error) == (InboxEventStatus.DONE, 2, "")
    assert LeadOffer.objects.get().tenant_id == tenant.pk
    assert graph.calls("6001") == 2


def test_a_graph_timeout_is_retried(graph, settings, mapping):
    settings.META_GRAPH_TIMEOUT_S = 0.2

    def slow(request: Request) -> Response:
        time.sleep(0.6)
        return Response("{}", content_type="application/json")

    graph.answer("6002", (200, slow))
    event = store(payload(leadgen("6002")))

    with pytest.raises(InboxRetryLater):
        inbox_event_process(event.pk)

    (change,) = changes_of(event)
    assert (change.status, change.last_error) == (C.PENDING, "Graph API timed out.")
    assert nothing_created()


def test_a_transient_error_on_the_final_attempt_parks_the_change(graph, tenant, mapping):
    graph.answer("6003", (502, {"error": {"message": "Bad gateway"}}))
    event = store(payload(leadgen("6003")))

    assert process(event, final_attempt=True) == {C.FAILED: 1}

    (change,) = changes_of(event)
    assert (change.status, change.tenant_id) == (C.FAILED, tenant.pk)
    assert change.last_error == "Graph API answered 502: Bad gateway"
    assert change.processed_at is not None
    assert (event.status, event.last_error) == (InboxEventStatus.PARKED, change.last_error)
    assert nothing_created()


@pytest.mark.parametrize("requeue", ["events", "changes"])
def test_a_graph_client_error_fails_the_change_until_staff_reprocess_it(graph, tenant, mapping, requeue):
    graph.answer("6004", (400, {"error": {"message": "Unsupported get request.", "code": 100}}))
    event = store(payload(leadgen("6004")))

    # No retry: a 4xx will not get better by itself.
    assert process(event) == {C.FAILED: 1}

    (change,) = changes_of(event)
    assert (change.status, change.tenant_id) == (C.FAILED, tenant.pk)
    assert change.last_error == "Graph API answered 400 (code 100): Unsupported get request."
    assert event.status == InboxEventStatus.PARKED
    assert nothing_created()

    graph.lead("6004", ("full_name", "Ana Gómez"), ("phone_number", PHONE))
    delete_jobs()
    requeued = inbox_events_requeue([event.pk]) if requeue == "events" else inbox_changes_requeue([change])

    assert requeued == 1
    change.refresh_from_db()
    event.refresh_from_db()
    assert change.status == C.PENDING and event.status == InboxEventStatus.PENDING
    assert jobs_of(event) == [("todo", "leads.process_inbox_event", {"event_id": event.pk})]

    assert process(event) == {C.PROCESSED: 1}
    assert event.status == InboxEventStatus.DONE
    assert LeadOffer.objects.get().lead.full_name == "Ana Gómez"

    # A done event has nothing to reprocess, and no job is deferred for it.
    delete_jobs()
    assert inbox_events_requeue([event.pk]) == 0
    assert inbox_changes_requeue([change]) == 0
    assert jobs_of(event) == []


def test_reprocessing_a_pending_event_re_defers_its_lost_job(graph, mapping):
    graph.answer("6005", (503, {"error": {"message": "down"}}))
    event = store(payload(leadgen("6005")))
    with pytest.raises(InboxRetryLater):
        inbox_event_process(event.pk)
    delete_jobs()

    assert inbox_events_requeue([event.pk]) == 0

    assert jobs_of(event) == [("todo", "leads.process_inbox_event", {"event_id": event.pk})]


@pytest.mark.parametrize(
    "fields",
    [
        (("full_name", "Ana Gómez"), ("email", "ana@example.com")),
        (("full_name", "Ana Gómez"), ("phone_number", "123")),
        (("full_name", "Ana Gómez"), ("phone_number", "not a phone")),
    ],
    ids=["missing", "too-short", "unreadable"],
)
def test_a_lead_without_a_usable_phone_fails(graph, tenant, mapping, fields):
    graph.lead("7001", *fields)
    event = store(payload(leadgen("7001")))

    assert process(event) == {C.FAILED: 1}

    (change,) = changes_of(event)
    assert (change.status, change.tenant_id) == (C.FAILED, tenant.pk)
    assert change.last_error.startswith("No usable phone: ")
    assert event.status == InboxEventStatus.PARKED
    assert nothing_created()


def test_a_graph_lead_without_field_data_fails(graph, mapping):
    graph.answer("7002", (200, {"id": "7002"}))
    event = store(payload(leadgen("7002")))

    assert process(event) == {C.FAILED: 1}

    assert changes_of(event)[0].last_error == "The Graph lead has no field_data."
    assert nothing_created()


def test_a_mixed_event_parks_with_a_status_per_change(graph, tenant, mapping):
    graph.lead("8001", ("phone_number", PHONE))
    graph.answer("8003", (404, {"error": {"message": "Lead not found", "code": 100}}))
    graph.lead("8004", ("phone_number", "+5491155550104"))
    body = payload(
        leadgen("8001"),
        leadgen("8002", ad_id="99999999999"),
        leadgen("8003"),
        leadgen("8004", ad_id=""),
    )
    event = store(body)

    assert process(event) == {C.PROCESSED: 1, C.UNROUTED: 2, C.FAILED: 1}

    changes = changes_of(event)
    assert [change.status for change in changes] == [C.PROCESSED, C.UNROUTED, C.FAILED, C.UNROUTED]
    assert [change.leadgen_id for change in changes] == ["8001", "8002", "8003", "8004"]
    assert changes[0].lead_offer_id == LeadOffer.objects.get().pk
    assert changes[1].last_error == "No active ad mapping for ad 99999999999."
    assert changes[2].last_error == "Graph API answered 404 (code 100): Lead not found"
    assert "no ad_id" in changes[3].last_error
    assert event.status == InboxEventStatus.PARKED
    assert event.last_error == changes[3].last_error
    assert LeadSource.objects.get().leadgen_id == "8001"
    assert Lead.objects.get().phone == PHONE


# --- A returning person -------------------------------------------------------------------------------------


@pytest.fixture
def known_lead():
    return LeadFactory(
        phone=PHONE, first_name="Ana", last_name="Gómez", full_name="Ana Gómez", email="ana@example.com"
    )


@pytest.mark.parametrize(
    ("before", "after"),
    [
        (S.TO_BE_CONTACTED, S.TO_BE_CONTACTED),
        (S.ENGAGED, S.ENGAGED),
        (S.LEAD_READY, S.LEAD_READY),
        (S.SENT_TO_DEVELOPER, S.SENT_TO_DEVELOPER),
        (S.STOPPED, S.STOPPED),
        (S.DISQUALIFIED, S.DISQUALIFIED),
        (S.COOLING, S.REACTIVATION),
    ],
)
def test_a_returning_lead_keeps_its_lead_offer_and_status(
    graph, tenant, offer, mapping, known_lead, before, after
):
    existing = LeadOfferFactory(lead=known_lead, tenant=tenant, offer=offer, status=before)
    # The same person, the number typed differently, new leadgen.
    graph.lead("9001", ("phone_number", "011 15 5555-0101"))
    event = store(payload(leadgen("9001")))

    assert process(event) == {C.PROCESSED: 1}

    assert Lead.objects.get().pk == known_lead.pk
    lead_offer = LeadOffer.objects.get()
    assert (lead_offer.pk, lead_offer.status) == (existing.pk, after)
    # The new leadgen is still recorded for attribution.
    assert set(LeadSource.objects.values_list("leadgen_id", flat=True)) == {"9001"}
    (change,) = changes_of(event)
    assert (change.status, change.lead_offer_id, change.last_error) == (C.PROCESSED, existing.pk, "")
    repeat = LeadEvent.objects.get(lead_offer=existing, event_type=LeadEventType.FIELD_UPDATED)
    assert repeat.details["repeat"] is True and repeat.details["leadgen_id"] == "9001"
    assert not LeadEvent.objects.filter(event_type=LeadEventType.CREATED).exists()
    moves = list(
        LeadEvent.objects.filter(lead_offer=existing, event_type=LeadEventType.STATUS_CHANGE).values_list(
            "details", flat=True
        )
    )
    if before == after:
        assert moves == []
    else:
        assert [(m["from"], m["to"]) for m in moves] == [(before, after)]


def test_a_returning_lead_keeps_known_values_over_empty_ones(graph, tenant, offer, mapping, known_lead):
    LeadOfferFactory(lead=known_lead, tenant=tenant, offer=offer, status=S.CONTACTED)
    graph.lead(
        "9002",
        ("full_name", ""),
        ("first_name", ""),
        ("email", "not-an-email"),
        ("phone_number", PHONE),
    )

    process(store(payload(leadgen("9002"))))

    lead = Lead.objects.get()
    assert (lead.full_name, lead.first_name, lead.last_name, lead.email) == (
        "Ana Gómez",
        "Ana",
        "Gómez",
        "ana@example.com",
    )


def test_a_returning_lead_takes_new_non_empty_values(graph, tenant, offer, mapping, known_lead):
    LeadOfferFactory(lead=known_lead, tenant=tenant, offer=offer, status=S.CONTACTED)
    graph.lead(
        "9003",
        ("first_name", "Ana María"),
        ("last_name", "Gómez Paz"),
        ("email", "ana.maria@example.com"),
        ("phone_number", PHONE),
    )

    process(store(payload(leadgen("9003"))))

    lead = Lead.objects.get()
    assert (lead.full_name, lead.first_name, lead.last_name, lead.email) == (
        "Ana María Gómez Paz",
        "Ana María",
        "Gómez Paz",
        "ana.maria@example.com",
    )
    assert LeadOffer.objects.count() == 1


# --- The duplicate window -----------------------------------------------------------------------------------


@pytest.fixture
def second_offer_mapping(tenant):
    return AdOfferMapFactory(tenant=tenant, offer=OfferFactory(tenant=tenant), ad_id="66666666666")


def ingest_for_second_offer(graph: GraphStub, mapping) -> LeadOffer:
    graph.lead("9101", ("phone_number", PHONE), ad_id=mapping.ad_id)
    event = store(payload(leadgen("9101", ad_id=mapping.ad_id)))
    assert process(event) == {C.PROCESSED: 1}
    return LeadOffer.objects.get(offer_id=mapping.offer_id)


@pytest.mark.parametrize("age_days", [0, 89])
def test_a_new_offer_inside_the_window_is_a_non_chargeable_duplicate(
    graph, tenant, offer, second_offer_mapping, known_lead, age_days
):
    assert tenant.duplicate_window_days == 90
    original = LeadOfferFactory(lead=known_lead, tenant=tenant, offer=offer, status=S.ENGAGED)
    LeadOffer.objects.filter(pk=original.pk).update(created_at=timezone.now() - timedelta(days=age_days))

    new = ingest_for_second_offer(graph, second_offer_mapping)

    assert new.pk != original.pk
    assert new.status == S.TO_BE_CONTACTED
    assert new.billing_eligibility == BillingEligibility.NOT_CHARGEABLE_DUPLICATE
    assert str(original.pk) in new.billing_notes
    created = LeadEvent.objects.get(lead_offer=new, event_type=LeadEventType.CREATED)
    assert created.details["duplicate_of"] == str(original.pk)
    original.refresh_from_db()
    assert (original.status, original.billing_eligibility) == (S.ENGAGED, BillingEligibility.PENDING)


def test_a_new_offer_outside_the_window_is_chargeable(graph, tenant, offer, second_offer_mapping, known_lead):
    original = LeadOfferFactory(lead=known_lead, tenant=tenant, offer=offer)
    LeadOffer.objects.filter(pk=original.pk).update(created_at=timezone.now() - timedelta(days=91))

    new = ingest_for_second_offer(graph, second_offer_mapping)

    assert (new.billing_eligibility, new.billing_notes) == (BillingEligibility.PENDING, "")
    created = LeadEvent.objects.get(lead_offer=new, event_type=LeadEventType.CREATED)
    assert "duplicate_of" not in created.details


@pytest.mark.parametrize("status", [S.DISQUALIFIED, S.STOPPED])
def test_a_disqualified_or_stopped_original_does_not_make_a_duplicate(
    graph, tenant, offer, second_offer_mapping, known_lead, status
):
    LeadOfferFactory(lead=known_lead, tenant=tenant, offer=offer, status=status)

    new = ingest_for_second_offer(graph, second_offer_mapping)

    assert new.billing_eligibility == BillingEligibility.PENDING


def test_a_zero_window_never_makes_a_duplicate(graph, tenant, offer, second_offer_mapping, known_lead):
    tenant.duplicate_window_days = 0
    tenant.save(update_fields=["duplicate_window_days"])
    LeadOfferFactory(lead=known_lead, tenant=tenant, offer=offer)

    new = ingest_for_second_offer(graph, second_offer_mapping)

    assert new.billing_eligibility == BillingEligibility.PENDING


def test_another_tenants_lead_offer_does_not_make_a_duplicate(graph, second_offer_mapping, known_lead):
    LeadOfferFactory(lead=known_lead, offer=OfferFactory(tenant=TenantFactory()))

    new = ingest_for_second_offer(graph, second_offer_mapping)

    assert new.billing_eligibility == BillingEligibility.PENDING
    assert LeadOffer.objects.filter(lead=known_lead).count() == 2


# --- The stale-event sweep ----------------------------------------------------------------------------------


def test_the_sweep_wakes_a_drain_for_a_pending_event_that_lost_its_job(graph, mapping):
    graph.lead("9201", ("phone_number", PHONE))
    done = store(payload(leadgen("9201")))
    process(done)
    lost = store(payload(leadgen("9202")))
    delete_jobs()
    assert drain_jobs(lost) == []

    assert inbox_stale_sweep(older_than_s=0) == 1

    assert drain_jobs(lost) == [("todo", "leads.drain_inbox", {"shard": drain_shard(lost.pk)})]
    # The queued drain is joined, not doubled: a second sweep defers nothing.
    assert inbox_stale_sweep(older_than_s=0) == 0
    assert len(drain_jobs(lost)) == 1
    assert jobs_of(lost) == [] and jobs_of(done) == []


def test_the_sweep_leaves_recent_events_alone(graph, mapping):
    lost = store(payload(leadgen("9204")))
    delete_jobs()

    assert inbox_stale_sweep(older_than_s=3600) == 0

    assert drain_jobs(lost) == []


# --- Phones and countries -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "phone", "country"),
    [
        ("+44 7400 123456", "+447400123456", "GB"),
        # Non-geographic (region "001"): no country of its own, so the default region.
        ("+800 1234 5678", "+80012345678", "AR"),
    ],
)
def test_the_country_comes_from_the_phone(graph, mapping, raw, phone, country):
    graph.lead("9401", ("phone_number", raw))
    event = store(payload(leadgen("9401")))

    assert process(event) == {C.PROCESSED: 1}

    assert Lead.objects.values_list("phone", "country_code").get() == (phone, country)


# --- A change that breaks must not block the others ---------------------------------------------------------


@pytest.fixture
def poisoned_leadgen():
    """A real database error for one leadgen: a trigger (gone with the test's transaction) rejects it."""
    with connection.cursor() as cursor:
        cursor.execute(
            """
            CREATE FUNCTION test_reject_leadgen() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                IF NEW.leadgen_id = '9302' THEN
                    RAISE EXCEPTION 'leadgen rejected by the test' USING ERRCODE = '22023';
                END IF;
                RETURN NEW;
            END $$;
            CREATE TRIGGER test_reject_leadgen BEFORE INSERT ON lead_sources
                FOR EACH ROW EXECUTE FUNCTION test_reject_leadgen();
            """
        )
    yield "9302"


def drop_poison() -> None:
    with connection.cursor() as cursor:
        cursor.execute("DROP TRIGGER test_reject_leadgen ON lead_sources")


def test_an_unexpected_error_in_one_change_does_not_block_the_others(graph, mapping, poisoned_leadgen):
    graph.lead("9301", ("phone_number", PHONE))
    graph.lead(poisoned_leadgen, ("phone_number", "+5491155550102"))
    graph.lead("9303", ("phone_number", "+5491155550103"))
    event = store(payload(leadgen("9301"), leadgen(poisoned_leadgen), leadgen("9303")))

    with pytest.raises(InboxRetryLater):
        inbox_event_process(event.pk)

    first, poisoned, third = changes_of(event)
    assert (first.status, third.status) == (C.PROCESSED, C.PROCESSED)
    assert (poisoned.status, poisoned.attempts, poisoned.processed_at) == (C.PENDING, 1, None)
    assert poisoned.last_error.startswith("Unexpected error (DataError): leadgen rejected by the test")
    # Its transaction was rolled back whole: no person, source or lead_offer for it.
    assert set(LeadSource.objects.values_list("leadgen_id", flat=True)) == {"9301", "9303"}
    assert not Lead.objects.filter(phone="+5491155550102").exists()
    event.refresh_from_db()
    assert event.status == InboxEventStatus.PENDING

    # The job's last try parks it for staff instead of looping.
    assert process(event, final_attempt=True) == {C.FAILED: 1}
    poisoned.refresh_from_db()
    assert (poisoned.status, poisoned.attempts) == (C.FAILED, 2)
    assert poisoned.processed_at is not None
    assert event.status == InboxEventStatus.PARKED

    drop_poison()
    assert inbox_changes_requeue([poisoned]) == 1
    assert process(event) == {C.PROCESSED: 1}
    assert event.status == InboxEventStatus.DONE
    assert LeadOffer.objects.count() == 3


def test_the_longest_accepted_request_id_is_kept_as_the_trace_id(graph, mapping):
    # X-Request-ID allows 128 characters; a shorter trace_id column made every change of such an event
    # fail on the CREATED event's insert.
    request_id = "r" * 128
    graph.lead("9501", ("phone_number", PHONE))
    event = store(payload(leadgen("9501")), request_id=request_id)

    assert process(event) == {C.PROCESSED: 1}

    assert LeadEvent.objects.get().trace_id == request_id


def test_an_unmapped_row_does_not_make_a_mapped_one_a_duplicate(
    graph, tenant, second_offer_mapping, known_lead
):
    # The unmapped row may end up as this very offer once its ad is mapped: it is not "the original".
    LeadOfferFactory(lead=known_lead, tenant=tenant, offer=None, status=S.PENDING_MAPPING)

    new = ingest_for_second_offer(graph, second_offer_mapping)

    assert new.billing_eligibility == BillingEligibility.PENDING


def test_a_cooling_lead_that_comes_back_counts_a_reactivation(graph, tenant, offer, mapping, known_lead):
    existing = LeadOfferFactory(
        lead=known_lead, tenant=tenant, offer=offer, status=S.COOLING, reactivation_count=1
    )
    graph.lead("9002", ("phone_number", PHONE))

    assert process(store(payload(leadgen("9002")))) == {C.PROCESSED: 1}

    existing.refresh_from_db()
    assert (existing.status, existing.reactivation_count) == (S.REACTIVATION, 2)


# --- A missing or rejected access token: a configuration error, parked for staff at once --------------------

MISSING_TOKEN = "META_PAGE_ACCESS_TOKEN is not configured: set it and requeue."


def retry_jobs() -> int:
    """Every per-event job queued: the retries (or requeues) of any event."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM procrastinate_jobs WHERE task_name = 'leads.process_inbox_event'"
        )
        return cursor.fetchone()[0]


def ingestion_records(caplog) -> list[tuple[int, str]]:
    return [(r.levelno, r.getMessage()) for r in caplog.records if r.name == "leads.ingestion"]


def test_a_missing_access_token_parks_the_changes_at_once_with_no_retry(
    graph, settings, tenant, mapping, caplog
):
    settings.META_PAGE_ACCESS_TOKEN = ""
    event = store(payload(leadgen("9003"), leadgen("9004")))
    caplog.set_level(logging.WARNING, logger="leads.ingestion")

    report = drain()

    # The drain's first pass settles it: no retry job, no backoff spent on a setting.
    assert (report.events, report.changes, report.retries) == (1, 2, 0)
    assert retry_jobs() == 0
    event.refresh_from_db()
    assert (event.status, event.last_error, event.attempts) == (InboxEventStatus.PARKED, MISSING_TOKEN, 1)
    assert [(c.status, c.last_error, c.attempts, c.tenant_id) for c in changes_of(event)] == [
        (C.FAILED, MISSING_TOKEN, 1, tenant.pk),
        (C.FAILED, MISSING_TOKEN, 1, tenant.pk),
    ]
    assert all(change.processed_at is not None for change in changes_of(event))
    assert graph.calls("9003") == graph.calls("9004") == 0
    assert nothing_created()
    # One line for the batch, with the cause, rather than one per change.
    assert ingestion_records(caplog) == [
        (logging.ERROR, f"2 leadgen change(s) parked as FAILED: {MISSING_TOKEN}")
    ]
    # Later drains and the sweep leave it alone: it waits for staff.
    assert drain().events == 0
    assert inbox_stale_sweep(older_than_s=0) == 0


def test_a_token_graph_rejects_stops_an_events_retries(graph, settings, tenant, mapping):
    # The case seen in production: an event retrying a Graph outage keeps failing on the token.
    graph.answer("9005", (503, {"error": {"message": "Service unavailable", "code": 2}}))
    event = store(payload(leadgen("9005")))
    assert drain().retries == 1
    # Routed: its tenant is stored while it waits for the retry (the inbox shows it).
    assert [(c.status, c.tenant_id) for c in changes_of(event)] == [(C.PENDING, tenant.pk)]
    settings.META_PAGE_ACCESS_TOKEN = "revoked-token"  # the stub answers Meta's code 190 to it

    # The retry job's next run ends it (no InboxRetryLater: no further attempt is scheduled).
    assert process(event) == {C.FAILED: 1}

    (change,) = changes_of(event)
    expected = (
        "META_PAGE_ACCESS_TOKEN was rejected (Graph API answered 400 (code 190): Invalid OAuth access"
        " token): replace it and requeue."
    )
    assert (change.status, change.last_error, change.attempts) == (C.FAILED, expected, 2)
    assert (event.status, event.last_error) == (InboxEventStatus.PARKED, expected)
    assert "revoked-token" not in change.last_error


def test_a_change_parked_for_the_token_is_ingested_once_staff_set_it_and_reprocess(
    graph, settings, tenant, mapping, admin_client
):
    settings.META_PAGE_ACCESS_TOKEN = ""
    event = store(payload(leadgen("9006")))
    drain()
    (change,) = changes_of(event)
    assert change.status == C.FAILED

    # Configured now; staff use the inbox's "Reprocess" action.
    settings.META_PAGE_ACCESS_TOKEN = TOKEN
    graph.lead("9006", ("phone_number", PHONE))
    response = post_action(
        admin_client, reverse("admin:leads_inboxchange_changelist"), "reprocess", [change.pk]
    )

    assert messages_of(response) == ["1 change(s) queued for processing."]
    assert jobs_of(event) == [("todo", "leads.process_inbox_event", {"event_id": event.pk})]
    # What that job runs.
    assert process(event) == {C.PROCESSED: 1}
    assert (event.status, event.last_error) == (InboxEventStatus.DONE, "")
    change.refresh_from_db()
    assert (change.status, change.last_error) == (C.PROCESSED, "")
    lead_offer = LeadOffer.objects.get()
    assert (change.lead_offer_id, lead_offer.tenant_id, lead_offer.lead.phone) == (
        lead_offer.pk,
        tenant.pk,
        PHONE,
    )
    assert graph.calls("9006") == 1


# --- Drains: many events per job ----------------------------------------------------------------------------


def running_job(task_name: str = "leads.drain_inbox", *, heartbeat_age_s: float = 0) -> int:
    """A job as a worker runs it: `doing`, on a worker whose last heartbeat is `heartbeat_age_s` old."""
    with connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO procrastinate_workers (last_heartbeat)"
            " VALUES (now() - make_interval(secs => %s)) RETURNING id",
            [heartbeat_age_s],
        )
        (worker_id,) = cursor.fetchone()
        cursor.execute(
            "INSERT INTO procrastinate_jobs (queue_name, task_name, args, status, worker_id)"
            " VALUES ('ingestion', %s, '{}', 'doing', %s) RETURNING id",
            [task_name, worker_id],
        )
        return cursor.fetchone()[0]


def drain(job_id: int | None = None) -> DrainReport:
    return inbox_drain(job_id=running_job() if job_id is None else job_id, shard=0)


def claimed_by(event: InboxEvent) -> int | None:
    return InboxEvent.objects.values_list("claimed_by_job", flat=True).get(pk=event.pk)


def test_one_drain_takes_many_single_change_events_in_few_claims(graph, mapping):
    leadgen_ids = [str(9_300_000 + n) for n in range(DRAIN_BATCH_EVENTS + 10)]
    for leadgen_id in leadgen_ids:
        graph.lead(leadgen_id, ("phone_number", phone_for_leadgen(leadgen_id)))
    events = [store(payload(leadgen(leadgen_id))) for leadgen_id in leadgen_ids]

    # One queued drain per shard, whatever the number of POSTs.
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM procrastinate_jobs WHERE task_name = 'leads.drain_inbox'")
        assert cursor.fetchone()[0] == drain_shards() < len(events)

    report = drain()

    assert (report.claims, report.events, report.changes, report.retries) == (2, len(events), len(events), 0)
    assert not report.handed_over
    assert set(InboxEvent.objects.values_list("status", flat=True)) == {InboxEventStatus.DONE}
    assert set(InboxEvent.objects.values_list("attempts", flat=True)) == {1}
    assert LeadSource.objects.count() == LeadOffer.objects.count() == len(leadgen_ids)
    assert all(graph.calls(leadgen_id) == 1 for leadgen_id in leadgen_ids)
    # Nothing is left for the queued drains.
    assert drain() == DrainReport()


def test_a_claim_stops_at_the_change_budget_but_takes_at_least_one_event(graph, tenant):
    # Unrouted changes (no mapping for the ad) settle without a Graph call.
    big = [store(payload(*(leadgen(f"94{e}{n:04d}", ad_id="999") for n in range(150)))) for e in range(3)]

    report = drain()

    # 150 + 150 changes reach the 200-change budget after two events; the third goes alone.
    assert (report.claims, report.events, report.changes) == (2, 3, 450)
    assert {event.pk for event in big} == set(
        InboxEvent.objects.filter(status=InboxEventStatus.PARKED).values_list("pk", flat=True)
    )


def test_a_drain_leaves_events_held_by_a_live_job_alone(graph, mapping):
    for leadgen_id in ("9501", "9502", "9503", "9504"):
        graph.lead(leadgen_id, ("phone_number", phone_for_leadgen(leadgen_id)))
    held = store(payload(leadgen("9501")))
    queued_retry = store(payload(leadgen("9502")))
    dead_drain = store(payload(leadgen("9503")))
    gone = store(payload(leadgen("9504")))
    live = running_job()
    InboxEvent.objects.filter(pk=held.pk).update(claimed_by_job=live)
    inbox_events_requeue([queued_retry.pk])  # its own job, queued: it holds the event
    killed = running_job(heartbeat_age_s=3600)
    InboxEvent.objects.filter(pk=dead_drain.pk).update(claimed_by_job=killed)
    InboxEvent.objects.filter(pk=gone.pk).update(claimed_by_job=10**12)  # a job that ended

    report = drain()

    assert report.events == 2
    assert event_status(held.pk) == event_status(queued_retry.pk) == InboxEventStatus.PENDING
    assert event_status(dead_drain.pk) == event_status(gone.pk) == InboxEventStatus.DONE
    assert claimed_by(held) == live
    # The stale sweep leaves the held ones to their jobs too.
    assert inbox_stale_sweep(older_than_s=0) == 0
    # The live drain itself (rerun by the stalled-job recovery, say) takes its own claim again.
    assert drain(live).events == 1
    assert event_status(held.pk) == InboxEventStatus.DONE


def event_status(event_id: int) -> str:
    return InboxEvent.objects.values_list("status", flat=True).get(pk=event_id)


def test_a_transient_failure_goes_to_the_events_own_retry_job(graph, tenant, mapping):
    lead = graph_lead("9601", ("phone_number", PHONE))
    graph.answer("9601", (503, {"error": {"message": "Service unavailable", "code": 2}}), (200, lead))
    graph.lead("9602", ("phone_number", phone_for_leadgen("9602")))
    failing = store(payload(leadgen("9601")))
    fine = store(payload(leadgen("9602")))
    delete_jobs()

    report = drain()

    assert (report.events, report.retries) == (2, 1)
    assert event_status(fine.pk) == InboxEventStatus.DONE
    failing.refresh_from_db()
    assert (failing.status, failing.attempts) == (InboxEventStatus.PENDING, 1)
    assert failing.last_error == "Graph API answered 503 (code 2): Service unavailable"
    # Its own job, counting the drain's run as the first attempt, after the first backoff wait.
    assert jobs_of(failing) == [
        ("todo", "leads.process_inbox_event", {"event_id": failing.pk, "prior_attempts": 1})
    ]
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT id, EXTRACT(EPOCH FROM scheduled_at - clock_timestamp()) FROM procrastinate_jobs"
            " WHERE queueing_lock = %s",
            [f"inbox-event:{failing.pk}"],
        )
        retry_job, wait_s = cursor.fetchone()
    assert 1 < wait_s <= 2
    assert failing.claimed_by_job == retry_job
    # Drains and the sweep leave it to that job.
    assert drain().events == 0
    assert inbox_stale_sweep(older_than_s=0) == 0

    assert process(failing) == {C.PROCESSED: 1}  # the retry job's run
    assert failing.status == InboxEventStatus.DONE
    assert LeadOffer.objects.count() == 2
    assert graph.calls("9601") == 2


def _retry_job(attempts: int, prior_attempts: int = 0) -> Job:
    kwargs = {"event_id": 1, **({"prior_attempts": prior_attempts} if prior_attempts else {})}
    return Job(
        id=1,
        queue="ingestion",
        lock=None,
        queueing_lock="inbox-event:1",
        task_name="leads.process_inbox_event",
        task_kwargs=kwargs,
        attempts=attempts,
    )


def _waits_then_final(prior_attempts: int) -> tuple[list[int], int]:
    """The backoff waits of an event's job until its final attempt, and how many runs it makes."""
    waits: list[int] = []
    attempts = 0
    while not event_final_attempt(_retry_job(attempts, prior_attempts)):
        decision = INGESTION_RETRY.get_retry_decision(
            exception=InboxRetryLater("x"), job=_retry_job(attempts, prior_attempts)
        )
        assert decision is not None
        waits.append(int(decision.retry_at.timestamp() - time.time() + 0.5))
        attempts += 1
    return waits, attempts + 1


def test_a_handed_over_event_gets_the_same_backoff_and_final_attempt_as_before():
    alone_waits, alone_runs = _waits_then_final(prior_attempts=0)
    handed_waits, handed_runs = _waits_then_final(prior_attempts=1)

    assert alone_waits == [2**n for n in range(1, 11)] and alone_runs == 11
    # The drain's run was the first attempt, then the first wait (2 s) before the job was queued.
    assert [2, *handed_waits] == alone_waits
    assert 1 + handed_runs == alone_runs
