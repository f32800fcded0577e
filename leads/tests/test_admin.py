"""The leads admin: exact searches on big tables, index-backed orderings, bounded counts, read-only
status and events, and the actions that call the leads services."""

from __future__ import annotations

import datetime as dt

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from converzia.tests.factories import TenantFactory
from converzia.tests.test_admin import form_post_data, messages_of, post_action
from leads.admin import EVENTS_SHOWN, LeadOfferAdmin
from leads.models import (
    ActorType,
    AdOfferMap,
    Lead,
    LeadEvent,
    LeadEventType,
    LeadOffer,
    LeadOfferStatus,
)
from leads.tests.factories import (
    AdOfferMapFactory,
    LeadEventFactory,
    LeadFactory,
    LeadOfferFactory,
    LeadSourceFactory,
    OfferFactory,
)

pytestmark = pytest.mark.django_db

LEAD_OFFERS = reverse("admin:leads_leadoffer_changelist")
LEADS = reverse("admin:leads_lead_changelist")
MAPPINGS = reverse("admin:leads_adoffermap_changelist")


def listed(response) -> list:
    return [row.pk for row in response.context["cl"].result_list]


@pytest.fixture
def findable():
    """A lead_offer reachable by id, lead id, phone and leadgen id, among others that are not."""
    offer = OfferFactory()
    lead = LeadFactory(phone="+5491122334455", email="Ana.Gomez@Example.com", full_name="Ana Gómez")
    source = LeadSourceFactory(lead=lead, tenant=offer.tenant, leadgen_id="900000000000123")
    lead_offer = LeadOfferFactory(lead=lead, offer=offer, lead_source=source)
    LeadOfferFactory.create_batch(2)
    LeadFactory(full_name="Juana Anabel")
    return lead_offer


# --- Search -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "term",
    [
        "+5491122334455",
        "+54 9 11 2233-4455",
        "011 15 2233-4455",
        "11 2233-4455",  # typed without the mobile 9
        "900000000000123",
        "id",
        "lead id",
    ],
)
def test_lead_offer_search_by_exact_values(admin_client, findable, term):
    term = {"id": str(findable.pk), "lead id": str(findable.lead_id)}.get(term, term)

    with CaptureQueriesContext(connection) as captured:
        response = admin_client.get(LEAD_OFFERS, {"q": term})

    assert response.status_code == 200
    assert listed(response) == [findable.pk]
    # Exact, indexed lookups only: never ILIKE '%x%' over 2M rows and their joins.
    assert [q["sql"] for q in captured.captured_queries if "LIKE" in q["sql"].upper()] == []


def test_lead_offer_search_for_an_unknown_phone_finds_nothing(admin_client, findable):
    response = admin_client.get(LEAD_OFFERS, {"q": "+5491187654321"})

    assert listed(response) == []
    assert messages_of(response) == []


def test_lead_offer_search_for_free_text_explains_what_to_type(admin_client, findable):
    response = admin_client.get(LEAD_OFFERS, {"q": "Ana"})

    assert listed(response) == []
    (message,) = messages_of(response)
    assert "leadgen id" in message


@pytest.mark.parametrize("term", ["+54 9 11 2233 4455", "ana.gomez@example.com", "Ana", "ana g", "id"])
def test_lead_search(admin_client, findable, term):
    term = str(findable.lead_id) if term == "id" else term

    response = admin_client.get(LEADS, {"q": term})

    assert listed(response) == [findable.lead_id]


def test_lead_search_never_matches_inside_a_name(admin_client, findable):
    response = admin_client.get(LEADS, {"q": "nabel"})

    assert listed(response) == []


# --- Ordering and counting --------------------------------------------------------------------------


def ordering_of(response) -> list[str]:
    # The admin's get_queryset and the changelist both apply the ordering; PostgreSQL drops the
    # repeated keys, so what the plan sees is the distinct keys in order.
    return list(dict.fromkeys(response.context["cl"].queryset.query.order_by))


def test_lead_offer_ordering_follows_the_indexes(admin_client, findable):
    unfiltered = admin_client.get(LEAD_OFFERS)
    by_tenant = admin_client.get(LEAD_OFFERS, {"tenant": str(findable.tenant_id)})
    by_tenant_and_status = admin_client.get(
        LEAD_OFFERS, {"tenant": str(findable.tenant_id), "status__exact": LeadOfferStatus.TO_BE_CONTACTED}
    )

    # Over all tenants only the primary key's index serves an ordering.
    assert ordering_of(unfiltered) == ["-pk"]
    # (tenant[, status], updated_at DESC, id DESC): the composite indexes, with no sort step.
    assert ordering_of(by_tenant) == ["-updated_at", "-pk"]
    assert ordering_of(by_tenant_and_status) == ["-updated_at", "-pk"]
    assert listed(by_tenant_and_status) == [findable.pk]


