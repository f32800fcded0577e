"""`GET /api/admin/queue`: what is waiting, counted live from the indexes, for staff only."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from deliveries.models import DeliveryBlockedReason, DeliveryStatus
from deliveries.tests.factories import DeliveryFactory
from leads.models import InboxChange, InboxChangeStatus, InboxEvent, InboxEventStatus

pytestmark = pytest.mark.django_db
URL = "/api/admin/queue"


def inbox_event(status: str, age_s: float, change_status: str | None = None) -> InboxEvent:
    event = InboxEvent.objects.create(payload={}, status=status, change_count=1)
    InboxEvent.objects.filter(pk=event.pk).update(received_at=timezone.now() - timedelta(seconds=age_s))
    if change_status:
        InboxChange.objects.create(event=event, position=0, leadgen_id=str(event.pk), status=change_status)
    return event


@pytest.fixture
def queue():
    now = timezone.now()
    inbox_event(InboxEventStatus.PENDING, 30)
    inbox_event(InboxEventStatus.PENDING, 300)
    inbox_event(InboxEventStatus.DONE, 900)
    inbox_event(InboxEventStatus.PARKED, 900, InboxChangeStatus.UNROUTED)
    inbox_event(InboxEventStatus.PARKED, 900, InboxChangeStatus.FAILED)
    inbox_event(InboxEventStatus.PARKED, 900, InboxChangeStatus.UNROUTED)
    DeliveryFactory(next_attempt_at=now - timedelta(seconds=120))  # due for 2 minutes
    DeliveryFactory(status=DeliveryStatus.FAILED, next_attempt_at=now - timedelta(seconds=5))  # due, failed
    DeliveryFactory(status=DeliveryStatus.FAILED, next_attempt_at=now + timedelta(hours=1))  # failed, later
    DeliveryFactory(next_attempt_at=now + timedelta(seconds=50), claimed_until=now + timedelta(seconds=50))
    DeliveryFactory(next_attempt_at=None, blocked_reason=DeliveryBlockedReason.NO_ACTIVE_DESTINATION)
    DeliveryFactory(next_attempt_at=None, blocked_reason=DeliveryBlockedReason.INSUFFICIENT_CREDITS)
    DeliveryFactory(status=DeliveryStatus.DEAD_LETTER, next_attempt_at=None)
    DeliveryFactory(delivered=True, next_attempt_at=None)


def test_staff_see_the_queue(queue, staff_user, client_for, django_assert_num_queries):
    client = client_for(staff_user)
    client.get(URL)  # the token's first use: its last-used stamp, and its principal cached
    # No query to authenticate (the cached principal); the guard's savepoint, settings read, SET
    # LOCAL, restore and release (inside the test's transaction; in production BEGIN, SET LOCAL,
    # COMMIT); 6 aggregates.
    with django_assert_num_queries(11):
        response = client.get(URL)

    assert response.status_code == 200
    body = response.json()
    assert body["depth"] == 2 + 2
    inbox = body["inbox"]
    assert inbox["pending_events"] == 2
    assert 299 <= inbox["oldest_pending_age_s"] <= 330
    assert inbox["parked_changes"] == {"UNROUTED": 2, "FAILED": 1}
    deliveries = body["deliveries"]
    assert (deliveries["due"], deliveries["in_flight"], deliveries["failed"], deliveries["dead_letter"]) == (
        2,
        1,
        2,
        1,
    )
    assert 119 <= deliveries["oldest_due_age_s"] <= 150
    assert deliveries["waiting"] == {"NO_ACTIVE_DESTINATION": 1, "INSUFFICIENT_CREDITS": 1}


def test_an_empty_queue(staff_user, client_for):
    body = client_for(staff_user).get(URL).json()
    assert body["depth"] == 0
    assert body["inbox"]["oldest_pending_age_s"] is None
    assert body["deliveries"]["oldest_due_age_s"] is None


def test_only_staff(owner, client_for, api_client):
    assert api_client.get(URL).status_code == 401
    forbidden = client_for(owner).get(URL)
    assert forbidden.status_code == 403
    assert forbidden.json()["error"]["code"] == "forbidden"


def test_unknown_query_parameters_are_refused(staff_user, client_for):
    response = client_for(staff_user).get(URL, {"status": "x"})
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_input"
