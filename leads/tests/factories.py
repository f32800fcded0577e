"""factory_boy factories for offers, ad mappings, leads and lead_offers."""

from __future__ import annotations

import factory

from converzia.tests.factories import TenantFactory
from leads.models import (
    AdOfferMap,
    Lead,
    LeadEvent,
    LeadEventType,
    LeadOffer,
    LeadOfferStatus,
    LeadSource,
    Offer,
    OfferStatus,
)


class OfferFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Offer

    tenant = factory.SubFactory(TenantFactory)
    name = factory.Sequence(lambda n: f"Offer {n}")
    slug = factory.Sequence(lambda n: f"offer-{n}")
    status = OfferStatus.ACTIVE


class AdOfferMapFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = AdOfferMap

    tenant = factory.SelfAttribute("offer.tenant")
    offer = factory.SubFactory(OfferFactory)
    ad_id = factory.Sequence(lambda n: f"{120000000000 + n}")


class LeadFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Lead

    phone = factory.Sequence(lambda n: f"+54911{n:08d}")
    first_name = factory.Faker("first_name")
    last_name = factory.Faker("last_name")
    full_name = factory.LazyAttribute(lambda o: f"{o.first_name} {o.last_name}")
    email = factory.Sequence(lambda n: f"lead{n}@example.net")


class LeadSourceFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = LeadSource

    lead = factory.SubFactory(LeadFactory)
    tenant = factory.SubFactory(TenantFactory)
    leadgen_id = factory.Sequence(lambda n: f"{900000000000 + n}")
    ad_id = factory.Sequence(lambda n: f"{120000000000 + n}")


class LeadOfferFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = LeadOffer

    offer = factory.SubFactory(OfferFactory)
    tenant = factory.SelfAttribute("offer.tenant")
    lead = factory.SubFactory(LeadFactory)
    status = LeadOfferStatus.TO_BE_CONTACTED


class LeadEventFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = LeadEvent

    lead_offer = factory.SubFactory(LeadOfferFactory)
    lead = factory.SelfAttribute("lead_offer.lead")
    tenant = factory.SelfAttribute("lead_offer.tenant")
    event_type = LeadEventType.CREATED
