"""A paused tenant (SUSPENDED, ARCHIVED: docs/api.md "Tenant status") keeps receiving leads, and its
deliveries wait: not attempted, not charged, still due, and sent once the tenant is ACTIVE again.

The API side (members read but do not write; staff unaffected) is in the permission matrix
(converzia/tests/test_permission_matrix.py). Here: the dispatcher and ingestion, end to end.
"""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from django.utils import timezone
from pytest_httpserver import HTTPServer

from billing.models import CreditLedger
from converzia.models import Tenant, TenantStatus
from converzia.tests.api_world import bearer_client
from converzia.tests.factories import StaffUserFactory, TenantFactory
from deliveries.models import Delivery, DeliveryAttempt, DeliveryStatus
from deliveries.services import deliveries_dispatch
from deliveries.services.dispatch import deliveries_due_exist
from deliveries.tests.factories import DeliveryDestinationFactory
from deliveries.tests.test_dispatch import Receiver, balance_of, ready_lead
from leads.models import InboxChangeStatus, LeadOffer, LeadOfferStatus, LeadSource
from leads.tests.factories import AdOfferMapFactory, OfferFactory
from leads.tests.test_ingestion import AD_ID, LEADGEN_ID, TOKEN, GraphStub, leadgen, payload, process, store

pytestmark = pytest.mark.django_db

PAUSED = [TenantStatus.SUSPENDED, TenantStatus.ARCHIVED]


@pytest.fixture
def receiver(httpserver: HTTPServer) -> Receiver:
    return Receiver(httpserver)


def set_status(tenant: Tenant, status: str) -> None:
    tenant.status = status
    tenant.save(update_fields=["status", "updated_at"])


def untouched(delivery: Delivery, before: Delivery) -> bool:
    """Nothing about the delivery moved: still due, never claimed, never attempted."""
    delivery.refresh_from_db()
    return (
        delivery.status,
        delivery.attempt_count,
        delivery.next_attempt_at,
        delivery.claimed_until,
        delivery.blocked_reason,
        delivery.updated_at,
    ) == (
        before.status,
        before.attempt_count,
        before.next_attempt_at,
        before.claimed_until,
        before.blocked_reason,
        before.updated_at,
    )


@pytest.mark.parametrize("status", PAUSED)
def test_a_paused_tenants_due_delivery_waits_uncharged_and_goes_out_after_reactivation(status, receiver):
    lead_offer = ready_lead(destination_url=receiver.url, credits=3)
    tenant = lead_offer.tenant
    set_status(tenant, status)
    delivery = Delivery.objects.get(lead_offer=lead_offer)
    before = Delivery.objects.get(pk=delivery.pk)
    assert before.status == DeliveryStatus.PENDING and before.next_attempt_at <= timezone.now()

    report = deliveries_dispatch()

    assert report.batches == 0 and receiver.requests == []
    assert untouched(delivery, before), "still due, never claimed: it goes out as soon as it may"
    assert not DeliveryAttempt.objects.filter(delivery=delivery).exists()
    assert balance_of(tenant) == 3
    assert not deliveries_due_exist(), "the sweep does not wake a dispatcher for nothing"

    set_status(tenant, TenantStatus.ACTIVE)
    assert deliveries_due_exist()
    deliveries_dispatch()

    delivery.refresh_from_db()
    assert delivery.status == DeliveryStatus.DELIVERED
    assert len(receiver.requests) == 1
    assert balance_of(tenant) == 2, "charged once, when it was sent"


def test_other_tenants_are_delivered_while_one_is_paused(receiver):
    paused = ready_lead(destination_url=receiver.url)
    active = ready_lead(destination_url=receiver.url)
    set_status(paused.tenant, TenantStatus.SUSPENDED)

    deliveries_dispatch()

    assert Delivery.objects.get(lead_offer=active).status == DeliveryStatus.DELIVERED
    assert Delivery.objects.get(lead_offer=paused).status == DeliveryStatus.PENDING
    assert len(receiver.requests) == 1