@pytest.mark.parametrize(
    "params",
    [{}, {"tenant": "x"}, {"status__exact": "TO_BE_CONTACTED"}, {"q": "+5491122334455"}],
    ids=["unfiltered", "tenant", "status", "search"],
)
def test_lead_offer_changelist_issues_no_unbounded_count(admin_client, findable, params):
    params = {k: str(findable.tenant_id) if v == "x" else v for k, v in params.items()}

    with CaptureQueriesContext(connection) as captured:
        response = admin_client.get(LEAD_OFFERS, params)

    assert response.status_code == 200
    counts = [q["sql"] for q in captured.captured_queries if "COUNT(" in q["sql"].upper()]
    assert len(counts) == 1
    assert "lead_offers" in counts[0]
    assert " LIMIT 10001" in counts[0]


def test_unfiltered_lead_offer_changelist_reads_the_estimate_instead_of_counting(
    admin_client, findable, monkeypatch
):
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE lead_offers")
    monkeypatch.setattr(LeadOfferAdmin, "count_estimate_above", 1)

    with CaptureQueriesContext(connection) as captured:
        response = admin_client.get(LEAD_OFFERS)

    assert response.status_code == 200
    assert [q["sql"] for q in captured.captured_queries if "COUNT(" in q["sql"].upper()] == []
    assert b"about 3 lead offers" in response.content


# --- Lead offer change form and actions -------------------------------------------------------------


def test_lead_offer_status_is_read_only_in_the_change_form(admin_client, findable):
    url = reverse("admin:leads_leadoffer_change", args=[findable.pk])
    LeadEventFactory(lead_offer=findable)
    data = form_post_data(admin_client.get(url))

    response = admin_client.post(
        url, {**data, "status": LeadOfferStatus.STOPPED, "billing_notes": "checked by ops"}
    )

    stored = LeadOffer.objects.get(pk=findable.pk)
    assert response.status_code == 302
    assert (stored.status, stored.billing_notes) == (LeadOfferStatus.TO_BE_CONTACTED, "checked by ops")
    assert LeadEvent.objects.filter(lead_offer=findable).count() == 1
    assert "status" not in data


def test_lead_offer_change_page_shows_the_latest_events_only(admin_client, findable):
    start = timezone.now() - dt.timedelta(days=1)
    events = [
        LeadEventFactory(lead_offer=findable, created_at=start + dt.timedelta(minutes=i))
        for i in range(EVENTS_SHOWN + 5)
    ]

    response = admin_client.get(reverse("admin:leads_leadoffer_change", args=[findable.pk]))

    (inline,) = response.context["inline_admin_formsets"]
    shown = [form.instance.pk for form in inline.formset.forms]
    assert shown == [event.pk for event in reversed(events)][:EVENTS_SHOWN]
    assert b'name="_save"' in response.content


def test_change_status_action_moves_allowed_rows_and_reports_the_others(admin_client, admin_user):
    movable = LeadOfferFactory(status=LeadOfferStatus.TO_BE_CONTACTED)
    stopped = LeadOfferFactory(status=LeadOfferStatus.STOPPED)

    page = post_action(admin_client, LEAD_OFFERS, "change_status", [movable.pk, stopped.pk])
    response = post_action(
        admin_client,
        LEAD_OFFERS,
        "change_status",
        [movable.pk, stopped.pk],
        {"to_status": LeadOfferStatus.CONTACTED, "reason": "called by ops", "disqualification_category": ""},
    )

    assert page.status_code == 200
    assert page.templates[0].name == "admin/converzia/action_form.html"
    assert response.status_code == 200
    assert LeadOffer.objects.get(pk=movable.pk).status == LeadOfferStatus.CONTACTED
    assert LeadOffer.objects.get(pk=stopped.pk).status == LeadOfferStatus.STOPPED
    event = LeadEvent.objects.get(lead_offer=movable, event_type=LeadEventType.STATUS_CHANGE)
    assert (event.actor_type, event.actor_id, event.details) == (
        ActorType.ADMIN,
        admin_user.pk,
        {"from": "TO_BE_CONTACTED", "to": "CONTACTED", "reason": "called by ops"},
    )
    assert not LeadEvent.objects.filter(lead_offer=stopped).exists()
    messages = messages_of(response)
    assert "Moved 1 lead offer(s) to CONTACTED." in messages
    assert any("cannot move from STOPPED to CONTACTED" in m for m in messages)


def test_lead_offers_cannot_be_added_or_deleted(admin_client, findable):
    add = admin_client.get(reverse("admin:leads_leadoffer_add"))
    delete = admin_client.post(reverse("admin:leads_leadoffer_delete", args=[findable.pk]), {"post": "yes"})

    assert (add.status_code, delete.status_code) == (403, 403)
    assert LeadOffer.objects.filter(pk=findable.pk).exists()


# --- Lead events are read-only ----------------------------------------------------------------------


