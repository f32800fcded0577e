"""The cached principal (converzia.principal): bearer requests authenticate and resolve their tenant from
Redis, and every change to a token, user, membership or tenant takes effect on the very next request.
Real PostgreSQL and Redis; the outage is the cache pointed at a closed port."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from typing import Any

import pytest
from django.core.cache import cache
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import include, path
from django.utils import timezone
from rest_framework.permissions import IsAuthenticated
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.test import APIClient

from billing.services import tenant_approve
from converzia import cache as cache_module
from converzia import principal as principal_module
from converzia.api.base import ApiView, TenantApiView
from converzia.api.permissions import IsStaff
from converzia.cache import principal_token_key, principal_version_key
from converzia.models import ApiToken, MembershipStatus, TenantMember, TenantRole, TenantStatus, User
from converzia.principal import MAX_CACHED_MEMBERSHIPS, principal_authenticate
from converzia.services import api_token_issue, api_token_revoke
from converzia.tenancy import Permission
from converzia.tests.factories import StaffUserFactory, TenantFactory, TenantMemberFactory
from converzia.tests.outages import dead_redis_caches

pytestmark = [pytest.mark.django_db, pytest.mark.urls(__name__)]

TENANT_URL = "/api/test/principal/tenant"
USER_URL = "/api/test/principal/user"
STAFF_URL = "/api/test/principal/staff"


class TenantEchoView(TenantApiView):
    required_permission = Permission.MANAGE_BILLING  # OWNER and BILLING only

    def get(self, request: Request) -> Response:
        tenant = self.tenant
        return Response(
            {"tenant_id": str(tenant.pk), "role": request.tenant_context.role, "tenant_name": tenant.name}
        )


class UserEchoView(ApiView):
    permission_classes = (IsAuthenticated,)

    def get(self, request: Request) -> Response:
        user = request.user
        return Response(
            {"id": str(user.pk), "is_staff": user.is_staff, "is_real_user": isinstance(user, User)}
        )


class StaffView(ApiView):
    permission_classes = (IsStaff,)

    def get(self, request: Request) -> Response:
        return Response({})


urlpatterns = [
    path("api/test/principal/tenant", TenantEchoView.as_view()),
    path("api/test/principal/user", UserEchoView.as_view()),
    path("api/test/principal/staff", StaffView.as_view()),
    path("", include("converzia.urls")),
]


@pytest.fixture(autouse=True)
def closed_breaker() -> Iterator[None]:
    cache_module._breaker.open_until = 0.0
    yield
    cache_module._breaker.open_until = 0.0


def bearer(raw: str, tenant: Any = None) -> APIClient:
    client = APIClient()
    headers = {"HTTP_AUTHORIZATION": f"Bearer {raw}"}
    if tenant is not None:
        headers["HTTP_X_TENANT_ID"] = str(tenant.pk)
    client.credentials(**headers)
    return client


def queries_of(client: APIClient, url: str, expected_status: int = 200) -> int:
    with CaptureQueriesContext(connection) as captured:
        response = client.get(url)
    assert response.status_code == expected_status, response.content
    return len(captured.captured_queries)


def warm(client: APIClient, url: str = TENANT_URL) -> None:
    """One request caches the principal; the next costs no query."""
    client.get(url)
    assert queries_of(client, url) == 0


@pytest.fixture
def member() -> TenantMember:
    return TenantMemberFactory(role=TenantRole.OWNER)


@pytest.fixture
def client(member: TenantMember) -> APIClient:
    raw = api_token_issue(user=member.user).raw
    client = bearer(raw)
    client.raw_token = raw  # type: ignore[attr-defined]
    return client


# --- what the cache saves --------------------------------------------------------------------------


def test_cold_then_warm_query_counts(client, member):
    # Before the cache this was 3 on the token's first use (token+user, its last_used_at stamp,
    # membership+tenant) and 2 on every later request.
    # First use: the token's user id (so its version is read before the rows), token+user, the stamp,
    # the ACTIVE memberships with their tenants; all cached.
    assert queries_of(client, TENANT_URL) == 4
    # Warm: authentication and tenant resolution cost no query at all, on any view.
    assert queries_of(client, TENANT_URL) == 0
    assert queries_of(client, USER_URL) == 0
    # A known token whose principal was invalidated: token+user and memberships, as before the cache.
    member.user.save()
    assert queries_of(client, TENANT_URL) == 2
    assert queries_of(client, TENANT_URL) == 0


def cache_operations(monkeypatch) -> list[tuple[str, str]]:
    """Every Redis operation converzia.cache performs, as (operation, key), in order."""
    seen: list[tuple[str, str]] = []
    original = cache_module._cache_call

    def counted(family: str, operation: str, *args: Any, **kwargs: Any) -> Any:
        seen.append((operation, str(args[0]) if args else ""))
        return original(family, operation, *args, **kwargs)

    monkeypatch.setattr(cache_module, "_cache_call", counted)
    return seen


def test_a_warm_request_reads_only_the_users_version_from_redis(client, member, monkeypatch):
    warm(client)
    seen = cache_operations(monkeypatch)
    assert queries_of(client, TENANT_URL) == 0
    assert seen == [("get", principal_version_key(member.user.pk))]


def test_a_stale_process_copy_takes_another_processs_fresh_entry_from_redis(client, member, monkeypatch):
    warm(client)
    digest = ApiToken.digest(client.raw_token)
    stale = principal_module._entries.get(digest)
    member.user.save()  # invalidates: the version changes
    # "Another process" loads and stores the fresh entry; this one still holds the stale copy.
    principal_module._entries.clear()
    assert queries_of(client, TENANT_URL) == 2
    principal_module._entries.put(digest, stale)
    seen = cache_operations(monkeypatch)
    assert queries_of(client, TENANT_URL) == 0, "the fresh entry came from Redis, not the database"
    assert [operation for operation, _ in seen] == ["get", "get"]  # the version, then the entry
    assert principal_module._entries.get(digest)["version"] != stale["version"]


def test_warm_request_user_is_a_real_user_with_the_fields_the_api_reads(client, member):
    warm(client)
    with CaptureQueriesContext(connection) as captured:
        body = client.get(USER_URL).json()
    assert body == {"id": str(member.user.pk), "is_staff": False, "is_real_user": True}
    assert len(captured) == 0


def test_fields_not_cached_are_deferred_and_load_on_access(member):
    raw = api_token_issue(user=member.user).raw
    warm(bearer(raw))

    with CaptureQueriesContext(connection) as captured:
        user = principal_authenticate(raw_token=raw).user
    assert len(captured) == 0
    assert user.get_deferred_fields() >= {"email", "password", "full_name", "last_login"}
    with CaptureQueriesContext(connection) as captured:
        assert user.email == member.user.email
    assert len(captured) == 1


def test_the_raw_token_is_neither_a_key_nor_a_value(member):
    raw = api_token_issue(user=member.user).raw
    warm(bearer(raw))
    keys = [key.decode() for key in cache.client.get_client().keys("*principal*")]
    assert keys
    assert all(raw not in key for key in keys)
    entry = cache.get(principal_token_key(ApiToken.digest(raw)))
    assert raw not in repr(entry)
    assert "password" not in entry["user"] and "email" not in entry["user"]


# --- every change takes effect on the very next request -------------------------------------------


def test_revocation_takes_effect_on_the_next_request(member):
    issued = api_token_issue(user=member.user)
    client = bearer(issued.raw)
    warm(client)

    api_token_revoke(token=issued.token)

    response = client.get(TENANT_URL)
    assert response.status_code == 401
    assert response.json()["error"]["message"] == "This token has been revoked."


def test_deleted_token_is_refused_at_once(member):
    issued = api_token_issue(user=member.user)
    client = bearer(issued.raw)
    warm(client)

    ApiToken.objects.filter(pk=issued.token.pk).delete()

    assert client.get(TENANT_URL).status_code == 401


def test_expiry_is_checked_on_cached_principals(member, monkeypatch):
    issued = api_token_issue(user=member.user, expires_at=timezone.now() + dt.timedelta(seconds=30))
    client = bearer(issued.raw)
    warm(client)

    later = timezone.now() + dt.timedelta(seconds=31)  # within the cache TTL, past the expiry
    monkeypatch.setattr(timezone, "now", lambda: later)

    response = client.get(TENANT_URL)
    assert response.status_code == 401
    assert response.json()["error"]["message"] == "This token has expired."


def test_expiry_moved_earlier_takes_effect_at_once(member):
    issued = api_token_issue(user=member.user)
    client = bearer(issued.raw)
    warm(client)

    token = ApiToken.objects.get(pk=issued.token.pk)
    token.expires_at = timezone.now() - dt.timedelta(seconds=1)
    token.save()

    assert client.get(TENANT_URL).status_code == 401


@pytest.mark.parametrize("bulk", [False, True], ids=["save", "queryset-update"])
def test_user_deactivation_takes_effect_at_once(client, member, bulk):
    warm(client)

    if bulk:
        User.objects.filter(pk=member.user.pk).update(is_active=False)
    else:
        member.user.is_active = False
        member.user.save()

    response = client.get(TENANT_URL)
    assert response.status_code == 401
    assert response.json()["error"]["message"] == "This user account is disabled."


def test_staff_status_change_takes_effect_at_once(client, member):
    warm(client, USER_URL)
    assert client.get(STAFF_URL).status_code == 403

    member.user.is_staff = True
    member.user.save()
    assert client.get(STAFF_URL).status_code == 200
    assert client.get(USER_URL).json()["is_staff"] is True

    User.objects.filter(pk=member.user.pk).update(is_staff=False)
    assert client.get(STAFF_URL).status_code == 403


@pytest.mark.parametrize("bulk", [False, True], ids=["save", "queryset-update"])
def test_role_change_takes_effect_at_once(client, member, bulk):
    warm(client)

    if bulk:
        TenantMember.objects.filter(pk=member.pk).update(role=TenantRole.VIEWER)
    else:
        member.role = TenantRole.VIEWER
        member.save()

    response = client.get(TENANT_URL)
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "forbidden"


@pytest.mark.parametrize("how", ["delete", "revoke", "suspend-bulk"])
def test_a_user_never_acts_for_a_tenant_they_left(member, how):
    other = TenantMemberFactory(user=member.user, role=TenantRole.OWNER)
    raw = api_token_issue(user=member.user).raw
    for tenant in (member.tenant, other.tenant):
        warm(bearer(raw, tenant))

    if how == "delete":
        member.delete()
    elif how == "revoke":
        member.status = MembershipStatus.REVOKED
        member.save()
    else:
        TenantMember.objects.filter(pk=member.pk).update(status=MembershipStatus.SUSPENDED)

    response = bearer(raw, member.tenant).get(TENANT_URL)
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "not_a_member"
    # Without a header, the one membership left is chosen; the other tenant still works.
    assert bearer(raw).get(TENANT_URL).json()["tenant_id"] == str(other.tenant.pk)
    assert bearer(raw, other.tenant).get(TENANT_URL).status_code == 200


def test_membership_added_or_approved_takes_effect_at_once(client, member):
    warm(client)
    pending_tenant = TenantFactory(status=TenantStatus.PENDING)
    TenantMemberFactory(user=member.user, tenant=pending_tenant, status=MembershipStatus.PENDING_APPROVAL)
    assert client.get(TENANT_URL, HTTP_X_TENANT_ID=str(pending_tenant.pk)).status_code == 403

    tenant_approve(tenant=pending_tenant)  # memberships approved by a queryset update

    response = client.get(TENANT_URL, HTTP_X_TENANT_ID=str(pending_tenant.pk))
    assert response.status_code == 200
    assert response.json()["tenant_id"] == str(pending_tenant.pk)
    # Two memberships now: no automatic choice any more.
    assert client.get(TENANT_URL).json()["error"]["code"] == "tenant_required"


@pytest.mark.parametrize("bulk", [False, True], ids=["save", "queryset-update"])
def test_tenant_changes_reach_cached_memberships_at_once(client, member, bulk):
    warm(client)
    tenant = member.tenant

    if bulk:
        type(tenant).objects.filter(pk=tenant.pk).update(name="Renamed", status=TenantStatus.SUSPENDED)
    else:
        tenant.name = "Renamed"
        tenant.status = TenantStatus.SUSPENDED
        tenant.save()

    with CaptureQueriesContext(connection) as captured:
        response = client.get(TENANT_URL)
    assert response.json()["tenant_name"] == "Renamed"
    assert len(captured) == 2  # reloaded: token+user, memberships+tenants


def test_a_change_committed_while_a_request_loads_is_never_cached(client, member):
    """The race the version guards: an entry stored under a version that has since been replaced is
    not trusted, whatever it says."""
    warm(client)
    cache.set(principal_version_key(member.user.pk), "replaced-by-a-concurrent-change")

    assert queries_of(client, TENANT_URL) == 2


def test_an_evicted_version_invalidates_every_entry_of_the_user(client, member):
    warm(client)
    cache.delete(principal_version_key(member.user.pk))

    assert queries_of(client, TENANT_URL) == 2
    assert queries_of(client, TENANT_URL) == 0


def test_principals_are_trusted_for_the_ttl_at_most(client, monkeypatch):
    warm(client)
    later = timezone.now() + dt.timedelta(seconds=cache_module.TTL_PRINCIPAL + 1)
    monkeypatch.setattr(timezone, "now", lambda: later)

    assert queries_of(client, TENANT_URL) == 3  # token+user, its last_used_at stamp, memberships


def test_last_used_at_is_still_stamped_once_a_minute_from_the_cache(member, monkeypatch):
    issued = api_token_issue(user=member.user)
    client = bearer(issued.raw)
    start = timezone.now()

    def at(seconds: float) -> None:
        moment = start + dt.timedelta(seconds=seconds)
        monkeypatch.setattr(timezone, "now", lambda: moment)

    at(0)
    assert queries_of(client, TENANT_URL) == 4  # first use: stamped, cached
    at(30)
    member.user.save()  # invalidated: reloaded at 30 s with the stamp of 0 s (not stale yet)
    assert queries_of(client, TENANT_URL) == 2
    at(70)
    assert queries_of(client, TENANT_URL) == 1  # cached, but the stamp is a minute old: UPDATE only
    assert ApiToken.objects.get(pk=issued.token.pk).last_used_at == start + dt.timedelta(seconds=70)
    at(80)
    assert queries_of(client, TENANT_URL) == 0  # the cached stamp was refreshed with the write


def test_users_with_many_memberships_resolve_from_the_database(member):
    for _ in range(MAX_CACHED_MEMBERSHIPS):
        TenantMemberFactory(user=member.user)
    client = bearer(api_token_issue(user=member.user).raw, member.tenant)
    client.get(TENANT_URL)

    assert queries_of(client, TENANT_URL) == 1  # token cached; the membership by X-Tenant-ID queried
    member.delete()
    assert client.get(TENANT_URL).status_code == 403


def test_staff_naming_a_foreign_tenant_still_works_from_the_cache():
    staff = StaffUserFactory()
    tenant = TenantFactory()
    client = bearer(api_token_issue(user=staff).raw, tenant)
    client.get(TENANT_URL)

    with CaptureQueriesContext(connection) as captured:
        response = client.get(TENANT_URL)
    assert response.status_code == 200
    assert response.json() == {"tenant_id": str(tenant.pk), "role": None, "tenant_name": tenant.name}
    assert len(captured) == 1  # the tenant named, not a membership: read each time


def test_session_authentication_does_not_use_the_cache(member):
    client = APIClient()
    client.force_login(member.user)
    keys_before = set(cache.client.get_client().keys("*principal*"))

    assert queries_of(client, TENANT_URL) >= 2
    assert queries_of(client, TENANT_URL) >= 2
    assert set(cache.client.get_client().keys("*principal*")) == keys_before


# --- Redis unavailable -------------------------------------------------------------------------------


@pytest.fixture
def dead_redis(settings) -> Iterator[dict[str, Any]]:
    dead = dead_redis_caches(settings.CACHES)
    yield dead
    cache.close()


def test_redis_down_authenticates_from_the_database(member, settings, dead_redis):
    issued = api_token_issue(user=member.user)
    client = bearer(issued.raw)
    warm(client)
    settings.CACHES = dead_redis

    assert queries_of(client, TENANT_URL) == 2  # token+user, memberships: as before the cache
    api_token_revoke(token=issued.token)  # the invalidation cannot reach Redis; the write commits
    assert client.get(TENANT_URL).status_code == 401
