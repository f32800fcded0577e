"""The billing admin: tenant approval and credit actions through the services, the order action,
and the ledger and balances that staff can read but never write."""

from __future__ import annotations

from decimal import Decimal

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from billing.models import (
    BillingOrder,
    BillingOrderStatus,
    CreditAlert,
    CreditLedger,
    CreditTransactionType,
    TenantCreditBalance,
    TenantPricing,
)
from billing.services import credit_adjust, credit_bonus_grant, trial_credits_grant
from billing.tests.factories import BillingOrderFactory
from converzia.models import MembershipStatus, Tenant, TenantMember, TenantRole, TenantStatus
from converzia.tests.factories import TenantFactory, TenantMemberFactory
from converzia.tests.test_admin import messages_of, post_action

pytestmark = pytest.mark.django_db

T = CreditTransactionType
TENANTS = reverse("admin:converzia_tenant_changelist")
ORDERS = reverse("admin:billing_billingorder_changelist")


def balance_of(tenant: Tenant) -> tuple[int, int, int, int]:
    row = TenantCreditBalance.objects.get(tenant=tenant)
    return row.balance, row.total_purchased, row.total_bonus, row.total_adjusted


def ledger_of(tenant: Tenant) -> list[tuple[str, int, int]]:
    return list(
        CreditLedger.objects.filter(tenant=tenant)
        .order_by("created_at", "id")
        .values_list("transaction_type", "amount", "balance_after")
    )


@pytest.fixture
def pending_tenant() -> Tenant:
    tenant = TenantFactory(status=TenantStatus.PENDING, name="Acme Homes")
    TenantMemberFactory(tenant=tenant, role=TenantRole.OWNER, status=MembershipStatus.PENDING_APPROVAL)
    TenantMemberFactory(tenant=tenant, role=TenantRole.VIEWER, status=MembershipStatus.PENDING_APPROVAL)
    return tenant


@pytest.fixture
def funded_tenant(admin_user) -> Tenant:
    tenant = TenantFactory(name="Funded")
    credit_bonus_grant(tenant=tenant, amount=10, reason="setup", actor=admin_user)
    return tenant


# --- Approval ---------------------------------------------------------------------------------------


def test_approve_action_activates_tenant_members_pricing_and_trial_credits(
    admin_client, admin_user, pending_tenant
):
    response = post_action(admin_client, TENANTS, "approve_tenants", [pending_tenant.pk])

    tenant = Tenant.objects.get(pk=pending_tenant.pk)
    assert response.status_code == 200
    assert tenant.status == TenantStatus.ACTIVE
    assert (tenant.trial_credits_granted, tenant.trial_credits_amount, tenant.trial_granted_by_id) == (
        True,
        5,
        admin_user.pk,
    )
    members = TenantMember.objects.filter(tenant=tenant)
    assert sorted(members.values_list("status", "approved_by_id")) == [
        (MembershipStatus.ACTIVE, admin_user.pk),
        (MembershipStatus.ACTIVE, admin_user.pk),
    ]
    assert TenantPricing.objects.filter(tenant=tenant).count() == 1
    assert ledger_of(tenant) == [(T.CREDIT_BONUS, 5, 5)]
    assert CreditLedger.objects.get(tenant=tenant).created_by_id == admin_user.pk
    assert balance_of(tenant) == (5, 0, 5, 0)
    assert "Approved 1 tenant(s): Acme Homes." in messages_of(response)


def test_tenant_page_offers_the_actions_as_buttons(admin_client, pending_tenant):
    response = admin_client.get(reverse("admin:converzia_tenant_change", args=[pending_tenant.pk]))

    assert response.status_code == 200
    for action in ("approve_tenants", "record_credit_purchase", "grant_bonus_credits", "adjust_credits"):
        assert f'name="action" value="{action}"'.encode() in response.content


def test_tenant_page_buttons_post_the_action_for_that_tenant(admin_client, pending_tenant):
    # What the page's "Approve" and "Record purchase" buttons submit: the action and this tenant, no index.
    button = {"action": "approve_tenants", "_selected_action": str(pending_tenant.pk), "select_across": "0"}

    approved = admin_client.post(TENANTS, button, follow=True)
    purchase_form = admin_client.post(TENANTS, {**button, "action": "record_credit_purchase"})

    assert approved.status_code == 200
    assert Tenant.objects.get(pk=pending_tenant.pk).status == TenantStatus.ACTIVE
    assert purchase_form.status_code == 200
    assert purchase_form.templates[0].name == "admin/converzia/action_form.html"
    assert BillingOrder.objects.count() == 0


