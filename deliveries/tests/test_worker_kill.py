"""A real worker killed with SIGKILL in the middle of a send (TARGETS.md reliability 5).

The receiver holds the first request open; the test kills the worker that sent it, then starts
another. After the lease runs out, the periodic sweep wakes a dispatcher, which sends again with
the same `webhook-id`. The delivery completes once and the tenant is charged once.
"""

from __future__ import annotations

import signal
import threading

import pytest
from standardwebhooks import Webhook
from werkzeug import Request, Response

from billing.models import CreditLedger, TenantCreditBalance
from billing.services import credit_bonus_grant
from deliveries.models import Delivery, DeliveryDestination, DeliveryStatus
from deliveries.services import lead_offer_qualify
from deliveries.tests.factories import DeliveryDestinationFactory
from leads.models import LeadOfferStatus
from leads.tests.factories import LeadOfferFactory
from leads.tests.test_worker import graph, start_worker, wait_until  # noqa: F401 — fixtures used by name

LEASE_S = 2


class HoldFirstReceiver:
    def __init__(self, httpserver) -> None:
        self.requests: list[tuple[dict[str, str], bytes]] = []
        self.first_arrived = threading.Event()
        self.release = threading.Event()
        self.url = httpserver.url_for("/hook")
        httpserver.expect_request("/hook", method="POST").respond_with_handler(self.handle)

    def handle(self, request: Request) -> Response:
        self.requests.append((dict(request.headers), request.get_data()))
        if len(self.requests) == 1:
            self.first_arrived.set()
            self.release.wait(30)
        return Response("ok", status=200)


@pytest.mark.django_db(transaction=True)
def test_worker_killed_mid_send_delivers_once_and_charges_once(start_worker, httpserver, monkeypatch):  # noqa: F811
    monkeypatch.setenv("DELIVERY_LEASE_S", str(LEASE_S))
    receiver = HoldFirstReceiver(httpserver)
    lead_offer = LeadOfferFactory(status=LeadOfferStatus.QUALIFYING)
    credit_bonus_grant(tenant=lead_offer.tenant, amount=3, reason="test")
    DeliveryDestinationFactory(tenant=lead_offer.tenant, url=receiver.url)
    lead_offer_qualify(lead_offer=lead_offer, score_total=99)
    delivery = Delivery.objects.get(lead_offer=lead_offer)

    doomed = start_worker()
    try:
        assert receiver.first_arrived.wait(20), f"the first send never arrived:\n{doomed.log()}"
        doomed.signal(signal.SIGKILL)
        doomed.wait_exit(10)
    finally:
        receiver.release.set()
    assert Delivery.objects.get(pk=delivery.pk).status == DeliveryStatus.PENDING

    survivor = start_worker()
    delivered = wait_until(
        lambda: Delivery.objects.get(pk=delivery.pk).status == DeliveryStatus.DELIVERED, timeout_s=30
    )
    assert delivered, f"not delivered after the kill:\n{survivor.log()}"

    delivery.refresh_from_db()
    assert delivery.attempt_count == 2
    assert len(receiver.requests) == 2
    secret = DeliveryDestination.objects.get(tenant=lead_offer.tenant).secret
    webhook_ids = set()
    for headers, body in receiver.requests:
        Webhook(secret).verify(body, headers)
        webhook_ids.add(headers["Webhook-Id"])
    assert webhook_ids == {f"msg_{delivery.pk.hex}"}, "a repeat carries the same webhook-id"
    assert CreditLedger.objects.filter(delivery=delivery, transaction_type="CREDIT_CONSUMPTION").count() == 1
    assert TenantCreditBalance.objects.get(tenant=lead_offer.tenant).balance == 2
    # Only the surviving send's attempt row exists: the killed one never recorded an outcome.
    assert list(delivery.attempts.values_list("attempt_number", "succeeded")) == [(2, True)]
