"""The leads write services: the transition service and ad-mapping activation."""

from __future__ import annotations

import pytest

from converzia.cache import tenant_version
from converzia.errors import ErrorCode
from converzia.request_context import request_id_var
from converzia.tests.factories import StaffUserFactory, UserFactory
from leads.errors import LeadOfferInvalidTransition
from leads.models import (
    ActorType,
    AdOfferMap,
    DisqualificationCategory,
    LeadEvent,
    LeadEventType,
    LeadOffer,
    LeadOfferStatus,
)
from leads.services import ad_mapping_set_active, lead_offer_transition
from leads.tests.factories import (
    AdOfferMapFactory,
    LeadOfferFactory,
    LeadSourceFactory,
    OfferFactory,
)
from leads.transitions import ALLOWED_TRANSITIONS, allowed_targets

pytestmark = pytest.mark.django_db

S = LeadOfferStatus


def status_events(lead_offer: LeadOffer) -> list[LeadEvent]:
    return list(
        LeadEvent.objects.filter(lead_offer=lead_offer, event_type=LeadEventType.STATUS_CHANGE).order_by(
            "created_at"
        )
    )


def test_transition_moves_the_row_and_records_who_did_it():
    lead_offer = LeadOfferFactory(status=S.CONTACTED)
    operator = UserFactory()
    token = request_id_var.set("req-transition-1")
    try:
        moved = lead_offer_transition(
            lead_offer=lead_offer, to_status=S.ENGAGED, actor=operator, actor_type=ActorType.OPERATOR
        )
    finally:
        request_id_var.reset(token)

    assert (moved.status, moved.previous_status) == (S.ENGAGED, S.CONTACTED)
    stored = LeadOffer.objects.get(pk=lead_offer.pk)
    assert (stored.status, stored.previous_status, stored.status_changed_at) == (
        S.ENGAGED,
        S.CONTACTED,
        moved.status_changed_at,
    )
    [event] = status_events(lead_offer)
    assert event.details == {"from": S.CONTACTED, "to": S.ENGAGED}
    assert (event.actor_type, event.actor_id) == (ActorType.OPERATOR, operator.pk)
    assert (event.lead_id, event.tenant_id) == (lead_offer.lead_id, lead_offer.tenant_id)
    assert event.trace_id == "req-transition-1"


def test_staff_actor_is_recorded_as_admin_with_the_reason():
    lead_offer = LeadOfferFactory(status=S.ENGAGED)
    staff = StaffUserFactory()
    lead_offer_transition(
        lead_offer=lead_offer, to_status=S.HUMAN_HANDOFF, actor=staff, reason="asked for a call"
    )
    [event] = status_events(lead_offer)
    assert event.details == {"from": S.ENGAGED, "to": S.HUMAN_HANDOFF, "reason": "asked for a call"}
    assert (event.actor_type, event.actor_id, event.trace_id) == (ActorType.ADMIN, staff.pk, "")


def test_transition_without_actor_is_a_system_event():
    lead_offer = LeadOfferFactory(status=S.TO_BE_CONTACTED)
    lead_offer_transition(lead_offer=lead_offer, to_status=S.CONTACTED)
    [event] = status_events(lead_offer)
    assert (event.actor_type, event.actor_id) == (ActorType.SYSTEM, None)


def test_entering_lead_ready_reports_the_trigger_stamped_qualified_at():
    lead_offer = LeadOfferFactory(status=S.QUALIFYING)
    moved = lead_offer_transition(lead_offer=lead_offer, to_status=S.LEAD_READY)
    assert moved.qualified_at is not None
    assert moved.qualified_at == LeadOffer.objects.get(pk=lead_offer.pk).qualified_at