def test_reject_action_requires_a_reason_then_revokes_pending_members(admin_client, pending_tenant):
    page = post_action(admin_client, TENANTS, "reject_tenants", [pending_tenant.pk])
    blank = post_action(admin_client, TENANTS, "reject_tenants", [pending_tenant.pk], {"reason": "   "})
    unchanged = Tenant.objects.get(pk=pending_tenant.pk).rejected_at

    response = post_action(
        admin_client, TENANTS, "reject_tenants", [pending_tenant.pk], {"reason": "Not a real estate company"}
    )

    assert page.status_code == 200
    assert blank.status_code == 200
    assert blank.context["form"].errors == {"reason": ["This field is required."]}
    assert unchanged is None
    tenant = Tenant.objects.get(pk=pending_tenant.pk)
    assert tenant.rejected_reason == "Not a real estate company"
    assert tenant.rejected_at is not None
    assert set(TenantMember.objects.filter(tenant=tenant).values_list("status", flat=True)) == {
        MembershipStatus.REVOKED
    }
    assert "Rejected 1 tenant(s)." in messages_of(response)


def test_trial_credits_are_granted_once(admin_client, admin_user):
    tenant = TenantFactory()
    trial_credits_grant(tenant=tenant, actor=admin_user)

    response = post_action(admin_client, TENANTS, "grant_trial_credits", [tenant.pk])

    assert response.status_code == 200
    assert ledger_of(tenant) == [(T.CREDIT_BONUS, 5, 5)]
    assert f"{tenant}: This tenant has already received its trial credits." in messages_of(response)


# --- Credits ----------------------------------------------------------------------------------------


def test_record_purchase_creates_a_completed_order_and_credits_it(admin_client, admin_user):
    tenant = TenantFactory()

    page = post_action(admin_client, TENANTS, "record_credit_purchase", [tenant.pk])
    response = post_action(
        admin_client,
        TENANTS,
        "record_credit_purchase",
        [tenant.pk],
        {
            "credits": "100",
            "total": "700.00",
            "currency": "usd",
            "package_name": "Growth",
            "payment_reference": "TRX-42",
        },
    )

    assert page.status_code == 200
    assert page.templates[0].name == "admin/converzia/action_form.html"
    order = BillingOrder.objects.get(tenant=tenant)
    assert (order.status, order.credits_purchased, order.total, order.currency) == (
        BillingOrderStatus.COMPLETED,
        100,
        Decimal("700.00"),
        "USD",
    )
    assert (order.package_name, order.payment_reference, order.created_by_id) == (
        "Growth",
        "TRX-42",
        admin_user.pk,
    )
    assert order.paid_at is not None
    entry = CreditLedger.objects.get(tenant=tenant)
    assert (entry.transaction_type, entry.amount, entry.balance_after, entry.billing_order_id) == (
        T.CREDIT_PURCHASE,
        100,
        100,
        order.pk,
    )
    assert balance_of(tenant) == (100, 100, 0, 0)
    assert f"{tenant}: order {order.order_number} recorded, +100 credits; balance 100." in messages_of(
        response
    )


def test_record_purchase_refuses_more_than_one_tenant(admin_client):
    first, second = TenantFactory(), TenantFactory()

    response = post_action(
        admin_client,
        TENANTS,
        "record_credit_purchase",
        [first.pk, second.pk],
        {"credits": "10", "total": "80", "currency": "USD", "package_name": "", "payment_reference": ""},
    )

    assert response.status_code == 200
    assert "Select exactly one row for this action." in messages_of(response)
    assert BillingOrder.objects.count() == 0
    assert CreditLedger.objects.count() == 0


def test_bonus_needs_a_reason_and_is_added_to_the_ledger(admin_client, admin_user):
    tenant = TenantFactory()

    missing_reason = post_action(
        admin_client, TENANTS, "grant_bonus_credits", [tenant.pk], {"amount": "3", "reason": ""}
    )
    assert CreditLedger.objects.filter(tenant=tenant).count() == 0
    response = post_action(
        admin_client, TENANTS, "grant_bonus_credits", [tenant.pk], {"amount": "3", "reason": "Launch promo"}
    )

    assert missing_reason.context["form"].errors == {"reason": ["This field is required."]}
    entry = CreditLedger.objects.get(tenant=tenant)
    assert (entry.transaction_type, entry.amount, entry.notes, entry.created_by_id) == (
        T.CREDIT_BONUS,
        3,
        "Launch promo",
        admin_user.pk,
    )
    assert balance_of(tenant) == (3, 0, 3, 0)
    assert f"{tenant}: +3 bonus credits; balance 3." in messages_of(response)


