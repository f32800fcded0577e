"""The delivery state machine end to end, against a real local receiver (pytest-httpserver).

Each test drives `deliveries_dispatch()` directly (the job body) and checks the rows: delivery status
and timing, attempt rows, ledger, lead_offer status and billing eligibility, events, destination.
Signatures are verified with the `standardwebhooks` package, as a tenant would.
"""

from __future__ import annotations

import threading
from datetime import timedelta
from urllib.parse import urlsplit

import pytest
from django.db import connection
from django.utils import timezone
from standardwebhooks import Webhook
from werkzeug import Request, Response

from billing.models import CreditLedger, CreditTransactionType, TenantCreditBalance
from billing.services import credit_adjust, credit_bonus_grant, credit_purchase_record
from deliveries import outbound
from deliveries.models import (
    Delivery,
    DeliveryAttempt,
    DeliveryBlockedReason,
    DeliveryDestination,
    DeliveryStatus,
    NoChargeReason,
)
from deliveries.services import (
    SendRecord,
    deliveries_dispatch,
    delivery_complete,
    delivery_refund,
    delivery_retry,
    lead_offer_advance,
    lead_offer_qualify,
)
from deliveries.services.lifecycle import DeliveryNotRefundable, backoff_delay_s
from deliveries.tests.address_forms import FakeDNS
from deliveries.tests.factories import DeliveryDestinationFactory
from leads.models import BillingEligibility, LeadEvent, LeadEventType, LeadOfferStatus
from leads.tests.factories import LeadOfferFactory
from leads.tests.test_worker import clear_queue

pytestmark = pytest.mark.django_db


class Receiver:
    """Records every request; answers from a list of (status, headers) or a default."""

    def __init__(self, httpserver, responses=None, default=(200, {})) -> None:
        self.requests: list[tuple[dict[str, str], bytes]] = []
        self.responses = list(responses or [])
        self.default = default
        self.lock = threading.Lock()
        self.url = httpserver.url_for("/hook")
        httpserver.expect_request("/hook", method="POST").respond_with_handler(self.handle)

    def handle(self, request: Request) -> Response:
        with self.lock:
            self.requests.append((dict(request.headers), request.get_data()))
            status, headers = self.responses.pop(0) if self.responses else self.default
        return Response("ok" if status < 300 else "nope", status=status, headers=headers)


@pytest.fixture
def receiver(httpserver):
    return Receiver(httpserver)


def ready_lead(tenant=None, *, credits: int = 5, destination_url: str | None = None, **lead_offer_fields):
    """A lead_offer taken to LEAD_READY by the qualification service (which creates its delivery)."""
    kwargs = {"status": LeadOfferStatus.QUALIFYING, **lead_offer_fields}
    if tenant is not None:
        kwargs.update(offer__tenant=tenant)
    lead_offer = LeadOfferFactory(**kwargs)
    tenant = lead_offer.tenant
    if credits and not CreditLedger.objects.filter(tenant=tenant).exists():
        credit_bonus_grant(tenant=tenant, amount=credits, reason="test")
    if destination_url and not DeliveryDestination.objects.filter(tenant=tenant).exists():
        DeliveryDestinationFactory(tenant=tenant, url=destination_url)
    lead_offer = lead_offer_qualify(lead_offer=lead_offer, score_total=95)
    assert lead_offer.status == LeadOfferStatus.LEAD_READY
    return lead_offer


def make_due(delivery: Delivery) -> None:
    Delivery.objects.filter(pk=delivery.pk).update(next_attempt_at=timezone.now() - timedelta(seconds=1))


def balance_of(tenant) -> int:
    return TenantCreditBalance.objects.get(tenant=tenant).balance


def dispatcher_jobs() -> int:
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM procrastinate_jobs WHERE task_name = 'deliveries.dispatch'")
        return cursor.fetchone()[0]


