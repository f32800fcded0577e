"""The destination services: configure (create/update, secret once), rotate, test send, resume."""

from __future__ import annotations

import json
from datetime import datetime

import pytest
from django.apps import apps
from django.utils import timezone
from standardwebhooks import Webhook

from converzia.errors import Conflict, ErrorCode, InvalidInput
from deliveries.models import (
    Delivery,
    DeliveryAttempt,
    DeliveryBlockedReason,
    DeliveryDestination,
    DeliveryStatus,
    DestinationType,
)
from deliveries.selectors import destination_get_for_tenant
from deliveries.services import destinations
from deliveries.services.destinations import (
    DISABLED_BY_TENANT_REASON,
    destination_configure,
    destination_secret_rotate,
    destination_test_send,
)
from deliveries.tests.factories import DeliveryDestinationFactory, DeliveryFactory

pytestmark = pytest.mark.django_db

URL = "http://127.0.0.1:9/hook"


def dispatcher_jobs() -> int:
    job = apps.get_model("procrastinate", "ProcrastinateJob")
    return job.objects.filter(task_name="deliveries.dispatch", status="todo").count()


def forget_dispatcher_jobs() -> None:
    """Start from an empty queue, whatever setting up the test data queued."""
    apps.get_model("procrastinate", "ProcrastinateJob").objects.filter(
        task_name="deliveries.dispatch"
    ).delete()


# --- configure -------------------------------------------------------------------------------------


def test_configuring_creates_the_destination_and_returns_its_secret_once(tenant, owner):
    destination, secret = destination_configure(tenant=tenant, url=URL, actor=owner)

    stored = DeliveryDestination.objects.get(tenant=tenant)
    assert stored.pk == destination.pk
    assert stored.destination_type == DestinationType.WEBHOOK
    assert stored.url == URL
    assert stored.is_active is True
    assert stored.disabled_at is None
    assert stored.disabled_reason == ""
    assert secret is not None
    assert secret.startswith("whsec_")
    assert stored.secret == secret


def test_configuring_again_updates_the_url_and_keeps_the_secret(tenant):
    created, secret = destination_configure(tenant=tenant, url=URL)

    updated, second_secret = destination_configure(tenant=tenant, url="http://127.0.0.1:10/other")

    assert second_secret is None
    assert updated.pk == created.pk
    stored = DeliveryDestination.objects.get(tenant=tenant)
    assert stored.url == "http://127.0.0.1:10/other"
    assert stored.secret == secret
    assert DeliveryDestination.objects.count() == 1


def test_the_url_is_stored_without_surrounding_whitespace(tenant):
    destination, _ = destination_configure(tenant=tenant, url=f"  {URL}\n")

    assert destination.url == URL


def test_disabling_records_when_and_why(tenant):
    destination_configure(tenant=tenant, url=URL)

    destination, _ = destination_configure(tenant=tenant, url=URL, is_active=False)

    stored = DeliveryDestination.objects.get(pk=destination.pk)
    assert stored.is_active is False
    assert stored.disabled_at is not None
    assert stored.disabled_reason == DISABLED_BY_TENANT_REASON


def test_creating_it_disabled_records_that_too(tenant):
    destination, secret = destination_configure(tenant=tenant, url=URL, is_active=False)

    assert secret is not None
    assert destination.is_active is False
    assert destination.disabled_reason == DISABLED_BY_TENANT_REASON


def test_enabling_clears_a_disable_by_the_receiver(tenant):
    # As the dispatcher leaves it after a 410 Gone.
    disabled = DeliveryDestinationFactory(
        tenant=tenant,
        is_active=False,
        disabled_at=timezone.now(),
        disabled_reason="The receiver answered 410 Gone.",
    )

    destination, secret = destination_configure(tenant=tenant, url=URL)

    assert secret is None
    stored = DeliveryDestination.objects.get(pk=disabled.pk)
    assert stored.is_active is True
    assert stored.disabled_at is None
    assert stored.disabled_reason == ""


