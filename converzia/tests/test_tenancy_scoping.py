"""The tenancy kernel (`converzia.tenancy`): the scoping helper, the role table and tenant resolution."""

from __future__ import annotations

import uuid

import pytest
from django.apps import apps

from converzia.errors import InvalidInput, NotAMember, TenantRequired, TenantSuspended
from converzia.models import MembershipStatus, Tenant, TenantMember, TenantRole, TenantStatus, User
from converzia.tenancy import (
    PAUSED_TENANT_STATUSES,
    ROLE_PERMISSIONS,
    Permission,
    TenantContext,
    resolve_tenant,
    role_has,
    scoped,
)
from converzia.tests.factories import StaffUserFactory, TenantFactory, TenantMemberFactory, UserFactory
from leads.models import Lead, LeadOffer, Offer
from leads.tests.factories import LeadOfferFactory, OfferFactory

OUR_APPS = ("converzia", "leads", "billing", "deliveries", "portal")

# DOMAIN.md §2.3 "Role permissions", copied by hand (✓ = True).
COLUMNS = (
    "manage_offers",
    "manage_documents",
    "view_leads",
    "view_lead_details",
    "manage_billing",
    "view_billing",
    "manage_team",
)
DOMAIN_ROLE_TABLE = {
    "OWNER": (True, True, True, True, True, True, True),
    "ADMIN": (True, True, True, True, False, True, False),
    "BILLING": (False, False, False, False, True, True, False),
    "VIEWER": (False, False, True, False, False, True, False),
}


def test_role_table_equals_the_domain_table():
    assert [permission.value for permission in Permission] == list(COLUMNS)
    assert set(ROLE_PERMISSIONS) == set(TenantRole.values) == set(DOMAIN_ROLE_TABLE)
    actual = {
        role: tuple(role_has(role, Permission(column)) for column in COLUMNS) for role in DOMAIN_ROLE_TABLE
    }
    assert actual == DOMAIN_ROLE_TABLE


@pytest.mark.parametrize("role", [None, "", "SUPERUSER", "owner"])
def test_unknown_or_missing_role_has_nothing(role):
    assert [role_has(role, permission) for permission in Permission] == [False] * len(Permission)


def test_staff_context_can_everything_and_a_role_context_only_its_row():
    tenant = Tenant(name="x", slug="x")
    staff = TenantContext(tenant=tenant, role=None, is_staff=True)
    viewer = TenantContext(tenant=tenant, role=TenantRole.VIEWER, is_staff=False)
    assert all(staff.can(permission) for permission in Permission)
    assert {permission for permission in Permission if viewer.can(permission)} == {
        Permission.VIEW_LEADS,
        Permission.VIEW_BILLING,
    }


@pytest.mark.django_db
def test_scoped_returns_only_the_tenants_rows():
    mine, theirs = OfferFactory(), OfferFactory()
    tenant = mine.tenant
    assert list(scoped(Offer, tenant)) == [mine]
    assert list(scoped(Offer, tenant.pk)) == [mine]
    assert list(Offer.objects.for_tenant(tenant)) == [mine]
    assert list(scoped(Offer, theirs.tenant)) == [theirs]
    assert scoped(Offer, uuid.uuid4()).count() == 0


@pytest.mark.django_db
def test_scoped_composes_with_domain_querysets():
    lead_offer = LeadOfferFactory(status="SCORED")
    LeadOfferFactory(status="SCORED")  # another tenant's
    assert list(scoped(LeadOffer, lead_offer.tenant).in_stage("qualified")) == [lead_offer]


@pytest.mark.django_db
def test_scoped_team_reads():
    member = TenantMemberFactory()
    TenantMemberFactory()  # another tenant's
    assert list(scoped(TenantMember, member.tenant).active()) == [member]


@pytest.mark.parametrize("tenant", [None, "", "6f1c1c8e-0000-4000-8000-000000000000", 1])
def test_a_query_without_a_real_tenant_is_refused(tenant):
    with pytest.raises(TypeError):
        scoped(Offer, tenant)
    with pytest.raises(TypeError):
        Offer.objects.for_tenant(tenant)