def test_a_pending_tenant_is_not_paused(receiver):
    lead_offer = ready_lead(destination_url=receiver.url)
    set_status(lead_offer.tenant, TenantStatus.PENDING)

    deliveries_dispatch()

    assert Delivery.objects.get(lead_offer=lead_offer).status == DeliveryStatus.DELIVERED


def test_a_delivery_leased_before_suspension_is_not_resent_while_paused(receiver):
    """A lease that runs out while the tenant is paused leaves the delivery due, not resent."""
    lead_offer = ready_lead(destination_url=receiver.url)
    delivery = Delivery.objects.get(lead_offer=lead_offer)
    Delivery.objects.filter(pk=delivery.pk).update(
        attempt_count=1,
        claimed_until=timezone.now() - timedelta(seconds=1),
        next_attempt_at=timezone.now() - timedelta(seconds=1),
    )
    set_status(lead_offer.tenant, TenantStatus.SUSPENDED)

    deliveries_dispatch()

    delivery.refresh_from_db()
    assert receiver.requests == []
    assert delivery.attempt_count == 1 and delivery.status == DeliveryStatus.PENDING


# --- ingestion and staff ---------------------------------------------------------------------------


@pytest.fixture
def graph(settings, httpserver: HTTPServer) -> GraphStub:
    settings.META_GRAPH_URL = httpserver.url_for("")
    settings.META_PAGE_ACCESS_TOKEN = TOKEN
    settings.META_GRAPH_TIMEOUT_S = 2.0
    return GraphStub(httpserver)


@pytest.mark.parametrize("status", PAUSED)
def test_a_paused_tenants_meta_lead_is_stored_and_its_delivery_waits(status, graph, httpserver):
    """Ingestion is not paused (no lead is lost); staff may still qualify the lead (staff keep full
    access); the delivery that creates waits until the tenant is ACTIVE again."""
    receiver = Receiver(httpserver)
    tenant = TenantFactory(status=status)
    offer = OfferFactory(tenant=tenant)
    AdOfferMapFactory(tenant=tenant, offer=offer, ad_id=AD_ID)
    DeliveryDestinationFactory(tenant=tenant, url=receiver.url)
    graph.lead(LEADGEN_ID, ("full_name", "Ana Pérez"), ("phone_number", "+5491155550101"))

    event = store(payload(leadgen(LEADGEN_ID)))
    counts = process(event)

    assert counts == {InboxChangeStatus.PROCESSED: 1}
    lead_offer = LeadOffer.objects.get(tenant=tenant)
    assert lead_offer.offer_id == offer.pk
    assert LeadSource.objects.filter(tenant=tenant, leadgen_id=LEADGEN_ID).exists()

    from billing.services import credit_bonus_grant

    credit_bonus_grant(tenant=tenant, amount=2, reason="test")
    staff = bearer_client(StaffUserFactory())
    base = f"/api/ops/lead-offers/{lead_offer.pk}"
    for step in ("CONTACTED", "ENGAGED", "QUALIFYING"):
        assert staff.post(f"{base}/transition", {"to": step}, format="json").status_code == 200
    response = staff.post(f"{base}/qualification", {"score_total": 95}, format="json")
    assert response.status_code == 200, response.content
    assert json.loads(response.content)["status"] == LeadOfferStatus.LEAD_READY

    deliveries_dispatch()
    assert receiver.requests == []
    assert Delivery.objects.get(lead_offer=lead_offer).status == DeliveryStatus.PENDING
    assert list(CreditLedger.objects.filter(tenant=tenant).values_list("amount", flat=True)) == [2]

    set_status(tenant, TenantStatus.ACTIVE)
    deliveries_dispatch()
    assert Delivery.objects.get(lead_offer=lead_offer).status == DeliveryStatus.DELIVERED
    assert len(receiver.requests) == 1