def test_adjustment_requires_a_reason(admin_client, funded_tenant):
    response = post_action(
        admin_client, TENANTS, "adjust_credits", [funded_tenant.pk], {"amount": "-2", "reason": " "}
    )

    assert response.status_code == 200
    assert response.context["form"].errors == {"reason": ["This field is required."]}
    assert ledger_of(funded_tenant) == [(T.CREDIT_BONUS, 10, 10)]
    assert balance_of(funded_tenant) == (10, 0, 10, 0)


def test_adjustment_beyond_the_balance_is_reported_and_changes_nothing(admin_client, funded_tenant):
    response = post_action(
        admin_client, TENANTS, "adjust_credits", [funded_tenant.pk], {"amount": "-11", "reason": "Chargeback"}
    )

    assert response.status_code == 200
    assert f"{funded_tenant}: The tenant has 10 credits; 11 are needed." in messages_of(response)
    assert ledger_of(funded_tenant) == [(T.CREDIT_BONUS, 10, 10)]
    assert balance_of(funded_tenant) == (10, 0, 10, 0)


def test_negative_adjustment_within_the_balance(admin_client, admin_user, funded_tenant):
    response = post_action(
        admin_client,
        TENANTS,
        "adjust_credits",
        [funded_tenant.pk],
        {"amount": "-4", "reason": "Duplicate lead"},
    )

    assert ledger_of(funded_tenant) == [(T.CREDIT_BONUS, 10, 10), (T.CREDIT_ADJUSTMENT, -4, 6)]
    assert CreditLedger.objects.get(transaction_type=T.CREDIT_ADJUSTMENT).notes == "Duplicate lead"
    assert balance_of(funded_tenant) == (6, 0, 10, -4)
    assert f"{funded_tenant}: adjusted -4; balance 6." in messages_of(response)


# --- Orders -----------------------------------------------------------------------------------------


def test_complete_order_action_credits_pending_orders_only(admin_client, admin_user):
    tenant = TenantFactory()
    pending = BillingOrderFactory(tenant=tenant, credits_purchased=50)
    failed = BillingOrderFactory(tenant=tenant, status=BillingOrderStatus.FAILED)

    response = post_action(admin_client, ORDERS, "complete_orders", [pending.pk, failed.pk])
    again = post_action(admin_client, ORDERS, "complete_orders", [pending.pk])

    assert BillingOrder.objects.get(pk=pending.pk).status == BillingOrderStatus.COMPLETED
    assert BillingOrder.objects.get(pk=failed.pk).status == BillingOrderStatus.FAILED
    assert ledger_of(tenant) == [(T.CREDIT_PURCHASE, 50, 50)]
    assert balance_of(tenant) == (50, 50, 0, 0)
    messages = messages_of(response)
    assert "Completed 1 order(s); 50 credits added." in messages
    assert f"{failed}: Only a pending order can be completed." in messages
    assert "1 order(s) were already completed." in messages_of(again)


# --- Read-only ledger and balances ------------------------------------------------------------------


def test_ledger_admin_refuses_add_change_and_delete(admin_client, funded_tenant):
    entry = CreditLedger.objects.get(tenant=funded_tenant)
    change_url = reverse("admin:billing_creditledger_change", args=[entry.pk])

    add = admin_client.get(reverse("admin:billing_creditledger_add"))
    page = admin_client.get(change_url)
    change = admin_client.post(change_url, {"amount": "999", "balance_after": "999"})
    delete = admin_client.post(reverse("admin:billing_creditledger_delete", args=[entry.pk]), {"post": "yes"})
    bulk_delete = admin_client.post(
        reverse("admin:billing_creditledger_changelist"),
        {"action": "delete_selected", "_selected_action": [str(entry.pk)], "index": "0", "post": "yes"},
    )

    assert (add.status_code, change.status_code, delete.status_code) == (403, 403, 403)
    assert page.status_code == 200
    assert b'name="_save"' not in page.content
    # With no action available the POST just renders the list again.
    assert bulk_delete.status_code == 200
    assert bulk_delete.context["action_form"] is None
    assert ledger_of(funded_tenant) == [(T.CREDIT_BONUS, 10, 10)]


def test_balance_admin_is_view_only(admin_client, funded_tenant):
    url = reverse("admin:billing_tenantcreditbalance_change", args=[funded_tenant.pk])

    page = admin_client.get(url)
    change = admin_client.post(url, {"balance": "1000"})
    delete = admin_client.post(
        reverse("admin:billing_tenantcreditbalance_delete", args=[funded_tenant.pk]), {"post": "yes"}
    )

    assert page.status_code == 200
    assert b'name="_save"' not in page.content
    assert (change.status_code, delete.status_code) == (403, 403)
    assert balance_of(funded_tenant) == (10, 0, 10, 0)


