"""The lead_offer transition trigger agrees with `leads.transitions.ALLOWED_TRANSITIONS`, pair by pair.

Status changes go through `QuerySet.update()` here on purpose: that path skips every Python check, so
only the database trigger stands between it and an illegal move.
"""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.db import DatabaseError, IntegrityError, connection, transaction
from django.utils import timezone

from leads.models import LeadOffer, LeadOfferStatus
from leads.tests.factories import LeadFactory, LeadOfferFactory, OfferFactory
from leads.transitions import ALLOWED_TRANSITIONS, allowed_targets, is_allowed

pytestmark = pytest.mark.django_db

STATUSES = list(LeadOfferStatus.values)
LONG_AGO = timezone.now() - timedelta(days=30)


def db_now():
    with connection.cursor() as cursor:
        cursor.execute("SELECT now()")
        return cursor.fetchone()[0]


def attempt_update(lead_offer: LeadOffer, to_status: str) -> str | None:
    """Update the status in a savepoint; None if the database accepted it, else the violated name."""
    try:
        with transaction.atomic():
            LeadOffer.objects.filter(pk=lead_offer.pk).update(status=to_status)
    except (IntegrityError, DatabaseError) as exc:
        return exc.__cause__.diag.constraint_name
    return None


def test_matrix_covers_exactly_the_thirteen_statuses():
    assert len(STATUSES) == 13
    assert set(ALLOWED_TRANSITIONS) == set(STATUSES)
    assert all(targets <= set(STATUSES) for targets in ALLOWED_TRANSITIONS.values())
    # A status never lists itself: staying put is allowed separately, and the trigger skips it.
    assert all(status not in ALLOWED_TRANSITIONS[status] for status in STATUSES)


@pytest.mark.parametrize("from_status", STATUSES)
def test_trigger_agrees_with_the_matrix_for_every_target(from_status):
    offer = OfferFactory()
    disagreements = []
    for to_status in STATUSES:
        if to_status == from_status:
            continue
        lead_offer = LeadOfferFactory(
            offer=offer, status=from_status, previous_status="", status_changed_at=LONG_AGO
        )
        violated = attempt_update(lead_offer, to_status)
        lead_offer.refresh_from_db()
        if to_status in ALLOWED_TRANSITIONS[from_status]:
            if violated is not None or lead_offer.status != to_status:
                disagreements.append(f"{from_status}->{to_status} allowed by the matrix, refused: {violated}")
        else:
            if violated != "lead_offers_status_transition" or lead_offer.status != from_status:
                disagreements.append(f"{from_status}->{to_status} refused by the matrix, DB said: {violated}")
    assert disagreements == []


def test_refusal_names_the_move_and_the_allowed_targets():
    lead_offer = LeadOfferFactory(status=LeadOfferStatus.SENT_TO_DEVELOPER)
    with pytest.raises(IntegrityError) as caught:
        with transaction.atomic():
            LeadOffer.objects.filter(pk=lead_offer.pk).update(status=LeadOfferStatus.CONTACTED)
    diag = caught.value.__cause__.diag
    assert diag.constraint_name == "lead_offers_status_transition"
    assert diag.sqlstate == "23514"
    assert diag.message_primary == "invalid lead_offer transition SENT_TO_DEVELOPER -> CONTACTED"
    assert diag.message_detail == "allowed: STOPPED"


def test_stopped_is_terminal_and_its_refusal_detail_is_empty():
    lead_offer = LeadOfferFactory(status=LeadOfferStatus.STOPPED)
    with pytest.raises(IntegrityError) as caught:
        with transaction.atomic():
            LeadOffer.objects.filter(pk=lead_offer.pk).update(status=LeadOfferStatus.TO_BE_CONTACTED)
    assert caught.value.__cause__.diag.message_detail == "allowed: "


@pytest.mark.parametrize("status", STATUSES)
def test_same_status_update_is_always_allowed_and_changes_no_bookkeeping(status):
    lead_offer = LeadOfferFactory(status=status, previous_status="", status_changed_at=LONG_AGO)
    assert attempt_update(lead_offer, status) is None
    lead_offer.refresh_from_db()
    assert (lead_offer.status, lead_offer.previous_status, lead_offer.status_changed_at) == (
        status,
        "",
        LONG_AGO,
    )
    assert is_allowed(status, status)