def test_ready_lead_is_delivered_signed_and_charged_once(receiver):
    lead_offer = ready_lead(destination_url=receiver.url, credits=3)
    delivery = Delivery.objects.get(lead_offer=lead_offer)
    assert delivery.status == DeliveryStatus.PENDING
    assert dispatcher_jobs() == 1, "the delivery's job is deferred in the same transaction"

    report = deliveries_dispatch()

    assert report.outcomes["delivered"] == 1
    ((headers, body),) = receiver.requests
    secret = DeliveryDestination.objects.get(tenant=lead_offer.tenant).secret
    verified = Webhook(secret).verify(body, headers)
    assert verified["type"] == "lead.ready"
    assert verified["data"]["lead_offer_id"] == str(lead_offer.pk)
    assert verified["data"]["lead"]["phone"] == lead_offer.lead.phone
    assert headers["Webhook-Id"] == f"msg_{delivery.pk.hex}"

    delivery.refresh_from_db()
    lead_offer.refresh_from_db()
    assert delivery.status == DeliveryStatus.DELIVERED and delivery.delivered_at
    assert delivery.claimed_until is None and delivery.next_attempt_at is None
    assert lead_offer.status == LeadOfferStatus.SENT_TO_DEVELOPER
    assert lead_offer.billing_eligibility == BillingEligibility.CHARGEABLE
    consumption = CreditLedger.objects.get(delivery=delivery)
    assert (consumption.transaction_type, consumption.amount) == (
        CreditTransactionType.CREDIT_CONSUMPTION,
        -1,
    )
    assert balance_of(lead_offer.tenant) == 2
    attempt = DeliveryAttempt.objects.get(delivery=delivery)
    assert (attempt.attempt_number, attempt.status_code, attempt.succeeded) == (1, 200, True)
    completed = LeadEvent.objects.get(lead_offer=lead_offer, event_type=LeadEventType.DELIVERY_COMPLETED)
    assert completed.details["credit_consumed"] is True
    assert completed.details["ledger_entry_id"] == str(consumption.pk)
    # Nothing left to do: a second run sends nothing more.
    assert deliveries_dispatch().outcomes["delivered"] == 0
    assert len(receiver.requests) == 1


def test_duplicate_lead_is_delivered_but_not_charged(receiver):
    lead_offer = ready_lead(
        destination_url=receiver.url, billing_eligibility=BillingEligibility.NOT_CHARGEABLE_DUPLICATE
    )
    deliveries_dispatch()
    delivery = Delivery.objects.get(lead_offer=lead_offer)
    lead_offer.refresh_from_db()
    assert delivery.status == DeliveryStatus.DELIVERED
    assert delivery.no_charge_reason == NoChargeReason.DUPLICATE
    assert lead_offer.status == LeadOfferStatus.SENT_TO_DEVELOPER
    assert lead_offer.billing_eligibility == BillingEligibility.NOT_CHARGEABLE_DUPLICATE
    assert not CreditLedger.objects.filter(delivery=delivery).exists()
    assert balance_of(lead_offer.tenant) == 5


def test_a_duplicate_needs_no_credit(receiver):
    lead_offer = ready_lead(
        destination_url=receiver.url,
        credits=0,
        billing_eligibility=BillingEligibility.NOT_CHARGEABLE_DUPLICATE,
    )
    deliveries_dispatch()
    assert Delivery.objects.get(lead_offer=lead_offer).status == DeliveryStatus.DELIVERED