@pytest.mark.parametrize("from_status", [S.STOPPED, S.SENT_TO_DEVELOPER, S.TO_BE_CONTACTED])
def test_invalid_move_raises_with_the_allowed_targets_and_changes_nothing(
    from_status, django_capture_on_commit_callbacks
):
    lead_offer = LeadOfferFactory(status=from_status)
    before = LeadOffer.objects.filter(pk=lead_offer.pk).values().get()
    with django_capture_on_commit_callbacks() as callbacks:
        with pytest.raises(LeadOfferInvalidTransition) as caught:
            lead_offer_transition(lead_offer=lead_offer, to_status=S.LEAD_READY, reason="skip ahead")

    error = caught.value
    assert (error.code, error.http_status) == (ErrorCode.INVALID_TRANSITION, 409)
    assert error.details == {"from": from_status, "to": S.LEAD_READY, "allowed": allowed_targets(from_status)}
    assert set(error.details["allowed"]) == ALLOWED_TRANSITIONS[from_status]
    assert LeadOffer.objects.filter(pk=lead_offer.pk).values().get() == before
    assert LeadEvent.objects.filter(lead_offer=lead_offer).count() == 0
    assert callbacks == []


def test_invalid_move_is_judged_on_the_stored_status_not_a_stale_instance():
    lead_offer = LeadOfferFactory(status=S.CONTACTED)
    LeadOffer.objects.filter(pk=lead_offer.pk).update(status=S.STOPPED)
    # The in-memory object still says CONTACTED, from which ENGAGED would be legal.
    with pytest.raises(LeadOfferInvalidTransition) as caught:
        lead_offer_transition(lead_offer=lead_offer, to_status=S.ENGAGED)
    assert caught.value.details == {"from": S.STOPPED, "to": S.ENGAGED, "allowed": []}


def test_same_status_is_a_no_op(django_capture_on_commit_callbacks):
    lead_offer = LeadOfferFactory(status=S.ENGAGED)
    before = LeadOffer.objects.filter(pk=lead_offer.pk).values().get()
    with django_capture_on_commit_callbacks() as callbacks:
        result = lead_offer_transition(lead_offer=lead_offer, to_status=S.ENGAGED)
    assert result.status == S.ENGAGED
    assert LeadOffer.objects.filter(pk=lead_offer.pk).values().get() == before
    assert LeadEvent.objects.count() == 0
    assert callbacks == []


def test_disqualification_stores_category_and_reason():
    lead_offer = LeadOfferFactory(status=S.QUALIFYING)
    lead_offer_transition(
        lead_offer=lead_offer,
        to_status=S.DISQUALIFIED,
        reason="budget is half the price",
        disqualification_category=DisqualificationCategory.PRICE_TOO_HIGH,
    )
    stored = LeadOffer.objects.get(pk=lead_offer.pk)
    assert (stored.status, stored.disqualification_category, stored.disqualification_reason) == (
        S.DISQUALIFIED,
        DisqualificationCategory.PRICE_TOO_HIGH,
        "budget is half the price",
    )
    [event] = status_events(lead_offer)
    assert event.details == {
        "from": S.QUALIFYING,
        "to": S.DISQUALIFIED,
        "reason": "budget is half the price",
        "disqualification_category": DisqualificationCategory.PRICE_TOO_HIGH,
    }


def test_disqualification_without_category_is_other():
    lead_offer = LeadOfferFactory(status=S.CONTACTED)
    lead_offer_transition(lead_offer=lead_offer, to_status=S.DISQUALIFIED)
    stored = LeadOffer.objects.get(pk=lead_offer.pk)
    assert (stored.disqualification_category, stored.disqualification_reason) == ("OTHER", "")


def test_transition_bumps_the_tenant_cache_version_on_commit(django_capture_on_commit_callbacks):
    lead_offer = LeadOfferFactory(status=S.TO_BE_CONTACTED)
    other = LeadOfferFactory(status=S.TO_BE_CONTACTED)
    before, other_before = tenant_version(lead_offer.tenant_id), tenant_version(other.tenant_id)

    with django_capture_on_commit_callbacks(execute=False) as pending:
        lead_offer_transition(lead_offer=lead_offer, to_status=S.CONTACTED)
    # Nothing is invalidated before the transaction commits.
    assert len(pending) == 1
    assert tenant_version(lead_offer.tenant_id) == before

    with django_capture_on_commit_callbacks(execute=True):
        lead_offer_transition(lead_offer=lead_offer, to_status=S.ENGAGED)
    assert tenant_version(lead_offer.tenant_id) == before + 1
    assert tenant_version(other.tenant_id) == other_before