def test_trigger_records_previous_status_and_change_time():
    lead_offer = LeadOfferFactory(
        status=LeadOfferStatus.TO_BE_CONTACTED, previous_status="", status_changed_at=LONG_AGO
    )
    LeadOffer.objects.filter(pk=lead_offer.pk).update(status=LeadOfferStatus.CONTACTED)
    lead_offer.refresh_from_db()
    assert lead_offer.previous_status == LeadOfferStatus.TO_BE_CONTACTED
    assert lead_offer.status_changed_at == db_now()
    assert lead_offer.qualified_at is None


def test_trigger_overrides_a_forged_previous_status():
    lead_offer = LeadOfferFactory(status=LeadOfferStatus.TO_BE_CONTACTED)
    LeadOffer.objects.filter(pk=lead_offer.pk).update(
        status=LeadOfferStatus.CONTACTED, previous_status=LeadOfferStatus.SCORED, status_changed_at=LONG_AGO
    )
    lead_offer.refresh_from_db()
    assert lead_offer.previous_status == LeadOfferStatus.TO_BE_CONTACTED
    assert lead_offer.status_changed_at == db_now()


def test_updating_other_columns_leaves_status_bookkeeping_alone():
    lead_offer = LeadOfferFactory(
        status=LeadOfferStatus.CONTACTED, previous_status="", status_changed_at=LONG_AGO
    )
    LeadOffer.objects.filter(pk=lead_offer.pk).update(contact_attempts=3)
    lead_offer.refresh_from_db()
    assert (lead_offer.contact_attempts, lead_offer.previous_status, lead_offer.status_changed_at) == (
        3,
        "",
        LONG_AGO,
    )


def test_qualified_at_is_set_only_the_first_time_lead_ready_is_entered():
    lead_offer = LeadOfferFactory(status=LeadOfferStatus.QUALIFYING)
    LeadOffer.objects.filter(pk=lead_offer.pk).update(status=LeadOfferStatus.SCORED)
    lead_offer.refresh_from_db()
    assert lead_offer.qualified_at is None

    LeadOffer.objects.filter(pk=lead_offer.pk).update(status=LeadOfferStatus.LEAD_READY)
    lead_offer.refresh_from_db()
    assert lead_offer.qualified_at == db_now()

    # now() is fixed for the whole test transaction, so move the first value back in time to tell a
    # second stamp from the first one. Updating qualified_at alone does not fire the status trigger.
    LeadOffer.objects.filter(pk=lead_offer.pk).update(qualified_at=LONG_AGO)
    for status in (
        LeadOfferStatus.DISQUALIFIED,
        LeadOfferStatus.REACTIVATION,
        LeadOfferStatus.ENGAGED,
        LeadOfferStatus.QUALIFYING,
        LeadOfferStatus.LEAD_READY,
    ):
        LeadOffer.objects.filter(pk=lead_offer.pk).update(status=status)
    lead_offer.refresh_from_db()
    assert lead_offer.status == LeadOfferStatus.LEAD_READY
    assert lead_offer.previous_status == LeadOfferStatus.QUALIFYING
    assert lead_offer.qualified_at == LONG_AGO


def test_a_row_inserted_as_lead_ready_keeps_the_qualified_at_it_was_given():
    # The trigger fires on UPDATE only; whoever inserts a ready row sets qualified_at itself.
    lead_offer = LeadOfferFactory(status=LeadOfferStatus.LEAD_READY, qualified_at=LONG_AGO)
    LeadOffer.objects.filter(pk=lead_offer.pk).update(status=LeadOfferStatus.SENT_TO_DEVELOPER)
    lead_offer.refresh_from_db()
    assert lead_offer.qualified_at == LONG_AGO


def test_model_save_goes_through_the_same_trigger():
    lead_offer = LeadOfferFactory(status=LeadOfferStatus.STOPPED, lead=LeadFactory())
    lead_offer.status = LeadOfferStatus.CONTACTED
    with pytest.raises(IntegrityError):
        with transaction.atomic():
            lead_offer.save()
    assert LeadOffer.objects.get(pk=lead_offer.pk).status == LeadOfferStatus.STOPPED


def test_allowed_targets_lists_the_matrix_in_enum_order():
    for status in STATUSES:
        targets = allowed_targets(status)
        assert set(targets) == ALLOWED_TRANSITIONS[status]
        assert targets == sorted(targets, key=STATUSES.index)
