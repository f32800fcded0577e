"""Tenant approval and rejection (DOMAIN.md §2.3 "Membership rules"), done in one transaction here."""

from __future__ import annotations

from decimal import Decimal

import pytest

from billing.models import (
    ChargeModel,
    CreditLedger,
    CreditTransactionType,
    TenantCreditBalance,
    TenantPricing,
    default_packages,
)
from billing.services import tenant_approve, tenant_reject
from billing.tests.factories import TenantPricingFactory
from converzia.models import MembershipStatus, Tenant, TenantMember, TenantRole, TenantStatus
from converzia.tests.factories import StaffUserFactory, TenantFactory, TenantMemberFactory

pytestmark = pytest.mark.django_db


def pending_tenant_with_owner() -> tuple[Tenant, TenantMember]:
    tenant = TenantFactory(status=TenantStatus.PENDING)
    owner = TenantMemberFactory(
        tenant=tenant, role=TenantRole.OWNER, status=MembershipStatus.PENDING_APPROVAL
    )
    return tenant, owner


def test_approval_activates_tenant_and_owner_and_sets_up_billing():
    tenant, owner = pending_tenant_with_owner()
    staff = StaffUserFactory()

    result = tenant_approve(tenant=tenant, actor=staff)

    stored = Tenant.objects.get(pk=tenant.pk)
    assert stored.status == TenantStatus.ACTIVE
    assert stored.activated_at is not None
    assert (stored.trial_credits_granted, stored.trial_credits_amount, stored.trial_granted_by_id) == (
        True,
        5,
        staff.pk,
    )
    # The returned object is what the API serialises: it must not be stale.
    assert (result.status, result.trial_credits_granted, result.trial_credits_amount) == (
        TenantStatus.ACTIVE,
        True,
        5,
    )

    member = TenantMember.objects.get(pk=owner.pk)
    assert (member.status, member.approved_by_id) == (MembershipStatus.ACTIVE, staff.pk)
    assert member.approved_at is not None

    pricing = TenantPricing.objects.get(tenant=tenant)
    assert (pricing.charge_model, pricing.cost_per_lead, pricing.currency, pricing.default_trial_credits) == (
        ChargeModel.PER_LEAD,
        Decimal("10.00"),
        "USD",
        5,
    )
    assert pricing.packages == default_packages()
    assert [(p["id"], p["credits"], p["price"]) for p in pricing.packages] == [
        ("starter", 50, 400),
        ("growth", 100, 700),
        ("scale", 250, 1500),
    ]

    entry = CreditLedger.objects.get(tenant=tenant)
    assert (entry.transaction_type, entry.amount, entry.balance_after, entry.created_by_id) == (
        CreditTransactionType.CREDIT_BONUS,
        5,
        5,
        staff.pk,
    )
    balance = TenantCreditBalance.objects.get(tenant=tenant)
    assert (balance.balance, balance.total_bonus) == (5, 5)


def test_approving_twice_grants_the_trial_once():
    tenant, _ = pending_tenant_with_owner()
    first = tenant_approve(tenant=tenant, actor=StaffUserFactory())
    activated_at = Tenant.objects.get(pk=tenant.pk).activated_at

    second = tenant_approve(tenant=first, actor=StaffUserFactory())

    assert CreditLedger.objects.filter(tenant=tenant).count() == 1
    assert TenantCreditBalance.objects.get(tenant=tenant).balance == 5
    assert TenantPricing.objects.filter(tenant=tenant).count() == 1
    assert second.activated_at == activated_at
    assert Tenant.objects.get(pk=tenant.pk).activated_at == activated_at


def test_approval_keeps_existing_pricing_and_uses_its_trial_amount():
    tenant, _ = pending_tenant_with_owner()
    TenantPricingFactory(tenant=tenant, cost_per_lead=Decimal("25.00"), default_trial_credits=8)
    tenant_approve(tenant=tenant)
    pricing = TenantPricing.objects.get(tenant=tenant)
    assert (pricing.cost_per_lead, pricing.default_trial_credits) == (Decimal("25.00"), 8)
    assert TenantCreditBalance.objects.get(tenant=tenant).balance == 8


def test_approval_leaves_other_memberships_and_tenants_alone():
    tenant, _ = pending_tenant_with_owner()
    suspended = TenantMemberFactory(tenant=tenant, status=MembershipStatus.SUSPENDED)
    other_tenant, other_owner = pending_tenant_with_owner()

    tenant_approve(tenant=tenant)

    assert TenantMember.objects.get(pk=suspended.pk).status == MembershipStatus.SUSPENDED
    assert TenantMember.objects.get(pk=other_owner.pk).status == MembershipStatus.PENDING_APPROVAL
    assert Tenant.objects.get(pk=other_tenant.pk).status == TenantStatus.PENDING
    assert CreditLedger.objects.filter(tenant=other_tenant).count() == 0


def test_rejection_revokes_pending_members_only():
    tenant, owner = pending_tenant_with_owner()
    active = TenantMemberFactory(tenant=tenant, status=MembershipStatus.ACTIVE)
    before_updated_at = TenantMember.objects.get(pk=owner.pk).updated_at

    tenant_reject(tenant=tenant, reason="no website", actor=StaffUserFactory())

    stored = Tenant.objects.get(pk=tenant.pk)
    assert (stored.status, stored.rejected_reason, stored.trial_credits_granted) == (
        TenantStatus.PENDING,
        "no website",
        False,
    )
    assert stored.rejected_at is not None
    revoked = TenantMember.objects.get(pk=owner.pk)
    assert (revoked.status, revoked.rejected_reason, revoked.rejected_at) == (
        MembershipStatus.REVOKED,
        "no website",
        stored.rejected_at,
    )
    assert revoked.updated_at > before_updated_at
    assert TenantMember.objects.get(pk=active.pk).status == MembershipStatus.ACTIVE
    assert CreditLedger.objects.filter(tenant=tenant).count() == 0
    assert TenantPricing.objects.filter(tenant=tenant).count() == 0


def test_approval_after_rejection_clears_the_rejection():
    tenant, _ = pending_tenant_with_owner()
    tenant_reject(tenant=tenant, reason="incomplete")
    tenant_approve(tenant=tenant)
    stored = Tenant.objects.get(pk=tenant.pk)
    assert (stored.status, stored.rejected_at, stored.rejected_reason) == (TenantStatus.ACTIVE, None, "")