def test_server_error_retries_with_backoff_and_the_same_webhook_id(httpserver):
    receiver = Receiver(httpserver, responses=[(500, {})])
    lead_offer = ready_lead(destination_url=receiver.url)
    before = timezone.now()

    deliveries_dispatch()

    delivery = Delivery.objects.get(lead_offer=lead_offer)
    assert delivery.status == DeliveryStatus.FAILED
    assert delivery.error_message == "HTTP 500"
    wait = (delivery.next_attempt_at - before).total_seconds()
    assert 45 * 0.8 - 1 <= wait <= 45 * 1.2 + 1
    attempt = DeliveryAttempt.objects.get(delivery=delivery)
    assert (attempt.status_code, attempt.succeeded, attempt.response_excerpt) == (500, False, "nope")
    assert (
        LeadEvent.objects.filter(lead_offer=lead_offer, event_type=LeadEventType.DELIVERY_FAILED).count() == 1
    )
    assert not CreditLedger.objects.filter(delivery=delivery).exists()
    # Not due yet: the next run sends nothing.
    deliveries_dispatch()
    assert len(receiver.requests) == 1

    make_due(delivery)
    deliveries_dispatch()

    delivery.refresh_from_db()
    assert delivery.status == DeliveryStatus.DELIVERED
    first, second = receiver.requests
    assert first[0]["Webhook-Id"] == second[0]["Webhook-Id"] == f"msg_{delivery.pk.hex}"
    assert first[1] == second[1], "the body is the same bytes on every retry"
    assert list(delivery.attempts.values_list("attempt_number", "succeeded")) == [(1, False), (2, True)]
    assert CreditLedger.objects.filter(delivery=delivery).count() == 1


def test_timeout_is_a_failed_attempt(httpserver, settings):
    settings.DELIVERY_TIMEOUT_S = 0.3
    release = threading.Event()

    def slow(request):
        release.wait(2)
        return Response("late", status=200)

    httpserver.expect_request("/slow").respond_with_handler(slow)
    lead_offer = ready_lead(destination_url=httpserver.url_for("/slow"))
    try:
        deliveries_dispatch()
    finally:
        release.set()
    delivery = Delivery.objects.get(lead_offer=lead_offer)
    assert delivery.status == DeliveryStatus.FAILED
    assert "timed out" in delivery.error_message
    attempt = delivery.attempts.get()
    assert attempt.status_code is None and "timed out" in attempt.error


def test_gone_disables_the_destination_and_the_delivery_waits(httpserver):
    receiver = Receiver(httpserver, responses=[(410, {})])
    lead_offer = ready_lead(destination_url=receiver.url)
    deliveries_dispatch()

    delivery = Delivery.objects.get(lead_offer=lead_offer)
    destination = DeliveryDestination.objects.get(tenant=lead_offer.tenant)
    assert not destination.is_active and destination.disabled_at and "410" in destination.disabled_reason
    assert delivery.status == DeliveryStatus.FAILED
    assert delivery.blocked_reason == DeliveryBlockedReason.NO_ACTIVE_DESTINATION
    assert delivery.next_attempt_at is None
    # A second ready lead of the tenant waits too, without a request.
    ready_lead(lead_offer.tenant)
    deliveries_dispatch()
    assert len(receiver.requests) == 1
    assert (
        Delivery.objects.filter(tenant=lead_offer.tenant, blocked_reason="NO_ACTIVE_DESTINATION").count() == 2
    )


@pytest.mark.parametrize("status", [429, 503])
def test_retry_after_is_honoured(httpserver, status):
    receiver = Receiver(httpserver, responses=[(status, {"Retry-After": "120"})])
    lead_offer = ready_lead(destination_url=receiver.url)
    before = timezone.now()
    deliveries_dispatch()
    delivery = Delivery.objects.get(lead_offer=lead_offer)
    wait = (delivery.next_attempt_at - before).total_seconds()
    assert 119 <= wait <= 122
    assert delivery.attempts.get().status_code == status


