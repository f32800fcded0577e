"""Tenant resolution in the base view: once per request, X-Tenant-ID, roles, staff, logging context."""

from __future__ import annotations

import pytest
from django.core.exceptions import ImproperlyConfigured
from django.urls import include, path
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.test import APIClient

from converzia.api.base import TenantApiView, TenantViewSet
from converzia.models import MembershipStatus, TenantRole
from converzia.request_context import tenant_id_var
from converzia.tenancy import Permission
from converzia.tests.factories import TenantMemberFactory

pytestmark = [pytest.mark.django_db, pytest.mark.urls(__name__)]

URL = "/api/test/tenant"


class TenantEchoView(TenantApiView):
    required_permission = Permission.VIEW_LEADS

    def get(self, request: Request) -> Response:
        context = request.tenant_context
        return Response(
            {
                "tenant_id": str(self.tenant.pk),
                "role": context.role,
                "is_staff": context.is_staff,
                "logging_tenant_id": tenant_id_var.get(),
            }
        )


class AnyMemberView(TenantApiView):
    required_permission = None

    def get(self, request: Request) -> Response:
        return Response({"role": request.tenant_context.role})


class UndeclaredView(TenantApiView):
    def get(self, request: Request) -> Response:
        return Response({})


urlpatterns = [
    path("api/test/tenant", TenantEchoView.as_view()),
    path("api/test/any-member", AnyMemberView.as_view()),
    path("", include("converzia.urls")),
]
handler404 = "converzia.views.page_not_found"
handler500 = "converzia.views.server_error"


def error_code(response) -> str:
    return response.json()["error"]["code"]


def test_single_active_membership_is_used_without_a_header(tenant, owner, client_for):
    response = client_for(owner).get(URL)

    assert response.status_code == 200
    assert response.json() == {
        "tenant_id": str(tenant.pk),
        "role": "OWNER",
        "is_staff": False,
        "logging_tenant_id": str(tenant.pk),
    }


def test_inactive_memberships_do_not_count_towards_the_automatic_choice(tenant, other_tenant, client_for):
    user = TenantMemberFactory(tenant=tenant, role=TenantRole.VIEWER).user
    TenantMemberFactory(tenant=other_tenant, user=user, status=MembershipStatus.SUSPENDED)

    response = client_for(user).get(URL)

    assert response.status_code == 200
    assert response.json()["tenant_id"] == str(tenant.pk)


def test_several_memberships_without_header_is_tenant_required(tenant, other_tenant, client_for):
    user = TenantMemberFactory(tenant=tenant).user
    TenantMemberFactory(tenant=other_tenant, user=user)

    response = client_for(user).get(URL)

    assert response.status_code == 400
    assert error_code(response) == "tenant_required"


def test_header_picks_one_of_several_memberships(tenant, other_tenant, client_for):
    user = TenantMemberFactory(tenant=tenant, role=TenantRole.OWNER).user
    TenantMemberFactory(tenant=other_tenant, user=user, role=TenantRole.VIEWER)

    response = client_for(user, other_tenant).get(URL)

    assert response.status_code == 200
    assert response.json()["tenant_id"] == str(other_tenant.pk)
    assert response.json()["role"] == "VIEWER"


def test_user_without_memberships_is_tenant_required(client_for):
    from converzia.tests.factories import UserFactory

    response = client_for(UserFactory()).get(URL)

    assert response.status_code == 400
    assert error_code(response) == "tenant_required"


def test_header_naming_a_foreign_tenant_is_not_a_member(tenant, other_tenant, owner, client_for):
    response = client_for(owner, other_tenant).get(URL)

    assert response.status_code == 403
    assert error_code(response) == "not_a_member"


@pytest.mark.parametrize(
    "status", [MembershipStatus.PENDING_APPROVAL, MembershipStatus.SUSPENDED, MembershipStatus.REVOKED]
)
def test_membership_that_is_not_active_is_not_a_member(status, tenant, client_for):
    user = TenantMemberFactory(tenant=tenant, status=status).user

    response = client_for(user, tenant).get(URL)

    assert response.status_code == 403
    assert error_code(response) == "not_a_member"


@pytest.mark.parametrize("header", ["not-a-uuid", "1234", "{tenant}x"])
def test_malformed_tenant_header_is_invalid_input(header, tenant, owner):
    client = APIClient()
    client.force_authenticate(owner)

    response = client.get(URL, HTTP_X_TENANT_ID=header.format(tenant=tenant.pk))

    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_input"
    assert response.json()["error"]["details"] == {"X-Tenant-ID": ["Not a UUID."]}


def test_staff_may_name_any_tenant(tenant, staff_user, client_for):
    response = client_for(staff_user, tenant).get(URL)

    assert response.status_code == 200
    assert response.json() == {
        "tenant_id": str(tenant.pk),
        "role": None,
        "is_staff": True,
        "logging_tenant_id": str(tenant.pk),
    }


def test_staff_without_header_is_tenant_required(staff_user, client_for):
    response = client_for(staff_user).get(URL)

    assert response.status_code == 400
    assert error_code(response) == "tenant_required"


def test_missing_role_permission_is_forbidden(tenant, make_member, client_for):
    user = make_member(tenant, TenantRole.BILLING)

    response = client_for(user).get(URL)

    assert response.status_code == 403
    assert response.json()["error"]["code"] == "forbidden"
    assert response.json()["error"]["details"] == {"required_permission": "view_leads"}


def test_required_permission_none_admits_any_active_member(tenant, make_member, client_for):
    user = make_member(tenant, TenantRole.BILLING)

    response = client_for(user).get("/api/test/any-member")

    assert response.status_code == 200
    assert response.json() == {"role": "BILLING"}


def test_a_tenant_view_must_declare_its_permission():
    with pytest.raises(ImproperlyConfigured, match="UndeclaredView must declare required_permission"):
        UndeclaredView.as_view()


def test_a_tenant_viewset_may_declare_permissions_per_action():
    class PerActionViewSet(TenantViewSet):
        action_permissions = {"list": Permission.VIEW_LEADS}

    PerActionViewSet.as_view({"get": "list"})
    with pytest.raises(ImproperlyConfigured, match="action_permissions for retrieve"):
        PerActionViewSet.as_view({"get": "retrieve"})


def test_tenant_is_resolved_with_one_query(tenant, owner, django_assert_num_queries):
    client = APIClient()
    client.force_authenticate(owner)

    with django_assert_num_queries(1):
        response = client.get(URL)

    assert response.status_code == 200


def test_unauthenticated_request_never_reaches_tenant_resolution(tenant):
    response = APIClient().get(URL, HTTP_X_TENANT_ID=str(tenant.pk))

    assert response.status_code == 401
    assert response.json()["error"]["code"] == "unauthenticated"


def test_logging_context_is_cleared_after_the_request(tenant, owner, client_for):
    client_for(owner).get(URL)

    assert tenant_id_var.get() is None