# -- ad mappings --------------------------------------------------------------------------------------


def pending_lead_offer(*, tenant, ad_id: str) -> LeadOffer:
    source = LeadSourceFactory(tenant=tenant, ad_id=ad_id)
    return LeadOfferFactory(
        tenant=tenant, offer=None, lead=source.lead, lead_source=source, status=S.PENDING_MAPPING
    )


def test_activating_a_mapping_routes_the_ads_waiting_leads(django_capture_on_commit_callbacks):
    offer = OfferFactory()
    mapping = AdOfferMapFactory(offer=offer, tenant=offer.tenant, ad_id="120000000777", is_active=False)
    waiting = [pending_lead_offer(tenant=offer.tenant, ad_id="120000000777") for _ in range(2)]
    other_ad = pending_lead_offer(tenant=offer.tenant, ad_id="120000000888")
    staff = StaffUserFactory()

    with django_capture_on_commit_callbacks(execute=True):
        moved = ad_mapping_set_active(mapping=mapping, is_active=True, actor=staff)

    assert moved == 2
    assert AdOfferMap.objects.get(pk=mapping.pk).is_active is True
    for lead_offer in waiting:
        stored = LeadOffer.objects.get(pk=lead_offer.pk)
        assert (stored.status, stored.offer_id, stored.previous_status) == (
            S.TO_BE_CONTACTED,
            offer.pk,
            S.PENDING_MAPPING,
        )
        assert stored.next_attempt_at is not None
        [event] = status_events(lead_offer)
        assert event.details == {
            "from": S.PENDING_MAPPING,
            "to": S.TO_BE_CONTACTED,
            "reason": "ad 120000000777 mapped",
        }
    assert LeadOffer.objects.get(pk=other_ad.pk).status == S.PENDING_MAPPING


def test_routing_skips_a_lead_that_already_has_a_row_for_the_offer():
    offer = OfferFactory()
    mapping = AdOfferMapFactory(offer=offer, tenant=offer.tenant, ad_id="120000000999", is_active=False)
    unmapped = pending_lead_offer(tenant=offer.tenant, ad_id="120000000999")
    LeadOfferFactory(tenant=offer.tenant, offer=offer, lead=unmapped.lead, status=S.CONTACTED)

    assert ad_mapping_set_active(mapping=mapping, is_active=True) == 0
    stored = LeadOffer.objects.get(pk=unmapped.pk)
    assert (stored.status, stored.offer_id) == (S.PENDING_MAPPING, None)
    assert status_events(unmapped) == []


def test_routing_never_touches_another_tenants_leads():
    offer = OfferFactory()
    mapping = AdOfferMapFactory(offer=offer, tenant=offer.tenant, ad_id="120000001111", is_active=False)
    foreign = pending_lead_offer(tenant=OfferFactory().tenant, ad_id="120000001111")
    assert ad_mapping_set_active(mapping=mapping, is_active=True) == 0
    assert LeadOffer.objects.get(pk=foreign.pk).status == S.PENDING_MAPPING


def test_deactivating_or_a_mapping_without_offer_routes_nothing():
    offer = OfferFactory()
    mapping = AdOfferMapFactory(offer=offer, tenant=offer.tenant, ad_id="120000002222")
    waiting = pending_lead_offer(tenant=offer.tenant, ad_id="120000002222")
    assert ad_mapping_set_active(mapping=mapping, is_active=False) == 0
    assert AdOfferMap.objects.get(pk=mapping.pk).is_active is False

    unmapped = AdOfferMapFactory(offer=None, tenant=offer.tenant, ad_id="120000003333", is_active=False)
    assert ad_mapping_set_active(mapping=unmapped, is_active=True) == 0
    assert AdOfferMap.objects.get(pk=unmapped.pk).is_active is True
    assert LeadOffer.objects.get(pk=waiting.pk).status == S.PENDING_MAPPING