def test_dead_letter_after_the_attempt_limit_then_staff_retry(httpserver, settings, staff_user):
    settings.DELIVERY_MAX_ATTEMPTS = 3
    receiver = Receiver(httpserver, default=(500, {}))
    lead_offer = ready_lead(destination_url=receiver.url)
    delivery = Delivery.objects.get(lead_offer=lead_offer)
    for _ in range(3):
        make_due(delivery)
        deliveries_dispatch()
    delivery.refresh_from_db()
    assert delivery.status == DeliveryStatus.DEAD_LETTER
    assert "Gave up after 3 attempts" in delivery.dead_letter_reason
    assert delivery.next_attempt_at is None
    assert LeadEvent.objects.filter(
        lead_offer=lead_offer, event_type=LeadEventType.DELIVERY_DEAD_LETTER
    ).exists()
    assert delivery.attempts.count() == 3
    assert balance_of(lead_offer.tenant) == 5

    receiver.default = (200, {})
    delivery_retry(delivery=delivery, actor=staff_user)
    deliveries_dispatch()
    delivery.refresh_from_db()
    assert delivery.status == DeliveryStatus.DELIVERED
    assert list(delivery.attempts.values_list("attempt_number", flat=True)) == [1, 2, 3, 4]
    assert balance_of(lead_offer.tenant) == 4


def test_no_destination_waits_uncharged_until_one_is_configured(receiver):
    lead_offer = ready_lead()
    deliveries_dispatch()
    delivery = Delivery.objects.get(lead_offer=lead_offer)
    assert delivery.status == DeliveryStatus.PENDING
    assert delivery.blocked_reason == DeliveryBlockedReason.NO_ACTIVE_DESTINATION
    assert delivery.attempt_count == 0 and delivery.next_attempt_at is None
    assert balance_of(lead_offer.tenant) == 5

    from deliveries.services.destinations import destination_configure

    destination_configure(tenant=lead_offer.tenant, url=receiver.url)
    deliveries_dispatch()
    delivery.refresh_from_db()
    assert delivery.status == DeliveryStatus.DELIVERED and not delivery.blocked_reason
    assert balance_of(lead_offer.tenant) == 4


def test_no_credits_waits_until_credits_are_bought(receiver, django_capture_on_commit_callbacks):
    lead_offer = ready_lead(destination_url=receiver.url, credits=0)
    deliveries_dispatch()
    delivery = Delivery.objects.get(lead_offer=lead_offer)
    assert delivery.blocked_reason == DeliveryBlockedReason.INSUFFICIENT_CREDITS
    assert delivery.status == DeliveryStatus.PENDING and delivery.attempt_count == 0
    assert receiver.requests == []

    with django_capture_on_commit_callbacks(execute=True):
        credit_purchase_record(tenant=lead_offer.tenant, credits=10, total=100)
    delivery.refresh_from_db()
    assert delivery.blocked_reason == "" and delivery.next_attempt_at is not None
    deliveries_dispatch()
    delivery.refresh_from_db()
    assert delivery.status == DeliveryStatus.DELIVERED
    assert balance_of(lead_offer.tenant) == 9


def test_concurrent_sends_never_exceed_the_balance(receiver):
    first = ready_lead(destination_url=receiver.url, credits=2)
    for _ in range(4):
        ready_lead(first.tenant)

    deliveries_dispatch()

    statuses = sorted(Delivery.objects.filter(tenant=first.tenant).values_list("status", "blocked_reason"))
    assert statuses.count(("DELIVERED", "")) == 2
    assert len(receiver.requests) == 2, "never more leads sent than the tenant can pay for"
    assert balance_of(first.tenant) == 0
    waiting = Delivery.objects.filter(tenant=first.tenant, status=DeliveryStatus.PENDING)
    # Held behind the in-flight sends first, then parked once nothing is in flight.
    Delivery.objects.filter(pk__in=waiting.values("pk")).update(next_attempt_at=timezone.now())
    deliveries_dispatch()
    assert set(waiting.values_list("blocked_reason", flat=True)) == {"INSUFFICIENT_CREDITS"}


