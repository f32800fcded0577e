"""Tenant isolation (decision D10): role permissions, tenant resolution and the one scoping helper.

Every tenant-scoped query starts from `scoped(Model, tenant)` (or `Model.objects.for_tenant(tenant)`),
which refuses to build a queryset without a tenant, so isolation cannot be forgotten.
"""

from __future__ import annotations

import enum
import functools
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

from django.db import DEFAULT_DB_ALIAS, models

from converzia.db.prepared import PreparedQuery

if TYPE_CHECKING:
    from converzia.models import Tenant, User

ModelT = TypeVar("ModelT", bound=models.Model)


class Permission(enum.StrEnum):
    MANAGE_OFFERS = "manage_offers"
    MANAGE_DOCUMENTS = "manage_documents"
    VIEW_LEADS = "view_leads"
    VIEW_LEAD_DETAILS = "view_lead_details"
    MANAGE_BILLING = "manage_billing"
    VIEW_BILLING = "view_billing"
    MANAGE_TEAM = "manage_team"


P = Permission

# DOMAIN.md §2.3, as code: the only place a role's rights are defined.
ROLE_PERMISSIONS: dict[str, frozenset[Permission]] = {
    "OWNER": frozenset(Permission),
    "ADMIN": frozenset(
        {P.MANAGE_OFFERS, P.MANAGE_DOCUMENTS, P.VIEW_LEADS, P.VIEW_LEAD_DETAILS, P.VIEW_BILLING}
    ),
    "BILLING": frozenset({P.MANAGE_BILLING, P.VIEW_BILLING}),
    "VIEWER": frozenset({P.VIEW_LEADS, P.VIEW_BILLING}),
}


def role_has(role: str | None, permission: Permission) -> bool:
    return role is not None and permission in ROLE_PERMISSIONS.get(role, frozenset())


# Tenant status (docs/api.md "Tenant status"), as code: the only place it is decided.
# A tenant in one of these statuses is paused: its members may still read everything they could
# (their leads, stats, billing), but every write answers 403 `tenant_suspended`; its deliveries stay
# due without being attempted or charged, and go out once it is ACTIVE again; ingestion keeps storing
# its leads (nothing is lost while it is paused); staff are not affected. PENDING is not paused: its
# members (ACTIVE only after approval, or added by staff) set the tenant up before it goes live.
# TenantStatus values, spelled out because converzia.models imports this module.
PAUSED_TENANT_STATUSES: frozenset[str] = frozenset({"SUSPENDED", "ARCHIVED"})


def tenant_is_paused(tenant: Tenant) -> bool:
    return tenant.status in PAUSED_TENANT_STATUSES


class TenantScopedQuerySet(models.QuerySet[Any]):
    """QuerySet for models that carry a `tenant` foreign key."""

    def for_tenant(self, tenant: Tenant | uuid.UUID) -> TenantScopedQuerySet:
        from converzia.models import Tenant

        if isinstance(tenant, Tenant):
            tenant_id = tenant.pk
        elif isinstance(tenant, uuid.UUID):
            tenant_id = tenant
        else:
            raise TypeError(f"A tenant-scoped query needs a Tenant or its UUID, not {tenant!r}.")
        return self.filter(tenant_id=tenant_id)


def scoped(model: type[ModelT], tenant: Tenant | uuid.UUID) -> TenantScopedQuerySet:
    """The scoping helper: `model`'s rows that belong to `tenant`, and nothing else."""
    manager = model._default_manager
    if not hasattr(manager, "for_tenant"):
        raise TypeError(f"{model.__name__} is not tenant-scoped.")
    return manager.for_tenant(tenant)


@dataclass(frozen=True)
class TenantContext:
    """Who acts for which tenant in this request. `role` is None for staff acting across tenants."""

    tenant: Tenant
    role: str | None
    is_staff: bool

    def can(self, permission: Permission) -> bool:
        return self.is_staff or role_has(self.role, permission)

    def ensure_may_write(self) -> None:
        """Raise `TenantSuspended` when the tenant is paused (members only read; staff may write)."""
        from converzia.errors import TenantSuspended

        if self.is_staff or not tenant_is_paused(self.tenant):
            return
        status = self.tenant.status
        message = None
        if status == "ARCHIVED":
            message = "Your tenant is archived: you can read its data and billing, but not change anything."
        raise TenantSuspended(message, details={"tenant_status": status})


