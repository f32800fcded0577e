"""Schema rules written straight to the database: every named CHECK our models declare, and the unique
keys that mean "exactly one" (the ledger's own are in billing/tests/test_ledger.py)."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import pytest
from django.apps import apps
from django.db import IntegrityError, models, transaction

from billing.models import BillingOrder, PlatformCost, TenantPricing
from billing.tests.factories import BillingOrderFactory, PlatformCostFactory, TenantPricingFactory
from converzia.models import Tenant, TenantMember, User
from converzia.tests.factories import TenantFactory, TenantMemberFactory, UserFactory
from deliveries.models import Delivery
from deliveries.tests.factories import DeliveryFactory
from leads.models import AdOfferMap, InboxChange, InboxEvent, LeadOffer, LeadSource, Offer
from leads.tests.factories import (
    AdOfferMapFactory,
    LeadFactory,
    LeadOfferFactory,
    LeadSourceFactory,
    OfferFactory,
)

OUR_APPS = ("converzia", "leads", "billing", "deliveries", "portal")

# CHECKs exercised in the test files that own their topic.
TESTED_ELSEWHERE = {
    "leads_phone_e164": "leads/tests/test_phones.py",
    "deliveries_delivered_has_timestamp": "deliveries/tests/test_delivery_status.py",
    "credit_ledger_amount_sign_matches_type": "billing/tests/test_ledger.py",
    "credit_ledger_balance_after_non_negative": "billing/tests/test_ledger.py",
    "credit_ledger_charge_has_delivery": "billing/tests/test_ledger.py",
    "tenant_credit_balances_non_negative": "billing/tests/test_ledger.py",
    # Status columns: an UPDATE meets the transition trigger first, so these are tested on INSERT below.
    "lead_offers_status_valid": "test_an_unknown_status_cannot_be_inserted",
    "deliveries_status_valid": "test_an_unknown_status_cannot_be_inserted",
}


def _tenant_slug():
    return Tenant, TenantFactory(), {"slug": "Not A Slug"}


def _tenant_threshold():
    return Tenant, TenantFactory(), {"default_score_threshold": 101}


def _user_email():
    return User, UserFactory(), {"email": "Mixed.Case@Example.com"}


def _offer_prices():
    return Offer, OfferFactory(), {"price_from": Decimal("200"), "price_to": Decimal("100")}


def _lead_offer_score():
    return LeadOffer, LeadOfferFactory(), {"score_total": 101}


def _tenant_status():
    return Tenant, TenantFactory(), {"status": "BOGUS"}


def _member_role():
    return TenantMember, TenantMemberFactory(), {"role": "SUPERUSER"}


def _member_status():
    return TenantMember, TenantMemberFactory(), {"status": "BOGUS"}


def _lead_offer_billing_eligibility():
    return LeadOffer, LeadOfferFactory(), {"billing_eligibility": "MAYBE"}


def _inbox_event_status():
    event = InboxEvent.objects.create(payload={"object": "page", "entry": []})
    return InboxEvent, event, {"status": "LOST"}


def _inbox_change_status():
    event = InboxEvent.objects.create(payload={"object": "page", "entry": []})
    change = InboxChange.objects.create(event=event, position=0, leadgen_id="1")
    return InboxChange, change, {"status": "DROPPED"}


def _order_credits():
    return BillingOrder, BillingOrderFactory(), {"credits_purchased": 0}


def _order_total():
    return BillingOrder, BillingOrderFactory(), {"total": Decimal("-0.01")}


def _order_paid_at():
    return BillingOrder, BillingOrderFactory(), {"status": "completed", "paid_at": None}


def _pricing_cost():
    return TenantPricing, TenantPricingFactory(), {"cost_per_lead": Decimal("-1")}


def _cost_period():
    cost = PlatformCostFactory()
    return PlatformCost, cost, {"date_end": cost.date_start - timedelta(days=1)}


def _cost_spend():
    return PlatformCost, PlatformCostFactory(), {"spend": Decimal("-0.01")}


CASES = {
    "tenants_status_valid": _tenant_status,
    "tenant_members_role_valid": _member_role,
    "tenant_members_status_valid": _member_status,
    "lead_offers_billing_eligibility_valid": _lead_offer_billing_eligibility,
    "webhook_inbox_events_status_valid": _inbox_event_status,
    "webhook_inbox_changes_status_valid": _inbox_change_status,
    "tenants_slug_format": _tenant_slug,
    "tenants_score_threshold_range": _tenant_threshold,
    "users_email_lowercase": _user_email,
    "offers_price_range_ordered": _offer_prices,
    "lead_offers_score_range": _lead_offer_score,
    "billing_orders_credits_positive": _order_credits,
    "billing_orders_total_non_negative": _order_total,
    "billing_orders_completed_has_paid_at": _order_paid_at,
    "tenant_pricing_cost_non_negative": _pricing_cost,
    "platform_costs_period_ordered": _cost_period,
    "platform_costs_spend_non_negative": _cost_spend,
}


@pytest.mark.django_db
@pytest.mark.parametrize("constraint", sorted(CASES))
def test_check_refuses_a_bad_row(constraint):
    model, row, bad_values = CASES[constraint]()
    before = model.objects.filter(pk=row.pk).values().get()
    with pytest.raises(IntegrityError) as caught:
        with transaction.atomic():
            model.objects.filter(pk=row.pk).update(**bad_values)
    assert caught.value.__cause__.diag.constraint_name == constraint
    assert model.objects.filter(pk=row.pk).values().get() == before


def test_every_declared_check_is_tested():
    declared = {
        constraint.name
        for model in apps.get_models()
        if model._meta.app_label in OUR_APPS
        for constraint in model._meta.constraints
        if isinstance(constraint, models.CheckConstraint)
    }
    assert sorted(declared - set(CASES) - set(TESTED_ELSEWHERE)) == []
    assert sorted((set(CASES) | set(TESTED_ELSEWHERE)) - declared) == []


# -- unique keys: "exactly one" rules written straight to the database ----------------------------------


def _insert_violation(build) -> str:
    with pytest.raises(IntegrityError) as caught:
        with transaction.atomic():
            build()
    return caught.value.__cause__.diag.constraint_name


@pytest.mark.django_db
def test_a_leadgen_id_is_stored_once_per_tenant():
    source = LeadSourceFactory(leadgen_id="900000000001")
    other_tenant = TenantFactory()
    assert (
        _insert_violation(lambda: LeadSourceFactory(tenant=source.tenant, leadgen_id="900000000001"))
        == "idx_lead_sources_unique_tenant_leadgen"
    )
    # The same Meta lead may reach another tenant, and sources without a leadgen id never collide.
    LeadSourceFactory(tenant=other_tenant, leadgen_id="900000000001")
    LeadSourceFactory.create_batch(2, tenant=source.tenant, leadgen_id=None)
    assert LeadSource.objects.filter(leadgen_id="900000000001").count() == 2


@pytest.mark.django_db
def test_one_funnel_row_per_lead_and_offer_and_one_unmapped_row_per_lead_and_tenant():
    row = LeadOfferFactory()
    assert (
        _insert_violation(lambda: LeadOfferFactory(lead=row.lead, offer=row.offer, tenant=row.tenant))
        == "lead_offers_lead_offer_tenant_uniq"
    )
    LeadOfferFactory(lead=row.lead, offer=None, tenant=row.tenant, status="PENDING_MAPPING")
    assert (
        _insert_violation(
            lambda: LeadOfferFactory(lead=row.lead, offer=None, tenant=row.tenant, status="PENDING_MAPPING")
        )
        == "idx_lead_offers_unique_unmapped_per_tenant"
    )
    assert LeadOffer.objects.filter(lead=row.lead).count() == 2


@pytest.mark.django_db
def test_an_ad_routes_to_one_tenant_and_a_phone_is_one_lead():
    mapping = AdOfferMapFactory(ad_id="120000000042")
    assert _insert_violation(lambda: AdOfferMapFactory(ad_id="120000000042")) == "idx_ad_offer_map_ad_id"
    assert AdOfferMap.objects.filter(ad_id="120000000042").get() == mapping
    lead = LeadFactory()
    assert _insert_violation(lambda: LeadFactory(phone=lead.phone)) == "leads_phone_key"


@pytest.mark.django_db
def test_one_delivery_per_lead_offer():
    delivery = DeliveryFactory()
    assert (
        _insert_violation(lambda: DeliveryFactory(lead_offer=delivery.lead_offer))
        == "deliveries_lead_offer_id_key"
    )
    assert Delivery.objects.filter(lead_offer=delivery.lead_offer).count() == 1


@pytest.mark.django_db
def test_an_unknown_status_cannot_be_inserted():
    offer = OfferFactory()
    lead = LeadFactory()
    with pytest.raises(IntegrityError) as caught, transaction.atomic():
        LeadOffer.objects.create(tenant=offer.tenant, offer=offer, lead=lead, status="QUALIFIED")
    assert caught.value.__cause__.diag.constraint_name == "lead_offers_status_valid"
    assert not LeadOffer.objects.filter(lead=lead).exists()

    lead_offer = LeadOfferFactory(status="LEAD_READY")
    with pytest.raises(IntegrityError) as caught, transaction.atomic():
        Delivery.objects.create(lead_offer=lead_offer, tenant=lead_offer.tenant, status="SENT", payload={})
    assert caught.value.__cause__.diag.constraint_name == "deliveries_status_valid"
    assert not Delivery.objects.filter(lead_offer=lead_offer).exists()


def test_a_tenant_time_zone_must_be_an_iana_name():
    from django.core.exceptions import ValidationError

    from converzia.models import validate_timezone

    validate_timezone("America/Argentina/Buenos_Aires")
    with pytest.raises(ValidationError, match="Mars/Olympus_Mons"):
        validate_timezone("Mars/Olympus_Mons")