def test_saving_an_unchanged_destination_writes_nothing(tenant):
    destination, _ = destination_configure(tenant=tenant, url=URL)
    before = DeliveryDestination.objects.get(pk=destination.pk).updated_at

    destination_configure(tenant=tenant, url=URL)

    assert DeliveryDestination.objects.get(pk=destination.pk).updated_at == before


def test_each_tenant_configures_its_own_destination(tenant, other_tenant):
    mine, my_secret = destination_configure(tenant=tenant, url=URL)
    theirs, their_secret = destination_configure(tenant=other_tenant, url="http://127.0.0.1:10/theirs")

    assert mine.pk != theirs.pk
    assert my_secret != their_secret
    assert DeliveryDestination.objects.get(tenant=tenant).url == URL


def test_a_destination_created_concurrently_is_updated_not_duplicated(tenant, monkeypatch):
    # The race: our lookup found nothing, then another request's row committed before our insert.
    winner = DeliveryDestinationFactory(tenant=tenant, url="http://127.0.0.1:11/first")
    real_lookup = destinations._destination_locked
    lookups = iter([lambda t: None])
    monkeypatch.setattr(destinations, "_destination_locked", lambda t: next(lookups, real_lookup)(t))

    destination, secret = destination_configure(tenant=tenant, url=URL)

    assert secret is None  # the winner's secret stands, and was shown to the winner
    assert destination.pk == winner.pk
    stored = DeliveryDestination.objects.get(tenant=tenant)
    assert stored.url == URL
    assert stored.secret == winner.secret


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        pytest.param("", "Enter the URL", id="_case_empty"),
        pytest.param("ftp://127.0.0.1/hook", "must use https", id="_case_scheme"),
        pytest.param("https://u:p@127.0.0.1/hook", "Credentials", id="_case_credentials"),
        pytest.param("https://127.0.0.1/hook#x", "fragment", id="_case_fragment"),
        pytest.param("https://receiver.invalid/hook", "does not resolve", id="_case_unresolvable"),
        pytest.param("https://127.0.0.1/" + "a" * 500, "at most 500 characters", id="_case_too_long"),
    ],
)
def test_an_unusable_url_is_invalid_input_and_nothing_is_stored(tenant, url, problem):
    with pytest.raises(InvalidInput) as raised:
        destination_configure(tenant=tenant, url=url)

    assert raised.value.code == ErrorCode.INVALID_INPUT
    assert list(raised.value.details) == ["url"]
    assert problem in raised.value.details["url"][0]
    assert not DeliveryDestination.objects.exists()


def test_a_private_address_is_refused_where_private_networks_are_not_allowed(tenant, settings):
    settings.DELIVERY_ALLOW_PRIVATE_NETWORKS = False

    with pytest.raises(InvalidInput) as raised:
        destination_configure(tenant=tenant, url="https://10.0.0.5/hook")

    assert "non-public address" in raised.value.details["url"][0]
    assert not DeliveryDestination.objects.exists()


def test_an_invalid_update_leaves_the_destination_unchanged(tenant):
    destination, _ = destination_configure(tenant=tenant, url=URL)

    with pytest.raises(InvalidInput):
        destination_configure(tenant=tenant, url="https://receiver.invalid/hook", is_active=False)

    stored = DeliveryDestination.objects.get(pk=destination.pk)
    assert (stored.url, stored.is_active) == (URL, True)


def test_django_url_validation_also_applies(tenant):
    # Resolves (a literal) and passes the guard, but is not a URL Django accepts.
    with pytest.raises(InvalidInput) as raised:
        destination_configure(tenant=tenant, url="http://127.0.0.1:8000/ho ok")

    assert list(raised.value.details) == ["url"]


# --- resuming deliveries that waited for a destination (needs deliveries_resume_blocked) -----------


