"""The kernel's admin: who may log in, users with email login, API tokens, memberships, and the
fast paginator every changelist uses."""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

import pytest
from django.contrib.admin.widgets import RelatedFieldWidgetWrapper
from django.contrib.messages import get_messages
from django.db import connection
from django.forms import BoundField, CheckboxInput, MultiWidget
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from converzia.admin_tools import FastCountPaginator, table_row_estimate
from converzia.models import ApiToken, MembershipStatus, Tenant, TenantMember, TenantStatus, User
from converzia.services import api_token_issue
from converzia.tests.factories import StaffUserFactory, TenantFactory, TenantMemberFactory, UserFactory

pytestmark = pytest.mark.django_db


# --- Helpers (imported by name by the other apps' admin tests) --------------------------------------


def messages_of(response) -> list[str]:
    return [str(message) for message in get_messages(response.wsgi_request)]


def post_action(client, url: str, action: str, pks: Iterable[Any], form: dict[str, Any] | None = None):
    """Run a changelist action on `pks`. Without `form`: as the changelist submits it (an action with
    an intermediate page answers with that page). With `form`: as its intermediate page submits it."""
    data: dict[str, Any] = {"action": action, "_selected_action": [str(pk) for pk in pks]}
    if form is None:
        data["index"] = "0"
    else:
        data.update({"select_across": "0", "apply": "yes", **form})
    return client.post(url, data, follow=True)


def _bound_field_data(bound: BoundField) -> dict[str, Any]:
    value = bound.value()
    widget = bound.field.widget
    if isinstance(widget, RelatedFieldWidgetWrapper):
        widget = widget.widget
    if value is None:
        return {}
    if isinstance(widget, MultiWidget):
        parts = value if isinstance(value, list) else widget.decompress(value)
        return {f"{bound.html_name}_{i}": "" if part is None else str(part) for i, part in enumerate(parts)}
    if isinstance(widget, CheckboxInput):
        return {bound.html_name: "on"} if value else {}
    if isinstance(value, list | tuple):
        return {bound.html_name: [str(item) for item in value]}
    return {bound.html_name: str(value)}


def form_post_data(response) -> dict[str, Any]:
    """What the browser submits for the add/change page in `response` when nothing is edited."""
    data: dict[str, Any] = {}
    for bound in response.context["adminform"].form:
        data.update(_bound_field_data(bound))
    for inline in response.context["inline_admin_formsets"]:
        formset = inline.formset
        for bound in formset.management_form:
            data[bound.html_name] = bound.value()
        for form in formset.initial_forms:
            for bound in form:
                data.update(_bound_field_data(bound))
    return data


# --- Who gets in ------------------------------------------------------------------------------------


def test_anonymous_and_non_staff_users_are_sent_to_the_login_page(client):
    member = UserFactory(is_staff=False)

    anonymous = client.get("/admin/")
    client.force_login(member)
    logged_in = client.get("/admin/")
    listing = client.get(reverse("admin:converzia_tenant_changelist"))

    assert (anonymous.status_code, anonymous["Location"]) == (302, "/admin/login/?next=/admin/")
    assert (logged_in.status_code, logged_in["Location"]) == (302, "/admin/login/?next=/admin/")
    assert listing.status_code == 302
    assert listing["Location"].startswith("/admin/login/")


def test_non_staff_user_cannot_log_in_with_the_right_password(client):
    UserFactory(email="member@example.com", is_staff=False)

    response = client.post(
        "/admin/login/?next=/admin/", {"username": "member@example.com", "password": "pass-word-123"}
    )

    assert response.status_code == 200
    assert "_auth_user_id" not in client.session
    assert response.context["form"].errors["__all__"]


def test_staff_user_logs_in_with_email_in_any_case(client):
    StaffUserFactory(email="ops@converzia.test", is_superuser=True)

    response = client.post(
        "/admin/login/?next=/admin/", {"username": "OPS@Converzia.test", "password": "pass-word-123"}
    )

    assert (response.status_code, response["Location"]) == (302, "/admin/")


# --- Users ------------------------------------------------------------------------------------------


