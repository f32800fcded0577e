"""GET /api/portal/billing/balance and /api/portal/billing/ledger: shape, roles, tenancy, keyset pages."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import pytest
from django.utils import timezone

from billing.models import CreditLedger, CreditTransactionType
from billing.services import (
    _TOTAL_FIELD,
    credit_adjust,
    credit_bonus_grant,
    credit_consume,
    credit_purchase_record,
    credit_refund,
    trial_credits_grant,
)
from billing.tests.factories import TenantPricingFactory
from converzia.api.renderers import OrjsonRenderer
from converzia.models import MembershipStatus, TenantRole
from converzia.tests.factories import StaffUserFactory, TenantMemberFactory, UserFactory
from deliveries.tests.factories import DeliveryFactory
from leads.tests.factories import OfferFactory
from portal.api.billing import BillingBalanceView, BillingLedgerViewSet

pytestmark = pytest.mark.django_db
T = CreditTransactionType
BALANCE_URL = "/api/portal/billing/balance"
LEDGER_URL = "/api/portal/billing/ledger"
ROUTES = pytest.mark.parametrize("url", [BALANCE_URL, LEDGER_URL], ids=["balance", "ledger"])


def walk(client, url: str) -> list[dict]:
    pages = []
    while url:
        response = client.get(url)
        assert response.status_code == 200, response.json()
        pages.append(response.json())
        url = response.json()["next"]
    return pages


def iso(moment: dt.datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


def charged_tenant_history(tenant) -> dict[str, CreditLedger]:
    """A purchase, a charge, its refund and a negative adjustment."""
    delivery = DeliveryFactory(lead_offer__offer=OfferFactory(tenant=tenant))
    credit_purchase_record(tenant=tenant, credits=10, total=Decimal("80"))
    return {
        "purchase": CreditLedger.objects.get(tenant=tenant, transaction_type=T.CREDIT_PURCHASE),
        "charge": credit_consume(
            tenant_id=tenant.pk, delivery_id=delivery.pk, lead_offer_id=delivery.lead_offer_id
        ),
        "refund": credit_refund(tenant_id=tenant.pk, delivery_id=delivery.pk, reason="spam"),
        "adjustment": credit_adjust(
            tenant=tenant, amount=-2, reason="internal note", actor=StaffUserFactory()
        ),
    }


# --- balance ---------------------------------------------------------------------------------------


def test_balance_of_a_tenant_with_history(tenant, owner, client_for):
    TenantPricingFactory(tenant=tenant, cost_per_lead=Decimal("12.5"), low_credit_threshold=4)
    charged_tenant_history(tenant)

    response = client_for(owner).get(BALANCE_URL)

    assert response.status_code == 200
    assert response.json() == {
        "balance": 8,
        "low_credit_threshold": 4,
        "total_purchased": 10,
        "total_consumed": 1,
        "total_refunded": 1,
        "total_bonus": 0,
        "total_adjusted": -2,
        "cost_per_lead": "12.50",
        "currency": "USD",
    }


def test_balance_lists_trial_bonus_and_adjustment_totals_so_it_reconciles(tenant, owner, client_for):
    # Issue 14.6: trial and bonus credits were in the balance but in none of the listed totals.
    deliveries = DeliveryFactory.create_batch(3, lead_offer__offer=OfferFactory(tenant=tenant))
    trial_credits_grant(tenant=tenant, amount=5)
    credit_purchase_record(tenant=tenant, credits=10, total=Decimal("80"))
    credit_bonus_grant(tenant=tenant, amount=2, reason="welcome")
    for delivery in deliveries:
        credit_consume(tenant_id=tenant.pk, delivery_id=delivery.pk, lead_offer_id=delivery.lead_offer_id)
    credit_refund(tenant_id=tenant.pk, delivery_id=deliveries[0].pk, reason="spam")
    staff = StaffUserFactory()
    credit_adjust(tenant=tenant, amount=4, reason="goodwill", actor=staff)
    credit_adjust(tenant=tenant, amount=-1, reason="correction", actor=staff)

    body = client_for(owner).get(BALANCE_URL).json()

    totals = {name: body[name] for name in body if name.startswith("total_")}
    assert totals == {
        "total_purchased": 10,
        "total_consumed": 3,
        "total_refunded": 1,
        "total_bonus": 7,  # the 5 trial credits and the 2 bonus credits
        "total_adjusted": 3,
    }
    assert body["balance"] == 18 == 10 - 3 + 1 + 7 + 3


def test_balance_body_lists_every_running_total_the_ledger_keeps():
    # A total missing from the body is a balance the tenant cannot add up.
    assert set(_TOTAL_FIELD.values()) <= set(BillingBalanceView.OutputSerializer().fields)


def test_balance_of_a_new_tenant_reads_zeros_and_default_pricing(tenant, owner, client_for):
    response = client_for(owner).get(BALANCE_URL)

    assert response.status_code == 200
    assert response.json() == {
        "balance": 0,
        "low_credit_threshold": 10,
        "total_purchased": 0,
        "total_consumed": 0,
        "total_refunded": 0,
        "total_bonus": 0,
        "total_adjusted": 0,
        "cost_per_lead": "10.00",
        "currency": "USD",
    }


def test_balance_query_budget(tenant, owner, client_for, django_assert_num_queries):
    credit_bonus_grant(tenant=tenant, amount=3, reason="x")
    client = client_for(owner)
    client.get(BALANCE_URL)  # first use of the token records last_used_at and caches its principal

    # Balance row, pricing row: the token and membership come from the cached principal.
    with django_assert_num_queries(2):
        response = client.get(BALANCE_URL)

    assert response.json()["balance"] == 3


# --- ledger ----------------------------------------------------------------------------------------


def test_ledger_rows_newest_first_with_their_fields(tenant, owner, client_for):
    history = charged_tenant_history(tenant)

    response = client_for(owner).get(LEDGER_URL)

    assert response.status_code == 200
    body = response.json()
    assert (body["next"], body["previous"]) == (None, None)
    charge = history["charge"]
    assert body["results"] == [
        {
            "id": str(entry.pk),
            "transaction_type": entry.transaction_type,
            "amount": entry.amount,
            "balance_after": entry.balance_after,
            "description": entry.description,
            "delivery_id": str(entry.delivery_id) if entry.delivery_id else None,
            "lead_offer_id": str(entry.lead_offer_id) if entry.lead_offer_id else None,
            "created_at": iso(entry.created_at),
        }
        for entry in (history["adjustment"], history["refund"], charge, history["purchase"])
    ]
    assert [row["amount"] for row in body["results"]] == [-2, 1, -1, 10]
    assert body["results"][2]["delivery_id"] == str(charge.delivery_id)
    # Staff notes stay internal.
    assert all("notes" not in row for row in body["results"])


def test_ledger_body_is_byte_for_byte_what_its_output_serializer_renders(tenant, owner, client_for):
    """The page's dicts skip the serializer (converzia.db.prepared); the serializer stays the schema
    and the reference: its rendering of the same model rows gives the same bytes."""
    charged_tenant_history(tenant)
    response = client_for(owner).get(LEDGER_URL)
    entries = CreditLedger.objects.filter(tenant=tenant).order_by("-created_at", "-id")
    expected = {
        "results": BillingLedgerViewSet.OutputSerializer(entries, many=True).data,
        "next": None,
        "previous": None,
    }
    assert response.content == OrjsonRenderer().render(expected)


def test_ledger_shows_only_the_tenants_rows(tenant, other_tenant, owner, client_for):
    mine = credit_bonus_grant(tenant=tenant, amount=1, reason="x")
    credit_bonus_grant(tenant=other_tenant, amount=1, reason="x")
    charged_tenant_history(other_tenant)

    body = client_for(owner).get(LEDGER_URL).json()
    balance = client_for(owner).get(BALANCE_URL).json()

    assert [row["id"] for row in body["results"]] == [str(mine.pk)]
    assert (balance["balance"], balance["total_purchased"]) == (1, 0)


def make_ledger_with_ties(tenant) -> list[CreditLedger]:
    """11 rows: groups sharing a created_at (ties broken by id) and singles."""
    base = timezone.now().replace(microsecond=0) - dt.timedelta(days=1)
    moments = [base] * 4 + [base - dt.timedelta(seconds=1)] + [base - dt.timedelta(seconds=2)] * 3
    moments += [base - dt.timedelta(seconds=3)] + [base + dt.timedelta(seconds=1)] * 2
    return CreditLedger.objects.bulk_create(
        CreditLedger(
            tenant=tenant, transaction_type=T.CREDIT_BONUS, amount=1, balance_after=n + 1, created_at=at
        )
        for n, at in enumerate(moments)
    )


def test_pages_list_every_row_once_in_order(tenant, owner, client_for):
    rows = make_ledger_with_ties(tenant)

    pages = walk(client_for(owner), f"{LEDGER_URL}?page_size=3")

    assert [len(page["results"]) for page in pages] == [3, 3, 3, 2]
    listed = [row["id"] for page in pages for row in page["results"]]
    assert listed == [str(r.pk) for r in sorted(rows, key=lambda r: (r.created_at, r.pk), reverse=True)]
    assert pages[0]["previous"] is None
    assert all(page["previous"] for page in pages[1:])


def test_deep_page_costs_the_same_queries(tenant, owner, client_for, django_assert_num_queries):
    make_ledger_with_ties(tenant)
    client = client_for(owner)
    pages = walk(client, f"{LEDGER_URL}?page_size=2")

    # The page (the token and membership come from the cached principal).
    with django_assert_num_queries(1):
        assert client.get(pages[-1]["previous"]).status_code == 200


@pytest.mark.parametrize(
    ("_case", "query", "expected"),
    [
        ("_case_one", "transaction_type=CREDIT_REFUND", ["refund"]),
        ("_case_comma_list", "transaction_type=CREDIT_PURCHASE,CREDIT_CONSUMPTION", ["charge", "purchase"]),
        (
            "_case_repeated",
            "transaction_type=CREDIT_ADJUSTMENT&transaction_type=CREDIT_REFUND",
            ["adjustment", "refund"],
        ),
        ("_case_none_of_that_type", "transaction_type=CREDIT_BONUS", []),
    ],
)
def test_transaction_type_filter(_case, query, expected, tenant, owner, client_for):
    history = charged_tenant_history(tenant)

    response = client_for(owner).get(f"{LEDGER_URL}?{query}")

    assert response.status_code == 200
    assert [row["id"] for row in response.json()["results"]] == [str(history[name].pk) for name in expected]


def test_filter_applies_on_every_page(tenant, owner, client_for):
    make_ledger_with_ties(tenant)
    charged_tenant_history(tenant)

    pages = walk(client_for(owner), f"{LEDGER_URL}?transaction_type=CREDIT_BONUS&page_size=4")

    assert [len(page["results"]) for page in pages] == [4, 4, 3]
    assert {row["transaction_type"] for page in pages for row in page["results"]} == {"CREDIT_BONUS"}


@pytest.mark.parametrize("value", ["CREDIT_GIFT", "credit_bonus", "CREDIT_BONUS,NOPE", ""])
def test_bad_transaction_type_is_invalid_input(value, owner, client_for):
    response = client_for(owner).get(LEDGER_URL, {"transaction_type": value})

    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "invalid_input"
    assert list(error["details"]) == ["transaction_type"]
    assert sorted(error) == ["code", "details", "message", "request_id"]


@pytest.mark.parametrize(
    ("url", "params", "accepted"),
    [
        (BALANCE_URL, {"page_size": "5"}, "none"),
        (LEDGER_URL, {"type": "CREDIT_BONUS"}, "cursor, page_size, transaction_type"),
    ],
    ids=["balance", "ledger"],
)
def test_unknown_query_parameter_is_rejected(url, params, accepted, owner, client_for):
    response = client_for(owner).get(url, params)

    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "invalid_input"
    assert error["details"] == {name: ["Unknown query parameter."] for name in params}
    assert error["message"].endswith(f"Accepted here: {accepted}.")


# --- roles and tenancy ------------------------------------------------------------------------------


@ROUTES
@pytest.mark.parametrize("role", [TenantRole.OWNER, TenantRole.ADMIN, TenantRole.BILLING, TenantRole.VIEWER])
def test_every_role_with_view_billing_reads(url, role, tenant, make_member, client_for):
    credit_bonus_grant(tenant=tenant, amount=2, reason="x")

    response = client_for(make_member(tenant, role)).get(url)

    assert response.status_code == 200
    body = response.json()
    if url == BALANCE_URL:
        assert body["balance"] == 2
    else:
        assert [row["amount"] for row in body["results"]] == [2]


@ROUTES
def test_unauthenticated_is_401(url, api_client):
    response = api_client.get(url)

    assert response.status_code == 401
    assert response.json()["error"]["code"] == "unauthenticated"


@ROUTES
@pytest.mark.parametrize("status", [MembershipStatus.PENDING_APPROVAL, MembershipStatus.SUSPENDED, None])
def test_without_an_active_membership_is_not_a_member(url, status, tenant, client_for):
    if status is None:
        client = client_for(UserFactory(), tenant)  # no membership at all
    else:
        client = client_for(TenantMemberFactory(tenant=tenant, status=status).user, tenant)

    response = client.get(url)

    assert response.status_code == 403
    assert response.json()["error"]["code"] == "not_a_member"


@ROUTES
def test_member_naming_another_tenant_is_not_a_member(url, tenant, other_tenant, owner, client_for):
    credit_bonus_grant(tenant=other_tenant, amount=7, reason="x")

    response = client_for(owner, other_tenant).get(url)

    assert response.status_code == 403
    assert response.json()["error"]["code"] == "not_a_member"


def test_staff_reads_any_tenant_by_naming_it(tenant, other_tenant, staff_user, client_for):
    entry = credit_bonus_grant(tenant=tenant, amount=7, reason="x")
    credit_bonus_grant(tenant=other_tenant, amount=1, reason="x")

    balance = client_for(staff_user, tenant).get(BALANCE_URL)
    ledger = client_for(staff_user, tenant).get(LEDGER_URL)

    assert balance.status_code == ledger.status_code == 200
    assert balance.json()["balance"] == 7
    assert [row["id"] for row in ledger.json()["results"]] == [str(entry.pk)]


@ROUTES
def test_staff_without_tenant_header_gets_tenant_required(url, staff_user, client_for):
    response = client_for(staff_user).get(url)

    assert response.status_code == 400
    assert response.json()["error"]["code"] == "tenant_required"