@pytest.mark.parametrize("model", [Lead, Tenant, User])
def test_global_models_cannot_be_scoped(model):
    # A lead is a person shared by tenants; tenants see it only through their lead_offers.
    with pytest.raises(TypeError, match="is not tenant-scoped"):
        scoped(model, Tenant(name="x", slug="x"))


def test_every_model_with_a_tenant_foreign_key_can_be_scoped():
    unscoped = sorted(
        model._meta.label
        for model in apps.get_models()
        if model._meta.app_label in OUR_APPS
        and any(field.name == "tenant" and field.is_relation for field in model._meta.get_fields())
        and not hasattr(model._default_manager, "for_tenant")
    )
    assert unscoped == []


# -- tenant resolution ---------------------------------------------------------------------------------


@pytest.mark.django_db
def test_single_active_membership_resolves_without_header():
    member = TenantMemberFactory(role=TenantRole.BILLING)
    context = resolve_tenant(member.user, None)
    assert (context.tenant, context.role, context.is_staff) == (member.tenant, TenantRole.BILLING, False)


@pytest.mark.django_db
def test_several_memberships_need_the_header():
    user = UserFactory()
    first = TenantMemberFactory(user=user, role=TenantRole.OWNER)
    second = TenantMemberFactory(user=user, role=TenantRole.VIEWER)
    with pytest.raises(TenantRequired):
        resolve_tenant(user, None)
    assert resolve_tenant(user, str(second.tenant_id)).role == TenantRole.VIEWER
    assert resolve_tenant(user, f"  {first.tenant_id} ").role == TenantRole.OWNER


@pytest.mark.django_db
@pytest.mark.parametrize(
    "status", [MembershipStatus.PENDING_APPROVAL, MembershipStatus.SUSPENDED, MembershipStatus.REVOKED]
)
def test_only_an_active_membership_grants_access(status):
    member = TenantMemberFactory(status=status)
    # Without an ACTIVE membership there is nothing to choose: not a member (API.md "Tenant").
    with pytest.raises(NotAMember):
        resolve_tenant(member.user, None)
    with pytest.raises(NotAMember):
        resolve_tenant(member.user, str(member.tenant_id))


@pytest.mark.django_db
def test_another_tenant_is_not_reachable_by_header():
    member = TenantMemberFactory()
    with pytest.raises(NotAMember):
        resolve_tenant(member.user, str(TenantFactory().pk))
    with pytest.raises(InvalidInput):
        resolve_tenant(member.user, "not-a-uuid")


@pytest.mark.django_db
def test_staff_may_name_any_existing_tenant():
    staff = StaffUserFactory()
    tenant = TenantFactory()
    context = resolve_tenant(staff, str(tenant.pk))
    assert (context.tenant, context.role, context.is_staff) == (tenant, None, True)
    with pytest.raises(NotAMember):
        resolve_tenant(staff, str(uuid.uuid4()))
    with pytest.raises(TenantRequired):
        resolve_tenant(staff, None)


# -- tenant status -------------------------------------------------------------------------------------


def test_paused_statuses_are_tenant_statuses():
    assert PAUSED_TENANT_STATUSES == {TenantStatus.SUSPENDED, TenantStatus.ARCHIVED}
    assert PAUSED_TENANT_STATUSES <= set(TenantStatus.values)


@pytest.mark.parametrize("status", TenantStatus.values)
@pytest.mark.parametrize("is_staff", [False, True], ids=["member", "staff"])
def test_only_members_of_a_paused_tenant_may_not_write(status, is_staff):
    context = TenantContext(tenant=Tenant(status=status), role=TenantRole.OWNER, is_staff=is_staff)
    if status in PAUSED_TENANT_STATUSES and not is_staff:
        with pytest.raises(TenantSuspended) as raised:
            context.ensure_may_write()
        assert raised.value.http_status == 403
        assert raised.value.details == {"tenant_status": status}
    else:
        context.ensure_may_write()