def test_lead_event_admin_refuses_add_change_and_delete(admin_client):
    event = LeadEventFactory(details={"note": "original"})
    change_url = reverse("admin:leads_leadevent_change", args=[event.pk])

    add = admin_client.get(reverse("admin:leads_leadevent_add"))
    page = admin_client.get(change_url)
    change = admin_client.post(change_url, {"event_type": "MANUAL_ACTION", "details": "{}"})
    delete = admin_client.post(reverse("admin:leads_leadevent_delete", args=[event.pk]), {"post": "yes"})
    listing = admin_client.get(reverse("admin:leads_leadevent_changelist"))

    assert (add.status_code, change.status_code, delete.status_code) == (403, 403, 403)
    assert page.status_code == 200
    assert b'name="_save"' not in page.content
    assert b"deletelink" not in page.content
    assert listing.context["action_form"] is None or "delete_selected" not in dict(
        listing.context["action_form"].fields["action"].choices
    )
    stored = LeadEvent.objects.get(pk=event.pk)
    assert (stored.event_type, stored.details) == (LeadEventType.CREATED, {"note": "original"})


# --- Ad mappings ------------------------------------------------------------------------------------


def pending_lead_offer_for(mapping: AdOfferMap) -> LeadOffer:
    source = LeadSourceFactory(tenant=mapping.tenant, ad_id=mapping.ad_id)
    return LeadOfferFactory(
        offer=None,
        tenant=mapping.tenant,
        lead=source.lead,
        lead_source=source,
        status=LeadOfferStatus.PENDING_MAPPING,
    )


def test_activate_action_routes_the_ads_pending_leads(admin_client):
    mapping = AdOfferMapFactory(is_active=False)
    pending = pending_lead_offer_for(mapping)
    unrelated = LeadOfferFactory(offer=None, tenant=mapping.tenant, status=LeadOfferStatus.PENDING_MAPPING)

    response = post_action(admin_client, MAPPINGS, "activate_mappings", [mapping.pk])

    routed = LeadOffer.objects.get(pk=pending.pk)
    assert AdOfferMap.objects.get(pk=mapping.pk).is_active is True
    assert (routed.status, routed.offer_id) == (LeadOfferStatus.TO_BE_CONTACTED, mapping.offer_id)
    assert LeadOffer.objects.get(pk=unrelated.pk).status == LeadOfferStatus.PENDING_MAPPING
    assert "Activated 1 mapping(s); 1 pending lead offer(s) routed." in messages_of(response)


def test_deactivate_action_moves_nothing(admin_client):
    mapping = AdOfferMapFactory(is_active=True)
    pending = pending_lead_offer_for(mapping)

    response = post_action(admin_client, MAPPINGS, "deactivate_mappings", [mapping.pk])

    assert AdOfferMap.objects.get(pk=mapping.pk).is_active is False
    assert LeadOffer.objects.get(pk=pending.pk).status == LeadOfferStatus.PENDING_MAPPING
    assert "Deactivated 1 mapping(s); 0 pending lead offer(s) routed." in messages_of(response)


def test_adding_a_mapping_routes_pending_leads_of_that_ad(admin_client, admin_user):
    offer = OfferFactory()
    source = LeadSourceFactory(tenant=offer.tenant, ad_id="120000009999")
    pending = LeadOfferFactory(
        offer=None, tenant=offer.tenant, lead=source.lead, lead_source=source, status="PENDING_MAPPING"
    )
    add_url = reverse("admin:leads_adoffermap_add")
    data = {
        **form_post_data(admin_client.get(add_url)),
        "tenant": str(offer.tenant_id),
        "offer": str(offer.pk),
        "ad_id": "120000009999",
        "is_active": "on",
    }

    response = admin_client.post(add_url, data, follow=True)

    mapping = AdOfferMap.objects.get(ad_id="120000009999")
    assert response.status_code == 200
    assert (mapping.offer_id, mapping.created_by_id) == (offer.pk, admin_user.pk)
    assert LeadOffer.objects.get(pk=pending.pk).status == LeadOfferStatus.TO_BE_CONTACTED
    assert f"1 pending lead offer(s) routed to {offer}." in messages_of(response)


def test_a_mapping_cannot_point_at_another_tenants_offer(admin_client):
    tenant = TenantFactory()
    foreign_offer = OfferFactory()
    add_url = reverse("admin:leads_adoffermap_add")
    data = {
        **form_post_data(admin_client.get(add_url)),
        "tenant": str(tenant.pk),
        "offer": str(foreign_offer.pk),
        "ad_id": "120000007777",
        "is_active": "on",
    }

    response = admin_client.post(add_url, data)

    assert response.status_code == 200
    assert response.context["adminform"].form.errors["offer"] == ["This offer belongs to another tenant."]
    assert not AdOfferMap.objects.filter(ad_id="120000007777").exists()


def test_lead_phone_is_normalised_when_edited(admin_client, findable):
    url = reverse("admin:leads_lead_change", args=[findable.lead_id])
    data = form_post_data(admin_client.get(url))

    response = admin_client.post(url, {**data, "phone": "+54 9 11 5555-6666"})

    assert response.status_code == 302
    assert Lead.objects.get(pk=findable.lead_id).phone == "+5491155556666"
