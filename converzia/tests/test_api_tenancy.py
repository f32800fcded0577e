"""Tenant resolution in the base view: once per request, X-Tenant-ID, roles, staff, logging context."""

from __future__ import annotations

import pytest
from django.core.exceptions import ImproperlyConfigured
from django.urls import include, path
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.test import APIClient, APIRequestFactory, force_authenticate

from converzia.api.base import TenantApiView, TenantViewSet
from converzia.models import MembershipStatus, TenantRole, TenantStatus
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


class AnyMemberWriteView(TenantApiView):
    required_permission = None

    def get(self, request: Request) -> Response:
        return Response({"read": True})

    def post(self, request: Request) -> Response:
        return Response({"written": True})


class UndeclaredView(TenantApiView):
    def get(self, request: Request) -> Response:
        return Response({})


urlpatterns = [
    path("api/test/tenant", TenantEchoView.as_view()),
    path("api/test/any-member", AnyMemberView.as_view()),
    path("api/test/any-member-write", AnyMemberWriteView.as_view()),
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


def test_user_without_memberships_is_not_a_member(client_for):
    from converzia.tests.factories import UserFactory

    response = client_for(UserFactory()).get(URL)

    # API.md "Tenant": `tenant_required` is for a caller who must choose among several; a caller
    # with no ACTIVE membership has nothing to choose, and no header would help.
    assert response.status_code == 403
    assert error_code(response) == "not_a_member"


@pytest.mark.parametrize(
    "status", [MembershipStatus.PENDING_APPROVAL, MembershipStatus.SUSPENDED, MembershipStatus.REVOKED]
)
def test_only_inactive_memberships_without_header_is_not_a_member(status, tenant, client_for):
    user = TenantMemberFactory(tenant=tenant, status=status).user

    response = client_for(user).get(URL)

    assert response.status_code == 403
    assert error_code(response) == "not_a_member"


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


@pytest.mark.parametrize("status", [TenantStatus.SUSPENDED, TenantStatus.ARCHIVED])
def test_any_tenant_view_refuses_writes_of_a_paused_tenants_members(status, tenant, make_member, client_for):
    """The base view, not each view: even a view open to any member refuses a paused tenant's writes."""
    tenant.status = status
    tenant.save(update_fields=["status", "updated_at"])
    client = client_for(make_member(tenant, TenantRole.OWNER))

    read = client.get("/api/test/any-member-write")
    write = client.post("/api/test/any-member-write")

    assert read.status_code == 200
    assert write.status_code == 403
    assert write.json()["error"]["code"] == "tenant_suspended"
    assert write.json()["error"]["details"] == {"tenant_status": status}
    assert "/api/test/any-member-write" not in write.json()["error"]["message"]


def test_staff_may_write_for_a_paused_tenant(tenant, staff_user, client_for):
    tenant.status = TenantStatus.SUSPENDED
    tenant.save(update_fields=["status", "updated_at"])

    response = client_for(staff_user, tenant).post("/api/test/any-member-write")

    assert response.status_code == 200


class MixedViewSet(TenantViewSet):
    """A route whose methods need different permissions (like the delivery destination)."""

    action_permissions = {"retrieve": Permission.VIEW_LEADS, "update": Permission.MANAGE_OFFERS}

    def retrieve(self, request: Request) -> Response:
        return Response({})

    def update(self, request: Request) -> Response:
        return Response({})


@pytest.mark.parametrize(
    ("role", "status_code"),
    [(TenantRole.OWNER, 200), (TenantRole.VIEWER, 200), (TenantRole.BILLING, 403)],
)
def test_options_needs_the_permission_of_one_of_the_routes_methods(role, status_code, tenant, make_member):
    request = APIRequestFactory().options("/api/test/mixed")
    force_authenticate(request, user=make_member(tenant, role))

    response = MixedViewSet.as_view({"get": "retrieve", "put": "update"})(request)

    assert response.status_code == status_code, response.data
    if status_code == 200:
        assert response.data["methods"] == ["GET", "PUT", "HEAD", "OPTIONS"]
    else:
        # The refusal of the route's first method, GET.
        assert response.data["error"]["details"] == {"required_permission": "view_leads"}