def test_add_user_hashes_the_password_and_lowercases_the_email(admin_client):
    response = admin_client.post(
        reverse("admin:converzia_user_add"),
        {
            "email": "New.Person@Example.com",
            "full_name": "New Person",
            "usable_password": "true",
            "password1": "a-long-Unusual-passphrase-7",
            "password2": "a-long-Unusual-passphrase-7",
        },
    )

    user = User.objects.get(email="new.person@example.com")
    assert response.status_code == 302
    assert response["Location"] == reverse("admin:converzia_user_change", args=[user.pk])
    assert user.full_name == "New Person"
    assert user.password != "a-long-Unusual-passphrase-7"
    assert user.check_password("a-long-Unusual-passphrase-7")
    assert (user.is_staff, user.is_superuser) == (False, False)


def test_add_user_refuses_an_email_that_differs_only_in_case(admin_client):
    UserFactory(email="taken@example.com")

    response = admin_client.post(
        reverse("admin:converzia_user_add"),
        {
            "email": "TAKEN@example.com",
            "usable_password": "true",
            "password1": "a-long-Unusual-passphrase-7",
            "password2": "a-long-Unusual-passphrase-7",
        },
    )

    assert response.status_code == 200
    assert "email" in response.context["adminform"].form.errors
    assert User.objects.filter(email="taken@example.com").count() == 1


def test_change_user_keeps_the_password_hash(admin_client):
    user = UserFactory(email="someone@example.com", full_name="Old")
    hash_before = user.password

    response = admin_client.post(
        reverse("admin:converzia_user_change", args=[user.pk]),
        {
            "email": "someone@example.com",
            "full_name": "New Name",
            "phone": "+5491122334455",
            "is_active": "on",
            "is_staff": "on",
            "memberships-TOTAL_FORMS": "0",
            "memberships-INITIAL_FORMS": "0",
            "memberships-MIN_NUM_FORMS": "0",
            "memberships-MAX_NUM_FORMS": "1000",
        },
    )

    stored = User.objects.get(pk=user.pk)
    assert response.status_code == 302
    assert (stored.full_name, stored.is_staff, stored.password) == ("New Name", True, hash_before)


def test_password_change_page_sets_a_new_hashed_password(admin_client):
    user = UserFactory()

    response = admin_client.post(
        reverse("admin:auth_user_password_change", args=[user.pk]),
        {
            "usable_password": "true",
            "password1": "another-Long-phrase-42",
            "password2": "another-Long-phrase-42",
        },
    )

    assert response.status_code == 302
    assert User.objects.get(pk=user.pk).check_password("another-Long-phrase-42")


# --- API tokens -------------------------------------------------------------------------------------


def test_adding_a_token_shows_the_raw_token_once_and_stores_only_its_digest(admin_client):
    user = UserFactory()

    response = admin_client.post(
        reverse("admin:converzia_apitoken_add"),
        {"user": str(user.pk), "name": "zapier", "expires_at_0": "", "expires_at_1": ""},
        follow=True,
    )

    token = ApiToken.objects.get(user=user)
    shown = [m for m in messages_of(response) if "copy it now" in m]
    assert response.status_code == 200
    assert len(shown) == 1
    raw = re.search(r"cvz_[A-Za-z0-9_\-]+", shown[0]).group(0)
    assert token.key_digest == ApiToken.digest(raw)
    assert token.key_prefix == raw[:12]
    assert (token.name, token.revoked_at) == ("zapier", None)
    # Never again: the token's own page shows the prefix only.
    page = admin_client.get(reverse("admin:converzia_apitoken_change", args=[token.pk]))
    assert raw.encode() not in page.content
    assert token.key_prefix.encode() in page.content


def test_revoke_action_revokes_only_the_selected_tokens(admin_client):
    user = UserFactory()
    selected = api_token_issue(user=user, name="old").token
    kept = api_token_issue(user=user, name="current").token

    response = admin_client.post(
        reverse("admin:converzia_apitoken_changelist"),
        {"action": "revoke_tokens", "_selected_action": [str(selected.pk)], "index": "0"},
        follow=True,
    )

    assert response.status_code == 200
    assert ApiToken.objects.get(pk=selected.pk).revoked_at is not None
    assert ApiToken.objects.get(pk=kept.pk).revoked_at is None
    assert "Revoked 1 token(s)." in messages_of(response)


def test_tokens_cannot_be_deleted(admin_client):
    token = api_token_issue(user=UserFactory()).token

    response = admin_client.post(reverse("admin:converzia_apitoken_delete", args=[token.pk]), {"post": "yes"})

    assert response.status_code == 403
    assert ApiToken.objects.filter(pk=token.pk).exists()


