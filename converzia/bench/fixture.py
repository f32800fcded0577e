"""What the benchmark measures against: the whale tenant, a ~10k-lead tenant, their owners, a staff
user, the simulated portal users of the session scenarios (owners of the largest tenants, one token
each), and throw-away API tokens for all of them (revoked when the run ends)."""

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
from leads.measure.load import MEASURE_SLUG
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
class SessionUser:
    """One simulated portal user: a tenant's owner with a token of its own."""

    tenant_id: uuid.UUID
    token: str


@dataclass(frozen=True)
class BenchFixture:
    whale: MeasuredTenant
    small: MeasuredTenant
    staff_token: str
    today: dt.date
    session_users: list[SessionUser] = field(default_factory=list)


def _lead_offer_counts() -> list[tuple[uuid.UUID, int]]:
    # The ingestion scenarios' own tenant grows with every run and has no owner: never measured.
    rows = (
        LeadOffer.objects.exclude(tenant_id__in=Tenant.objects.filter(slug=MEASURE_SLUG).values("pk"))
        .values_list("tenant_id")
        .annotate(n=Count("id"))
        .order_by("-n")
    )
    return [(tenant_id, count) for tenant_id, count in rows]


def _owner_or_none(tenant: Tenant) -> User | None:
    member = (
        TenantMember.objects.for_tenant(tenant)
        .filter(role=TenantRole.OWNER, status=MembershipStatus.ACTIVE, user__is_active=True)
        .select_related("user")
        .order_by("created_at")
        .first()
    )
    return None if member is None else member.user


def _owner(tenant: Tenant) -> User:
    owner = _owner_or_none(tenant)
    if owner is None:
        raise BenchDataError(f"Tenant {tenant.slug} has no active OWNER to measure as.")
    return owner


def _session_users(
    counts: list[tuple[uuid.UUID, int]], users: int, issued: list[ApiToken]
) -> list[SessionUser]:
    """`users` tokens spread round-robin over the owners of the largest tenants (at most one tenant
    per user; tenants without an active owner, such as the ingestion measurement's, are passed over)."""
    if users < 1:
        return []
    tenants = Tenant.objects.in_bulk([tenant_id for tenant_id, _ in counts])
    owners: list[tuple[uuid.UUID, User]] = []
    for tenant_id, _ in counts:
        owner = _owner_or_none(tenants[tenant_id])
        if owner is not None:
            owners.append((tenant_id, owner))
        if len(owners) == users:
            break
    if not owners:
        raise BenchDataError("No tenant with leads has an active OWNER to simulate portal users with.")
    sessions = []
    for index in range(users):
        tenant_id, owner = owners[index % len(owners)]
        token = api_token_issue(user=owner, name=TOKEN_NAME)
        issued.append(token.token)
        sessions.append(SessionUser(tenant_id=tenant_id, token=token.raw))
    return sessions


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
def bench_fixture(*, session_users: int = 0) -> Iterator[BenchFixture]:
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
            session_users=_session_users(counts, session_users, issued),
        )
    finally:
        for token in issued:
            api_token_revoke(token=token)
