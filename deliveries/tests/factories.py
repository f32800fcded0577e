"""factory_boy factories for destinations, deliveries and attempts."""

from __future__ import annotations

import factory
from django.utils import timezone

from converzia.tests.factories import TenantFactory
from deliveries.models import Delivery, DeliveryAttempt, DeliveryDestination, DeliveryStatus
from leads.models import LeadOfferStatus
from leads.tests.factories import LeadOfferFactory


class DeliveryDestinationFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = DeliveryDestination

    tenant = factory.SubFactory(TenantFactory)
    url = "http://127.0.0.1:9/hook"


class DeliveryFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Delivery

    lead_offer = factory.SubFactory(LeadOfferFactory, status=LeadOfferStatus.LEAD_READY)
    tenant = factory.SelfAttribute("lead_offer.tenant")
    offer = factory.SelfAttribute("lead_offer.offer")
    status = DeliveryStatus.PENDING
    payload = factory.LazyAttribute(
        lambda o: {"lead": {"name": "Test"}, "lead_offer_id": str(o.lead_offer.pk)}
    )

    class Params:
        delivered = factory.Trait(
            status=DeliveryStatus.DELIVERED, delivered_at=factory.LazyFunction(timezone.now)
        )


class DeliveryAttemptFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = DeliveryAttempt

    delivery = factory.SubFactory(DeliveryFactory)
    attempt_number = factory.Sequence(lambda n: n + 1)
    status_code = 500
    duration_ms = 42