# --- Memberships ------------------------------------------------------------------------------------


def test_member_search_by_email(admin_client):
    wanted = TenantMemberFactory(user=UserFactory(email="findme@example.com"))
    TenantMemberFactory()

    response = admin_client.get(reverse("admin:converzia_tenantmember_changelist"), {"q": "findme@"})

    assert [row.pk for row in response.context["cl"].result_list] == [wanted.pk]


def test_tenant_cannot_be_activated_by_editing_its_status(admin_client):
    tenant = TenantFactory(status=TenantStatus.PENDING)
    TenantMemberFactory(tenant=tenant, status=MembershipStatus.PENDING_APPROVAL)
    url = reverse("admin:converzia_tenant_change", args=[tenant.pk])

    response = admin_client.post(
        url, {**form_post_data(admin_client.get(url)), "status": TenantStatus.ACTIVE}
    )

    assert response.status_code == 200
    assert "Approve" in str(response.context["adminform"].form.errors["status"])
    assert Tenant.objects.get(pk=tenant.pk).status == TenantStatus.PENDING
    assert TenantMember.objects.get(tenant=tenant).status == MembershipStatus.PENDING_APPROVAL


def test_tenant_can_be_suspended_by_editing_its_status(admin_client):
    tenant = TenantFactory(status=TenantStatus.ACTIVE)
    TenantMemberFactory(tenant=tenant)
    url = reverse("admin:converzia_tenant_change", args=[tenant.pk])

    response = admin_client.post(
        url, {**form_post_data(admin_client.get(url)), "status": TenantStatus.SUSPENDED}
    )

    assert response.status_code == 302
    assert Tenant.objects.get(pk=tenant.pk).status == TenantStatus.SUSPENDED


# --- The paginator ----------------------------------------------------------------------------------


def test_paginator_counts_at_most_cap_plus_one_rows():
    TenantFactory.create_batch(3)
    paginator = FastCountPaginator(Tenant.objects.order_by("name"), 1, count_cap=2)

    with CaptureQueriesContext(connection) as captured:
        count = paginator.count

    (sql,) = [q["sql"] for q in captured.captured_queries if "COUNT(" in q["sql"].upper()]
    assert (count, paginator.count_is_capped, paginator.count_is_estimate) == (2, True, False)
    assert re.search(r"SELECT COUNT\(\*\) FROM \(SELECT .* LIMIT 3\)", sql, re.IGNORECASE)
    # The ordering is dropped from the bounded count.
    assert "ORDER BY" not in sql.upper()


def test_paginator_is_exact_below_the_cap():
    TenantFactory.create_batch(3)
    paginator = FastCountPaginator(Tenant.objects.all(), 1, count_cap=10)

    assert (paginator.count, paginator.count_is_capped, paginator.count_is_estimate) == (3, False, False)


def test_paginator_uses_the_planner_estimate_for_an_unfiltered_big_table():
    TenantFactory.create_batch(3)
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE tenants")
    paginator = FastCountPaginator(Tenant.objects.order_by("name"), 1, estimate_above=1)

    with CaptureQueriesContext(connection) as captured:
        count = paginator.count

    assert (count, paginator.count_is_estimate) == (table_row_estimate(Tenant), True)
    assert count == 3
    assert [q["sql"] for q in captured.captured_queries if "COUNT(" in q["sql"].upper()] == []


def test_paginator_never_estimates_a_filtered_list():
    TenantFactory.create_batch(2, status=TenantStatus.ACTIVE)
    TenantFactory(status=TenantStatus.PENDING)
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE tenants")
    paginator = FastCountPaginator(Tenant.objects.filter(status=TenantStatus.PENDING), 1, estimate_above=1)

    assert (paginator.count, paginator.count_is_estimate) == (1, False)


def test_changelist_says_about_when_the_count_is_an_estimate(admin_client, monkeypatch):
    from converzia.admin import ApiTokenAdmin

    for _ in range(3):
        api_token_issue(user=UserFactory())
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE api_tokens")
    monkeypatch.setattr(ApiTokenAdmin, "count_estimate_above", 1)

    response = admin_client.get(reverse("admin:converzia_apitoken_changelist"))

    assert response.status_code == 200
    assert b"about 3 api tokens" in response.content