def test_ledger_search_by_order_number_and_filter_by_tenant(admin_client, admin_user):
    tenant = TenantFactory()
    other = TenantFactory()
    post_action(
        admin_client,
        TENANTS,
        "record_credit_purchase",
        [tenant.pk],
        {"credits": "10", "total": "80", "currency": "USD", "package_name": "", "payment_reference": ""},
    )
    credit_bonus_grant(tenant=other, amount=2, reason="x", actor=admin_user)
    order = BillingOrder.objects.get(tenant=tenant)
    url = reverse("admin:billing_creditledger_changelist")

    by_number = admin_client.get(url, {"q": order.order_number})
    by_order_id = admin_client.get(url, {"q": str(order.pk)})
    by_tenant = admin_client.get(url, {"tenant": str(other.pk)})

    purchase = CreditLedger.objects.get(tenant=tenant)
    assert [row.pk for row in by_number.context["cl"].result_list] == [purchase.pk]
    assert [row.pk for row in by_order_id.context["cl"].result_list] == [purchase.pk]
    assert [row.tenant_id for row in by_tenant.context["cl"].result_list] == [other.pk]


def test_low_balance_filter(admin_client, admin_user):
    low, rich = TenantFactory(), TenantFactory()
    credit_bonus_grant(tenant=low, amount=3, reason="x", actor=admin_user)
    credit_bonus_grant(tenant=rich, amount=30, reason="x", actor=admin_user)

    response = admin_client.get(reverse("admin:billing_tenantcreditbalance_changelist"), {"balance": "low"})

    assert [row.pk for row in response.context["cl"].result_list] == [low.pk]


# --- Tenant search ----------------------------------------------------------------------------------


@pytest.mark.parametrize("term", ["acme", "acme-homes", "ops@acme.test", "id"])
def test_tenant_search(admin_client, term):
    wanted = TenantFactory(name="Acme Homes", slug="acme-homes", contact_email="ops@acme.test")
    TenantFactory(name="Other")
    term = str(wanted.pk) if term == "id" else term

    response = admin_client.get(TENANTS, {"q": term})

    assert [row.pk for row in response.context["cl"].result_list] == [wanted.pk]


def test_tenant_list_shows_the_balance(admin_client, funded_tenant):
    response = admin_client.get(TENANTS)

    assert response.status_code == 200
    row = next(r for r in response.context["cl"].result_list if r.pk == funded_tenant.pk)
    assert row.credit_balance.balance == 10


# --- Low-credit alerts (view-only) ------------------------------------------------------------------

ALERTS = reverse("admin:billing_creditalert_changelist")


def test_alert_admin_lists_alerts_and_refuses_add_change_and_delete(admin_client, admin_user):
    tenant, other = TenantFactory(name="Low"), TenantFactory(name="Other")
    for each in (tenant, other):
        credit_bonus_grant(tenant=each, amount=10, reason="x", actor=admin_user)
        credit_adjust(tenant=each, amount=-10, reason="empty", actor=admin_user)
    alert = CreditAlert.objects.get(tenant=tenant)
    change_url = reverse("admin:billing_creditalert_change", args=[alert.pk])

    listing = admin_client.get(ALERTS)
    filtered = admin_client.get(ALERTS, {"tenant": str(tenant.pk)})
    add = admin_client.get(reverse("admin:billing_creditalert_add"))
    page = admin_client.get(change_url)
    change = admin_client.post(change_url, {"balance": "999"})
    delete = admin_client.post(reverse("admin:billing_creditalert_delete", args=[alert.pk]), {"post": "yes"})

    assert listing.status_code == 200
    assert {row.tenant_id for row in listing.context["cl"].result_list} == {tenant.pk, other.pk}
    assert [row.pk for row in filtered.context["cl"].result_list] == [alert.pk]
    assert (add.status_code, change.status_code, delete.status_code) == (403, 403, 403)
    assert page.status_code == 200
    assert b'name="_save"' not in page.content
    assert CreditAlert.objects.get(pk=alert.pk).balance == 0


def test_alert_list_query_count_does_not_grow_with_alerts(admin_client, admin_user):
    def page_queries() -> int:
        with CaptureQueriesContext(connection) as context:
            assert admin_client.get(ALERTS).status_code == 200
        return len(context.captured_queries)

    tenant = TenantFactory()
    credit_bonus_grant(tenant=tenant, amount=10, reason="x", actor=admin_user)
    credit_adjust(tenant=tenant, amount=-10, reason="empty", actor=admin_user)
    with_one = page_queries()
    for _ in range(5):
        each = TenantFactory()
        credit_bonus_grant(tenant=each, amount=10, reason="x", actor=admin_user)
        credit_adjust(tenant=each, amount=-10, reason="empty", actor=admin_user)

    # No query per row: the tenant is joined (list_select_related), the entry link is built from its id.
    assert page_queries() == with_one