def test_an_active_destination_resumes_the_deliveries_waiting_for_one(tenant, other_tenant):
    waiting = DeliveryFactory(
        lead_offer__offer__tenant=tenant,
        blocked_reason=DeliveryBlockedReason.NO_ACTIVE_DESTINATION,
        next_attempt_at=None,
    )
    short_of_credits = DeliveryFactory(
        lead_offer__offer__tenant=tenant,
        blocked_reason=DeliveryBlockedReason.INSUFFICIENT_CREDITS,
        next_attempt_at=None,
    )
    elsewhere = DeliveryFactory(
        lead_offer__offer__tenant=other_tenant,
        blocked_reason=DeliveryBlockedReason.NO_ACTIVE_DESTINATION,
        next_attempt_at=None,
    )
    forget_dispatcher_jobs()

    destination_configure(tenant=tenant, url=URL)

    waiting.refresh_from_db()
    assert waiting.blocked_reason == ""
    assert waiting.next_attempt_at is not None
    assert waiting.status == DeliveryStatus.PENDING
    short_of_credits.refresh_from_db()
    assert short_of_credits.blocked_reason == DeliveryBlockedReason.INSUFFICIENT_CREDITS
    elsewhere.refresh_from_db()
    assert elsewhere.blocked_reason == DeliveryBlockedReason.NO_ACTIVE_DESTINATION
    assert dispatcher_jobs() == 1


def test_an_inactive_destination_resumes_nothing(tenant):
    waiting = DeliveryFactory(
        lead_offer__offer__tenant=tenant,
        blocked_reason=DeliveryBlockedReason.NO_ACTIVE_DESTINATION,
        next_attempt_at=None,
    )
    forget_dispatcher_jobs()

    destination_configure(tenant=tenant, url=URL, is_active=False)

    waiting.refresh_from_db()
    assert waiting.blocked_reason == DeliveryBlockedReason.NO_ACTIVE_DESTINATION
    assert waiting.next_attempt_at is None
    assert dispatcher_jobs() == 0


# --- rotate ----------------------------------------------------------------------------------------


def test_rotating_changes_the_secret_and_its_hint(tenant, owner):
    destination, old_secret = destination_configure(tenant=tenant, url=URL)
    old_hint = destination.secret_hint

    new_secret = destination_secret_rotate(tenant=tenant, actor=owner)

    stored = DeliveryDestination.objects.get(pk=destination.pk)
    assert new_secret.startswith("whsec_")
    assert new_secret != old_secret
    assert stored.secret == new_secret
    assert stored.secret_hint != old_hint
    assert stored.secret_hint == f"{new_secret[:10]}…{new_secret[-4:]}"
    assert (stored.url, stored.is_active) == (URL, True)


def test_rotating_without_a_destination_is_a_conflict(tenant):
    with pytest.raises(Conflict) as raised:
        destination_secret_rotate(tenant=tenant)

    assert raised.value.http_status == 409
    assert raised.value.code == ErrorCode.CONFLICT
    assert "No delivery destination" in raised.value.message


def test_rotating_touches_only_the_tenants_own_destination(tenant, other_tenant):
    theirs = DeliveryDestinationFactory(tenant=other_tenant)
    destination_configure(tenant=tenant, url=URL)

    destination_secret_rotate(tenant=tenant)

    assert DeliveryDestination.objects.get(pk=theirs.pk).secret == theirs.secret


# --- test send -------------------------------------------------------------------------------------


