"""The Meta inbox admin: parked changes are visible, filterable and reprocessable; payloads readable."""

from __future__ import annotations

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils.html import strip_tags

from converzia.tests.factories import TenantFactory
from converzia.tests.test_admin import messages_of, post_action
from leads.ingestion import inbox_event_store
from leads.meta import LeadgenChange
from leads.models import InboxChange, InboxChangeStatus, InboxEvent, InboxEventStatus
from leads.tests.factories import AdOfferMapFactory, OfferFactory

pytestmark = pytest.mark.django_db

EVENTS = reverse("admin:leads_inboxevent_changelist")
CHANGES = reverse("admin:leads_inboxchange_changelist")


def listed(response) -> list:
    return [row.pk for row in response.context["cl"].result_list]


def queued_jobs(event_id: int) -> int:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM procrastinate_jobs WHERE task_name = 'leads.process_inbox_event' "
            "AND status = 'todo' AND (args->>'event_id')::bigint = %s",
            [event_id],
        )
        return cursor.fetchone()[0]


def drop_jobs() -> None:
    with connection.cursor() as cursor:
        cursor.execute("DELETE FROM procrastinate_jobs")


def stored(*changes: tuple[str, str]) -> InboxEvent:
    return inbox_event_store(
        payload={"object": "page", "entry": [{"id": "1", "changes": []}]},
        changes=[
            LeadgenChange(leadgen_id=leadgen, ad_id=ad, value={"leadgen_id": leadgen})
            for leadgen, ad in changes
        ],
    )


def park(change: InboxChange, status: str, error: str) -> None:
    InboxChange.objects.filter(pk=change.pk).update(status=status, last_error=error)
    InboxEvent.objects.filter(pk=change.event_id).update(status=InboxEventStatus.PARKED, last_error=error)


@pytest.fixture
def parked():
    """One unrouted change, one failed on Graph, one processed; their jobs already gone."""
    event = stored(("111", "9001"), ("222", "9002"), ("333", "9003"))
    unrouted, failed, done = event.changes.order_by("position")
    park(unrouted, InboxChangeStatus.UNROUTED, "No active ad mapping for ad 9001.")
    park(failed, InboxChangeStatus.FAILED, "Graph API answered 400 (code 100): Unsupported get request.")
    InboxChange.objects.filter(pk=done.pk).update(status=InboxChangeStatus.PROCESSED)
    drop_jobs()
    return event, unrouted, failed, done


def test_changes_filter_by_status_and_error_kind(admin_client, parked):
    event, unrouted, failed, done = parked

    assert listed(admin_client.get(CHANGES, {"status__exact": "UNROUTED"})) == [unrouted.pk]
    assert listed(admin_client.get(CHANGES, {"error": "graph"})) == [failed.pk]
    assert listed(admin_client.get(CHANGES, {"error": "mapping"})) == [unrouted.pk]
    assert sorted(listed(admin_client.get(CHANGES, {"error": "any"}))) == sorted([unrouted.pk, failed.pk])
    assert listed(admin_client.get(CHANGES, {"error": "none"})) == [done.pk]
    assert listed(admin_client.get(EVENTS, {"status__exact": "PARKED"})) == [event.pk]


def test_search_by_leadgen_id_finds_the_change_and_its_event(admin_client, parked):
    event, unrouted, *_ = parked

    assert listed(admin_client.get(CHANGES, {"q": "111"})) == [unrouted.pk]
    assert listed(admin_client.get(EVENTS, {"q": "222"})) == [event.pk]
    response = admin_client.get(CHANGES, {"q": "not-a-number"}, follow=True)
    assert listed(response) == []
    assert any("cannot" in m or "is not something" in m for m in messages_of(response))


def test_event_page_shows_the_raw_payload_and_its_changes(admin_client, parked):
    event, *_ = parked

    response = admin_client.get(reverse("admin:leads_inboxevent_change", args=[event.pk]))

    assert response.status_code == 200
    body = response.content.decode()
    assert "&quot;object&quot;: &quot;page&quot;" in body
    assert "No active ad mapping for ad 9001." in body


def test_reprocess_changes_requeues_only_parked_ones(admin_client, parked):
    event, unrouted, failed, done = parked

    response = post_action(admin_client, CHANGES, "reprocess", [unrouted.pk, failed.pk, done.pk])

    assert "2 change(s) queued for processing. 1 skipped" in " ".join(messages_of(response))
    statuses = dict(InboxChange.objects.filter(event=event).values_list("pk", "status"))
    assert statuses == {
        unrouted.pk: InboxChangeStatus.PENDING,
        failed.pk: InboxChangeStatus.PENDING,
        done.pk: InboxChangeStatus.PROCESSED,
    }
    assert InboxEvent.objects.get(pk=event.pk).status == InboxEventStatus.PENDING
    assert queued_jobs(event.pk) == 1


def test_reprocess_events_requeues_parked_changes_and_redefers_a_lost_job(admin_client, parked):
    event, unrouted, failed, _ = parked
    stuck = stored(("444", "9004"))
    drop_jobs()  # the stuck event is PENDING but its job is gone

    response = post_action(admin_client, EVENTS, "reprocess", [event.pk, stuck.pk])

    assert "2 event(s) queued" in " ".join(messages_of(response))
    assert set(
        InboxChange.objects.filter(pk__in=[unrouted.pk, failed.pk]).values_list("status", flat=True)
    ) == {InboxChangeStatus.PENDING}
    assert queued_jobs(event.pk) == 1
    assert queued_jobs(stuck.pk) == 1


def test_reprocessing_twice_queues_one_job(admin_client, parked):
    event, unrouted, *_ = parked

    post_action(admin_client, EVENTS, "reprocess", [event.pk])
    post_action(admin_client, EVENTS, "reprocess", [event.pk])

    assert queued_jobs(event.pk) == 1