def resolve_tenant(user: User, tenant_header: str | None) -> TenantContext:
    """Resolve the tenant for a request (API.md "Tenant").

    The caller's only ACTIVE membership, or the one named by `X-Tenant-ID` when the caller has several.
    Staff may name any tenant. Raises `TenantRequired` (several memberships, or staff, and no header)
    or `NotAMember` (the named tenant is not one of the caller's, or the caller has no ACTIVE
    membership at all: naming a tenant would not help them).
    """
    from converzia.errors import InvalidInput
    from converzia.models import TenantMember

    requested_id: uuid.UUID | None = None
    if tenant_header:
        try:
            requested_id = uuid.UUID(tenant_header.strip())
        except ValueError:
            raise InvalidInput(
                "X-Tenant-ID must be a tenant UUID.", details={"X-Tenant-ID": ["Not a UUID."]}
            ) from None

    # A bearer request carries its principal (converzia.principal): its ACTIVE memberships come from
    # the cache, invalidated by any membership, tenant or user change. Otherwise, and for a user with
    # too many memberships to cache, the database answers.
    principal = getattr(user, "_principal", None)
    cached = principal.active_memberships() if principal is not None else None
    if cached is not None:
        if requested_id is not None:
            for member in cached:
                if member.tenant.pk == requested_id:
                    return TenantContext(tenant=member.tenant, role=member.role, is_staff=user.is_staff)
            return _staff_context(user, requested_id)
        if len(cached) == 1:
            return TenantContext(tenant=cached[0].tenant, role=cached[0].role, is_staff=user.is_staff)
        _raise_no_choice(user, memberships=len(cached))

    memberships = TenantMember.objects.active().filter(user=user).select_related("tenant")
    if requested_id is not None:
        membership = memberships.filter(tenant_id=requested_id).first()
        if membership is not None:
            return TenantContext(tenant=membership.tenant, role=membership.role, is_staff=user.is_staff)
        return _staff_context(user, requested_id)

    found = list(memberships[:2])
    if len(found) == 1:
        return TenantContext(tenant=found[0].tenant, role=found[0].role, is_staff=user.is_staff)
    _raise_no_choice(user, memberships=len(found))


def _raise_no_choice(user: User, *, memberships: int) -> NoReturn:
    """No header and not exactly one ACTIVE membership (API.md "Tenant").

    Several memberships: the caller must name one (400 `tenant_required`); so must staff, who may
    name any tenant. None at all: the caller is a member of nothing (403 `not_a_member`).
    """
    from converzia.errors import NotAMember, TenantRequired

    if memberships or user.is_staff:
        raise TenantRequired()
    raise NotAMember("You are not an active member of any tenant.")


def _staff_context(user: User, tenant_id: uuid.UUID) -> TenantContext:
    """Staff acting for a tenant they are not a member of; anyone else is not a member."""
    from converzia.errors import NotAMember

    if not user.is_staff:
        raise NotAMember()
    tenant = tenant_get(tenant_id)
    if tenant is None:
        raise NotAMember("No such tenant.")
    return TenantContext(tenant=tenant, role=None, is_staff=True)


def tenant_get(tenant_id: uuid.UUID) -> Tenant | None:
    """The tenant row by id, or None: a prepared read (staff name a tenant on every request)."""
    from converzia.models import Tenant

    row = _tenant_row_query().first(tenant_id=tenant_id)
    if row is None:
        return None
    return Tenant.from_db(DEFAULT_DB_ALIAS, list(row), list(row.values()))


@functools.cache
def _tenant_row_query() -> PreparedQuery:
    # Built on first use: converzia.models imports this module.
    from converzia.models import Tenant

    names = tuple(field.attname for field in Tenant._meta.concrete_fields)
    return PreparedQuery(
        "tenancy.tenant", lambda *, tenant_id: Tenant.objects.filter(pk=tenant_id).values(*names)
    )