def test_a_test_event_arrives_signed_and_writes_nothing(tenant, receiver):
    receiver.expect_oneshot_request("/hook", method="POST").respond_with_data("thanks")
    destination, secret = destination_configure(tenant=tenant, url=receiver.url_for("/hook"))

    result = destination_test_send(tenant=tenant)

    assert result.delivered is True
    assert result.status_code == 200
    assert result.error is None
    assert result.latency_ms >= 0
    assert result.webhook_id.startswith("msg_test_")
    ((request, _response),) = receiver.log
    assert request.headers["webhook-id"] == result.webhook_id
    payload = Webhook(secret).verify(request.get_data(), dict(request.headers))
    assert payload["type"] == "converzia.test"
    assert datetime.fromisoformat(payload["timestamp"]).tzinfo is not None
    assert payload["data"] == {"tenant_id": str(tenant.pk), "message": destinations.TEST_EVENT_MESSAGE}
    assert json.loads(request.get_data()) == payload
    stored = DeliveryDestination.objects.get(pk=destination.pk)
    assert (stored.last_success_at, stored.last_failure_at) == (None, None)
    assert not Delivery.objects.exists()
    assert not DeliveryAttempt.objects.exists()


def test_every_test_event_has_its_own_webhook_id(tenant, receiver):
    receiver.expect_request("/hook").respond_with_data("ok")
    destination_configure(tenant=tenant, url=receiver.url_for("/hook"))

    first = destination_test_send(tenant=tenant)
    second = destination_test_send(tenant=tenant)

    assert first.webhook_id != second.webhook_id


def test_a_test_event_is_signed_with_the_rotated_secret(tenant, receiver):
    receiver.expect_request("/hook").respond_with_data("ok")
    destination_configure(tenant=tenant, url=receiver.url_for("/hook"))
    new_secret = destination_secret_rotate(tenant=tenant)

    destination_test_send(tenant=tenant)

    ((request, _response),) = receiver.log
    Webhook(new_secret).verify(request.get_data(), dict(request.headers))


def test_an_inactive_destination_can_be_tested_before_enabling_it(tenant, receiver):
    receiver.expect_request("/hook").respond_with_data("ok")
    destination_configure(tenant=tenant, url=receiver.url_for("/hook"), is_active=False)

    result = destination_test_send(tenant=tenant)

    assert result.delivered is True
    assert len(receiver.log) == 1
    assert destination_get_for_tenant(tenant=tenant).is_active is False


def test_a_receiver_error_is_reported_not_raised(tenant, receiver):
    receiver.expect_request("/hook").respond_with_data("boom", status=500)
    destination, _ = destination_configure(tenant=tenant, url=receiver.url_for("/hook"))

    result = destination_test_send(tenant=tenant)

    assert result.delivered is False
    assert result.status_code == 500
    assert result.error == "The receiver answered HTTP 500; only a 2xx status counts as delivered."
    assert DeliveryDestination.objects.get(pk=destination.pk).is_active is True


def test_a_410_from_the_test_does_not_disable_the_destination(tenant, receiver):
    receiver.expect_request("/hook").respond_with_data("", status=410)
    destination, _ = destination_configure(tenant=tenant, url=receiver.url_for("/hook"))

    result = destination_test_send(tenant=tenant)

    assert result.status_code == 410
    assert DeliveryDestination.objects.get(pk=destination.pk).is_active is True


def test_the_address_guard_applies_to_test_sends(tenant, receiver, settings):
    receiver.expect_request("/hook").respond_with_data("ok")
    destination_configure(tenant=tenant, url=receiver.url_for("/hook"))
    # The URL was accepted in development; the guard at send time still refuses it in production.
    settings.DELIVERY_ALLOW_PRIVATE_NETWORKS = False

    result = destination_test_send(tenant=tenant)

    assert result.delivered is False
    assert result.status_code is None
    assert result.error.startswith("refused: ")
    assert receiver.log == []


def test_testing_without_a_destination_is_a_conflict(tenant):
    with pytest.raises(Conflict) as raised:
        destination_test_send(tenant=tenant)

    assert raised.value.http_status == 409


# --- selector --------------------------------------------------------------------------------------


def test_the_selector_returns_only_the_tenants_destination(tenant, other_tenant):
    DeliveryDestinationFactory(tenant=other_tenant)

    assert destination_get_for_tenant(tenant=tenant) is None

    mine = DeliveryDestinationFactory(tenant=tenant)

    assert destination_get_for_tenant(tenant=tenant) == mine
