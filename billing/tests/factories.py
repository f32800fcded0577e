"""factory_boy factories for pricing and orders. Ledger rows are written only through services."""

from __future__ import annotations

from decimal import Decimal

import factory

from billing.models import BillingOrder, PlatformCost, TenantPricing
from converzia.tests.factories import TenantFactory


class TenantPricingFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = TenantPricing
        django_get_or_create = ("tenant",)

    tenant = factory.SubFactory(TenantFactory)
    cost_per_lead = Decimal("10.00")


class BillingOrderFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = BillingOrder

    tenant = factory.SubFactory(TenantFactory)
    order_number = factory.Sequence(lambda n: f"2026-{n:06d}")
    credits_purchased = 50
    subtotal = Decimal("400.00")
    total = Decimal("400.00")


class PlatformCostFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = PlatformCost

    tenant = factory.SubFactory(TenantFactory)
    ad_id = factory.Sequence(lambda n: f"{120000000000 + n}")
    spend = Decimal("100.00")
    leads_raw = 10
    date_start = factory.Faker("date_this_year")
    date_end = factory.SelfAttribute("date_start")