def test_leaving_lead_ready_cancels_the_waiting_delivery(receiver, staff_user):
    lead_offer = ready_lead(destination_url=receiver.url)
    lead_offer_advance(
        lead_offer=lead_offer, to_status=LeadOfferStatus.DISQUALIFIED, actor=staff_user, reason="fake"
    )
    delivery = Delivery.objects.get(lead_offer=lead_offer)
    assert delivery.status == DeliveryStatus.DEAD_LETTER
    assert "DISQUALIFIED" in delivery.dead_letter_reason
    deliveries_dispatch()
    assert receiver.requests == []
    assert balance_of(lead_offer.tenant) == 5


def test_private_destination_is_refused_without_connecting(receiver, settings):
    settings.DELIVERY_ALLOW_PRIVATE_NETWORKS = False
    lead_offer = ready_lead(destination_url=receiver.url)
    deliveries_dispatch()
    delivery = Delivery.objects.get(lead_offer=lead_offer)
    assert receiver.requests == []
    assert delivery.status == DeliveryStatus.FAILED
    assert delivery.error_message.startswith("refused:")
    assert delivery.attempts.get().status_code is None


@pytest.mark.parametrize(
    "answer",
    [
        pytest.param("::ffff:0:7f00:1", id="_case_translated_loopback"),
        pytest.param("::7f00:1", id="_case_compatible_loopback"),
        pytest.param("64:ff9b::7f00:1", id="_case_nat64_loopback"),
        pytest.param("2002:7f00:1::", id="_case_6to4_loopback"),
    ],
)
def test_a_dns_answer_carrying_loopback_in_ipv6_is_refused_without_connecting(
    receiver, settings, monkeypatch, answer
):
    settings.DELIVERY_ALLOW_PRIVATE_NETWORKS = False
    dns = FakeDNS({"receiver.example": [answer]})
    monkeypatch.setattr(outbound, "resolver", dns)
    # Plain http to the receiver's port: a send that followed the answer to 127.0.0.1 would land there.
    port = urlsplit(receiver.url).port
    lead_offer = ready_lead(destination_url=f"http://receiver.example:{port}/hook")

    deliveries_dispatch()

    delivery = Delivery.objects.get(lead_offer=lead_offer)
    assert receiver.requests == []
    assert dns.questions == ["receiver.example"]
    assert delivery.status == DeliveryStatus.FAILED
    assert delivery.error_message.startswith("refused: receiver.example resolves to a non-public address")
    assert "127.0.0.1 (loopback)" in delivery.error_message
    assert delivery.attempts.get().status_code is None
    assert balance_of(lead_offer.tenant) == 5


def test_refund_gives_the_credit_back_once(receiver, staff_user):
    lead_offer = ready_lead(destination_url=receiver.url)
    deliveries_dispatch()
    delivery = Delivery.objects.get(lead_offer=lead_offer)
    assert balance_of(lead_offer.tenant) == 4

    entry = delivery_refund(delivery=delivery, reason="wrong phone", actor=staff_user)

    assert (entry.transaction_type, entry.amount) == (CreditTransactionType.CREDIT_REFUND, 1)
    delivery.refresh_from_db()
    lead_offer.refresh_from_db()
    assert delivery.status == DeliveryStatus.REFUNDED and delivery.refunded_at
    assert lead_offer.billing_eligibility == BillingEligibility.PENDING
    assert balance_of(lead_offer.tenant) == 5
    with pytest.raises(DeliveryNotRefundable):
        delivery_refund(delivery=delivery, reason="again", actor=staff_user)


