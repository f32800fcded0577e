"""Shared pytest fixtures: users, tenants with memberships, and API clients with bearer tokens."""

from __future__ import annotations

import pytest
from rest_framework.test import APIClient

from converzia.models import ApiToken, TenantRole, User


def issue_token(user: User) -> str:
    raw = ApiToken.generate()
    ApiToken.objects.create(user=user, key_prefix=raw[:12], key_digest=ApiToken.digest(raw))
    return raw


@pytest.fixture
def tenant(db):
    from converzia.tests.factories import TenantFactory

    return TenantFactory()


@pytest.fixture
def other_tenant(db):
    from converzia.tests.factories import TenantFactory

    return TenantFactory()


@pytest.fixture
def staff_user(db):
    from converzia.tests.factories import StaffUserFactory

    return StaffUserFactory()


def _member(tenant, role: str) -> User:
    from converzia.tests.factories import TenantMemberFactory

    return TenantMemberFactory(tenant=tenant, role=role).user


@pytest.fixture
def owner(tenant) -> User:
    return _member(tenant, TenantRole.OWNER)


@pytest.fixture
def make_member():
    """`make_member(tenant, role)` → a user with an ACTIVE membership in that role."""
    return _member


@pytest.fixture
def api_client() -> APIClient:
    return APIClient()


@pytest.fixture
def client_for():
    """`client_for(user, tenant=None)` → an APIClient authenticated with a fresh bearer token."""

    def build(user: User, tenant=None) -> APIClient:
        client = APIClient()
        client.credentials(HTTP_AUTHORIZATION=f"Bearer {issue_token(user)}")
        if tenant is not None:
            client.credentials(
                HTTP_AUTHORIZATION=f"Bearer {issue_token(user)}", HTTP_X_TENANT_ID=str(tenant.pk)
            )
        return client

    return build


@pytest.fixture(scope="session")
def _server_preloads_pg_stat_statements(django_db_setup, django_db_blocker) -> bool:
    from django.db import connection

    with django_db_blocker.unblock(), connection.cursor() as cursor:
        cursor.execute("SELECT current_setting('shared_preload_libraries')")
        loaded = {name.strip().strip('"') for name in cursor.fetchone()[0].split(",")}
    return "pg_stat_statements" in loaded


@pytest.fixture
def needs_pg_stat_statements(_server_preloads_pg_stat_statements) -> None:
    """For tests that read pg_stat_statements. `make test` picks a server that preloads it (the
    embedded one when the local server does not); only an explicit DATABASE_URL without the preload
    gets here, and then the skip says why."""
    if not _server_preloads_pg_stat_statements:
        pytest.skip(
            "this DATABASE_URL's server does not preload pg_stat_statements "
            "(shared_preload_libraries); unset DATABASE_URL and `make test` uses one that does"
        )


@pytest.fixture
def receiver():
    """A tenant's webhook receiver: a threaded HTTP server on 127.0.0.1 (slow handlers can overlap)."""
    from pytest_httpserver import HTTPServer

    server = HTTPServer(host="127.0.0.1", port=0, threaded=True)
    server.start()
    yield server
    server.clear()
    server.stop()
