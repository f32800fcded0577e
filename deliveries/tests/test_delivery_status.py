"""The delivery status trigger agrees with `deliveries.models.DELIVERY_TRANSITIONS` for every pair."""

from __future__ import annotations

import pytest
from django.db import IntegrityError, transaction
from django.utils import timezone

from deliveries.models import DELIVERY_TRANSITIONS, Delivery, DeliveryStatus
from deliveries.tests.factories import DeliveryFactory

pytestmark = pytest.mark.django_db

STATUSES = list(DeliveryStatus.values)
# Statuses whose CHECK needs delivered_at; set it in every update so only the trigger can refuse.
NEEDS_DELIVERED_AT = {DeliveryStatus.DELIVERED, DeliveryStatus.PARTIAL}


def delivery_in(status: str) -> Delivery:
    # Inserted directly in the wanted status: the trigger guards UPDATEs only.
    return DeliveryFactory(
        status=status, delivered_at=timezone.now() if status in NEEDS_DELIVERED_AT else None
    )


def attempt_update(delivery: Delivery, to_status: str) -> str | None:
    try:
        with transaction.atomic():
            Delivery.objects.filter(pk=delivery.pk).update(status=to_status, delivered_at=timezone.now())
    except IntegrityError as exc:
        return exc.__cause__.diag.constraint_name
    return None


def test_machine_covers_every_status_and_names_only_real_ones():
    assert set(DELIVERY_TRANSITIONS) == set(STATUSES)
    assert all(targets <= set(STATUSES) for targets in DELIVERY_TRANSITIONS.values())
    assert all(status not in DELIVERY_TRANSITIONS[status] for status in STATUSES)
    assert DELIVERY_TRANSITIONS[DeliveryStatus.REFUNDED] == frozenset()


@pytest.mark.parametrize("from_status", STATUSES)
def test_trigger_agrees_with_the_machine_for_every_target(from_status):
    disagreements = []
    for to_status in STATUSES:
        if to_status == from_status:
            continue
        delivery = delivery_in(from_status)
        violated = attempt_update(delivery, to_status)
        stored = Delivery.objects.get(pk=delivery.pk).status
        if to_status in DELIVERY_TRANSITIONS[from_status]:
            if violated is not None or stored != to_status:
                disagreements.append(f"{from_status}->{to_status} allowed in Python, DB refused: {violated}")
        elif violated != "deliveries_status_transition" or stored != from_status:
            disagreements.append(f"{from_status}->{to_status} refused in Python, DB said: {violated}")
    assert disagreements == []


@pytest.mark.parametrize("status", STATUSES)
def test_same_status_update_is_always_allowed(status):
    delivery = delivery_in(status)
    assert attempt_update(delivery, status) is None
    assert Delivery.objects.get(pk=delivery.pk).status == status


def test_a_dead_letter_can_be_retried_or_refunded_but_not_marked_delivered():
    retried, refunded, delivered = (delivery_in(DeliveryStatus.DEAD_LETTER) for _ in range(3))
    assert attempt_update(retried, DeliveryStatus.PENDING) is None
    assert attempt_update(refunded, DeliveryStatus.REFUNDED) is None
    assert attempt_update(delivered, DeliveryStatus.DELIVERED) == "deliveries_status_transition"
    assert [Delivery.objects.get(pk=d.pk).status for d in (retried, refunded, delivered)] == [
        DeliveryStatus.PENDING,
        DeliveryStatus.REFUNDED,
        DeliveryStatus.DEAD_LETTER,
    ]


def test_refusal_names_the_move_and_the_allowed_targets():
    delivery = delivery_in(DeliveryStatus.DEAD_LETTER)
    with pytest.raises(IntegrityError) as caught:
        with transaction.atomic():
            Delivery.objects.filter(pk=delivery.pk).update(
                status=DeliveryStatus.DELIVERED, delivered_at=timezone.now()
            )
    diag = caught.value.__cause__.diag
    assert diag.sqlstate == "23514"
    assert diag.message_primary == "invalid delivery transition DEAD_LETTER -> DELIVERED"
    assert diag.message_detail == "allowed: PENDING,REFUNDED"


def test_delivered_needs_a_timestamp_even_on_an_allowed_move():
    delivery = delivery_in(DeliveryStatus.PENDING)
    with pytest.raises(IntegrityError) as caught:
        with transaction.atomic():
            Delivery.objects.filter(pk=delivery.pk).update(status=DeliveryStatus.DELIVERED)
    assert caught.value.__cause__.diag.constraint_name == "deliveries_delivered_has_timestamp"
    assert Delivery.objects.get(pk=delivery.pk).status == DeliveryStatus.PENDING