def test_mapping_an_ad_in_the_admin_requeues_its_unrouted_changes(admin_client, parked):
    event, unrouted, *_ = parked
    mapping = AdOfferMapFactory(ad_id="9001", is_active=False)

    post_action(admin_client, reverse("admin:leads_adoffermap_changelist"), "activate_mappings", [mapping.pk])

    assert InboxChange.objects.get(pk=unrouted.pk).status == InboxChangeStatus.PENDING
    assert queued_jobs(event.pk) == 1


def test_inbox_rows_cannot_be_edited_or_deleted(admin_client, parked):
    event, unrouted, *_ = parked

    assert admin_client.get(reverse("admin:leads_inboxevent_add")).status_code == 403
    assert admin_client.post(reverse("admin:leads_inboxchange_delete", args=[unrouted.pk])).status_code == 403
    assert InboxChange.objects.filter(pk=unrouted.pk).exists()


# --- Token errors and the tenant column -------------------------------------------------------------------

MISSING_TOKEN = "META_PAGE_ACCESS_TOKEN is not configured: set it and requeue."
REJECTED_TOKEN = (
    "META_PAGE_ACCESS_TOKEN was rejected (Graph API answered 400 (code 190): Invalid OAuth access token):"
    " replace it and requeue."
)


def test_token_failures_are_one_error_kind_and_reprocessing_warns_while_the_token_is_unset(
    admin_client, settings
):
    event = stored(("701", "9701"), ("702", "9702"), ("703", "9703"))
    missing, rejected, other = event.changes.order_by("position")
    park(missing, InboxChangeStatus.FAILED, MISSING_TOKEN)
    park(rejected, InboxChangeStatus.FAILED, REJECTED_TOKEN)
    park(other, InboxChangeStatus.FAILED, "Graph API answered 400 (code 100): Unsupported get request.")
    drop_jobs()
    settings.META_PAGE_ACCESS_TOKEN = ""

    assert sorted(listed(admin_client.get(CHANGES, {"error": "token"}))) == sorted([missing.pk, rejected.pk])
    response = post_action(admin_client, CHANGES, "reprocess", [missing.pk])

    # Requeued all the same (the worker's environment may differ), with a warning.
    assert messages_of(response) == [
        "META_PAGE_ACCESS_TOKEN is not configured here: changes that need a Graph fetch will be parked"
        " again until it is set.",
        "1 change(s) queued for processing.",
    ]
    assert InboxChange.objects.get(pk=missing.pk).status == InboxChangeStatus.PENDING
    assert queued_jobs(event.pk) == 1

    settings.META_PAGE_ACCESS_TOKEN = "configured"
    response = post_action(admin_client, EVENTS, "reprocess", [event.pk])
    assert not any("not configured" in message for message in messages_of(response))


def tenant_cells(response) -> dict[int, str]:
    """The tenant column of each listed change, as rendered."""
    model_admin = response.context["cl"].model_admin
    return {row.pk: strip_tags(model_admin.tenant_routed(row)) for row in response.context["cl"].result_list}


def test_the_tenant_column_resolves_through_the_ad_mapping_in_the_pages_own_query(admin_client):
    acme = TenantFactory(name="Acme Realty")
    AdOfferMapFactory(offer=OfferFactory(tenant=acme), ad_id="9801")
    AdOfferMapFactory(ad_id="9802", is_active=False)
    settled_tenant = TenantFactory(name="Settled Homes")
    event = stored(("801", "9801"), ("802", "9802"), ("803", "9803"), ("804", "9801"))
    pending, inactive, unmapped, settled = event.changes.order_by("position")
    InboxChange.objects.filter(pk=settled.pk).update(tenant=settled_tenant)

    with CaptureQueriesContext(connection) as few:
        response = admin_client.get(CHANGES)

    cells = tenant_cells(response)
    assert cells[pending.pk] == "Acme Realty (by ad mapping)"
    assert (cells[inactive.pk], cells[unmapped.pk]) == ("-", "-")
    # The stored tenant wins.
    assert cells[settled.pk] == "Settled Homes"
    assert f"{acme.name}</a> (by ad mapping)" in response.content.decode()

    # Many more rows, each with its own tenant and mapping: not one query more.
    for n in range(10):
        other = TenantFactory()
        AdOfferMapFactory(offer=OfferFactory(tenant=other), ad_id=f"98{n + 10}")
        stored((f"8{n + 10}", f"98{n + 10}"))
    with CaptureQueriesContext(connection) as many:
        response = admin_client.get(CHANGES)

    assert len(response.context["cl"].result_list) == 14
    assert sum(cell.endswith("(by ad mapping)") for cell in tenant_cells(response).values()) == 11
    assert len(many.captured_queries) == len(few.captured_queries)
    # The page's mappings in one query; the count query does not touch them.
    assert [q["sql"] for q in many if "ad_offer_map" in q["sql"]] == [
        q["sql"] for q in many if '"ad_offer_map"."ad_id" IN' in q["sql"]
    ]
    assert len([q for q in many if "ad_offer_map" in q["sql"]]) == 1


def test_the_change_page_shows_the_tenant_of_a_mapped_ad_before_the_lead_is_fetched(admin_client):
    AdOfferMapFactory(offer=OfferFactory(tenant=TenantFactory(name="Acme Realty")), ad_id="9901")
    (change,) = stored(("901", "9901")).changes.all()

    response = admin_client.get(reverse("admin:leads_inboxchange_change", args=[change.pk]))

    assert response.status_code == 200
    assert "Acme Realty</a> (by ad mapping)" in response.content.decode()
