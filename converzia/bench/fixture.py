"""What the benchmark measures against: the whale tenant, a ~10k-lead tenant, their owners, a staff
user, and throw-away API tokens for them (revoked when the run ends)."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from django.db.models import Count
from django.utils import timezone

from converzia.api.pagination import cursor_after
from converzia.models import ApiToken, MembershipStatus, Tenant, TenantMember, TenantRole, User
from converzia.services import api_token_issue, api_token_revoke
from leads.models import LeadOffer

TOKEN_NAME = "bench"
# A "10k-lead tenant" per TARGETS.md: the tenant whose lead_offer count is nearest to this.
SMALL_TENANT_LEADS = 10_000
# Depths (rows before the page) at which the deep-page scenario jumps into the whale's list.
DEEP_PAGE_DEPTHS = (1_000, 10_000, 100_000, 400_000)
LEADS_ORDERING = ("-updated_at", "-id")


class BenchDataError(Exception):
    """The database does not hold what the benchmark needs (for example, no tenant with leads)."""


@dataclass(frozen=True)
class MeasuredTenant:
    tenant: Tenant
    lead_offers: int
    owner_token: str
    top_offer_id: uuid.UUID | None
    lead_offer_ids: list[uuid.UUID] = field(default_factory=list)
    deep_cursors: dict[int, str] = field(default_factory=dict)  # depth -> cursor


@dataclass(frozen=True)
class BenchFixture:
    whale: MeasuredTenant
    small: MeasuredTenant
    staff_token: str
    today: dt.date


def _lead_offer_counts() -> list[tuple[uuid.UUID, int]]:
    rows = LeadOffer.objects.values_list("tenant_id").annotate(n=Count("id")).order_by("-n")
    return [(tenant_id, count) for tenant_id, count in rows]


def _owner(tenant: Tenant) -> User:
    member = (
        TenantMember.objects.for_tenant(tenant)
        .filter(role=TenantRole.OWNER, status=MembershipStatus.ACTIVE, user__is_active=True)
        .select_related("user")
        .order_by("created_at")
        .first()
    )
    if member is None:
        raise BenchDataError(f"Tenant {tenant.slug} has no active OWNER to measure as.")
    return member.user


def _deep_cursors(tenant: Tenant, total: int, depths: tuple[int, ...]) -> dict[int, str]:
    cursors = {}
    for depth in depths:
        if depth >= total:
            continue
        # OFFSET once, at set-up only: the measured requests jump there with a keyset cursor.
        row = (
            LeadOffer.objects.for_tenant(tenant)
            .order_by(*LEADS_ORDERING)
            .values("updated_at", "id")[depth - 1 : depth]
            .first()
        )
        if row is not None:
            cursors[depth] = cursor_after(LeadOffer, LEADS_ORDERING, row)
    return cursors


def _measured(tenant: Tenant, count: int, issued: list[ApiToken], *, deep: bool) -> MeasuredTenant:
    token = api_token_issue(user=_owner(tenant), name=TOKEN_NAME)
    issued.append(token.token)
    top_offer = (
        LeadOffer.objects.for_tenant(tenant)
        .exclude(offer_id=None)
        .values_list("offer_id")
        .annotate(n=Count("id"))
        .order_by("-n")
        .first()
    )
    # A spread of lead_offers for the detail scenario: every 997th of the newest rows.
    sample_ids = list(
        LeadOffer.objects.for_tenant(tenant)
        .order_by(*LEADS_ORDERING)
        .values_list("id", flat=True)[:99_700:997]
    )
    return MeasuredTenant(
        tenant=tenant,
        lead_offers=count,
        owner_token=token.raw,
        top_offer_id=top_offer[0] if top_offer else None,
        lead_offer_ids=sample_ids,
        deep_cursors=_deep_cursors(tenant, count, DEEP_PAGE_DEPTHS) if deep else {},
    )


@contextmanager
def bench_fixture() -> Iterator[BenchFixture]:
    counts = _lead_offer_counts()
    if not counts:
        raise BenchDataError("No lead_offers: load a dataset first (manage.py seed_demo).")
    whale_id, whale_count = counts[0]
    small_id, small_count = min(counts, key=lambda row: abs(row[1] - SMALL_TENANT_LEADS))
    staff = User.objects.filter(is_staff=True, is_active=True).order_by("date_joined").first()
    if staff is None:
        raise BenchDataError("No active staff user: seed_demo creates one, or run createsuperuser.")
    issued: list[ApiToken] = []
    try:
        staff_token = api_token_issue(user=staff, name=TOKEN_NAME)
        issued.append(staff_token.token)
        tenants = Tenant.objects.in_bulk([whale_id, small_id])
        yield BenchFixture(
            whale=_measured(tenants[whale_id], whale_count, issued, deep=True),
            small=_measured(tenants[small_id], small_count, issued, deep=False),
            staff_token=staff_token.raw,
            today=timezone.localdate(),
        )
    finally:
        for token in issued:
            api_token_revoke(token=token)