def test_a_balance_emptied_during_the_send_delivers_uncharged_and_says_so(receiver, staff_user):
    lead_offer = ready_lead(destination_url=receiver.url, credits=1)
    delivery = Delivery.objects.get(lead_offer=lead_offer)
    # Staff take the credit away while the (reserved) send is in flight.
    credit_adjust(tenant=lead_offer.tenant, amount=-1, reason="correction", actor=staff_user)

    completion = delivery_complete(
        SendRecord(
            delivery_id=delivery.pk,
            attempt_number=1,
            destination_id=None,
            url=receiver.url,
            status_code=200,
            duration_ms=5,
        )
    )

    assert (completion.newly_delivered, completion.charged) == (True, False)
    delivery.refresh_from_db()
    lead_offer.refresh_from_db()
    assert delivery.status == DeliveryStatus.DELIVERED
    assert delivery.no_charge_reason == NoChargeReason.WAIVED
    assert lead_offer.status == LeadOfferStatus.SENT_TO_DEVELOPER
    assert lead_offer.billing_eligibility == BillingEligibility.PENDING
    assert "without a credit" in lead_offer.billing_notes
    assert not CreditLedger.objects.filter(delivery=delivery).exists()
    assert balance_of(lead_offer.tenant) == 0
    event = LeadEvent.objects.get(lead_offer=lead_offer, event_type=LeadEventType.DELIVERY_COMPLETED)
    assert (event.details["credit_consumed"], event.details["no_charge_reason"]) == (False, "WAIVED")


def test_backoff_grows_and_stays_within_a_day():
    class Fixed:
        @staticmethod
        def uniform(low, high):
            return 1.0

    delays = [backoff_delay_s(n, rng=Fixed) for n in range(1, 8)]
    assert delays == sorted(delays)
    assert delays[0] == 45
    assert 20 * 3600 <= sum(delays) <= 28 * 3600, "8 attempts span about a day"


@pytest.mark.django_db(transaction=True)
def test_two_hundred_concurrent_completions_charge_once(receiver):
    lead_offer = ready_lead(destination_url=receiver.url, credits=10)
    delivery = Delivery.objects.get(lead_offer=lead_offer)
    record = SendRecord(
        delivery_id=delivery.pk,
        attempt_number=1,
        destination_id=None,
        url=receiver.url,
        status_code=200,
        duration_ms=1,
    )
    barrier = threading.Barrier(40)
    outcomes: list[bool] = []
    errors: list[BaseException] = []

    def complete() -> None:
        try:
            barrier.wait(timeout=30)
            for _ in range(5):
                outcomes.append(delivery_complete(record).charged)
        except BaseException as exc:  # noqa: BLE001 — reported below
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=complete) for _ in range(40)]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        # The committed dispatcher job would outlive the test (procrastinate's tables are not flushed).
        clear_queue()
    assert errors == []
    assert len(outcomes) == 200 and outcomes.count(True) == 1
    assert CreditLedger.objects.filter(delivery=delivery, transaction_type="CREDIT_CONSUMPTION").count() == 1
    assert balance_of(lead_offer.tenant) == 9
    assert (
        LeadEvent.objects.filter(lead_offer=lead_offer, event_type=LeadEventType.DELIVERY_COMPLETED).count()
        == 1
    )


@pytest.mark.django_db(transaction=True)
def test_concurrent_dispatchers_deliver_everything_once(receiver, settings):
    """Four dispatchers at once over 10 tenants' backlog: every delivery sent once and charged once
    (SKIP LOCKED claims, balance reservations, settles of the same tenants racing each other)."""
    settings.DELIVERY_BATCH_SIZE = 20
    first = [ready_lead(destination_url=receiver.url, credits=50) for _ in range(10)]
    for lead_offer in first:
        for _ in range(11):
            ready_lead(lead_offer.tenant)
    errors: list[BaseException] = []

    def dispatch() -> None:
        try:
            deliveries_dispatch(time_budget_s=30)
        except BaseException as exc:  # noqa: BLE001 — reported below
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=dispatch) for _ in range(4)]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        clear_queue()
    assert errors == []
    assert Delivery.objects.filter(status=DeliveryStatus.DELIVERED).count() == 120
    assert CreditLedger.objects.filter(transaction_type="CREDIT_CONSUMPTION").count() == 120
    webhook_ids = [headers["Webhook-Id"] for headers, _ in receiver.requests]
    assert len(webhook_ids) == len(set(webhook_ids)) == 120
    for lead_offer in first:
        assert balance_of(lead_offer.tenant) == 50 - 12
