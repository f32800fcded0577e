"""The balance reconciles from its own totals, whatever ledger history produced it (issue 14.6).

For random sequences of ledger operations, run through the real services (purchase, one charge, a
batch of charges, refund, bonus, adjustment of either sign, trial grant), the balance always equals

    total_purchased - total_consumed + total_refunded + total_bonus + total_adjusted

and the sum of the ledger rows' amounts, read both through `balance_summary_get` (after every step) and
through `GET /api/portal/billing/balance` and `…/billing/ledger` (at the end, as a tenant would check
it). Refused operations (not enough credits, nothing or already refunded, a second trial) are part of
the history: they must leave the identity intact too.

Each example runs on a fresh tenant inside a savepoint that is rolled back at its end, so examples never
see each other's rows.
"""

from __future__ import annotations

from collections.abc import Mapping
from decimal import Decimal

import pytest
from django.db import transaction
from django.db.models import Sum
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from billing.errors import (
    AlreadyRefunded,
    NotEnoughCredits,
    NothingToRefund,
    TrialAlreadyGranted,
)
from billing.models import CreditLedger
from billing.selectors import balance_summary_get
from billing.services import (
    Charge,
    credit_adjust,
    credit_bonus_grant,
    credit_consume,
    credit_consume_many,
    credit_purchase_record,
    credit_refund,
    trial_credits_grant,
)
from billing.tests.invariants import assert_ledger_consistent
from converzia.models import TenantRole
from converzia.tests.factories import StaffUserFactory, TenantFactory
from deliveries.tests.factories import DeliveryFactory
from leads.tests.factories import OfferFactory

pytestmark = pytest.mark.django_db
BALANCE_URL = "/api/portal/billing/balance"
LEDGER_URL = "/api/portal/billing/ledger"
# What the services may refuse; a refusal writes nothing.
REFUSALS = (NotEnoughCredits, NothingToRefund, AlreadyRefunded, TrialAlreadyGranted)

OPERATIONS = st.one_of(
    st.tuples(st.just("purchase"), st.integers(min_value=1, max_value=40)),
    st.tuples(st.just("consume"), st.just(1)),
    st.tuples(st.just("consume_batch"), st.integers(min_value=1, max_value=3)),
    # The value picks one of the deliveries made so far (charged or not, refunded or not).
    st.tuples(st.just("refund"), st.integers(min_value=0, max_value=20)),
    st.tuples(st.just("bonus"), st.integers(min_value=1, max_value=10)),
    st.tuples(st.just("adjust"), st.integers(min_value=-30, max_value=30).filter(bool)),
    # 0 grants the pricing default (5 credits).
    st.tuples(st.just("trial"), st.integers(min_value=0, max_value=8)),
)


def reconciled(totals: Mapping[str, int]) -> int:
    """The balance as the listed totals add it up (consumed is a positive count, subtracted)."""
    return (
        totals["total_purchased"]
        - totals["total_consumed"]
        + totals["total_refunded"]
        + totals["total_bonus"]
        + totals["total_adjusted"]
    )


class LedgerHistory:
    """Applies operations to one tenant through the ledger services."""

    def __init__(self) -> None:
        self.tenant = TenantFactory()
        self.offer = OfferFactory(tenant=self.tenant)
        self.staff = StaffUserFactory()
        self.deliveries: list[tuple[object, object]] = []

    def new_delivery(self) -> tuple[object, object]:
        delivery = DeliveryFactory(lead_offer__offer=self.offer)
        self.deliveries.append((delivery.pk, delivery.lead_offer_id))
        return delivery.pk, delivery.lead_offer_id

    def apply(self, name: str, value: int) -> None:
        tenant = self.tenant
        try:
            if name == "purchase":
                credit_purchase_record(tenant=tenant, credits=value, total=Decimal(value * 8))
            elif name == "consume":
                delivery_id, lead_offer_id = self.new_delivery()
                credit_consume(tenant_id=tenant.pk, delivery_id=delivery_id, lead_offer_id=lead_offer_id)
            elif name == "consume_batch":
                # Errors come back per delivery (nothing charged for them), they are not raised.
                charges = [Charge(tenant.pk, *self.new_delivery()) for _ in range(value)]
                credit_consume_many(charges)
            elif name == "refund":
                if self.deliveries:
                    delivery_id, _ = self.deliveries[value % len(self.deliveries)]
                    credit_refund(tenant_id=tenant.pk, delivery_id=delivery_id, reason="spam")
            elif name == "bonus":
                credit_bonus_grant(tenant=tenant, amount=value, reason="gift")
            elif name == "adjust":
                credit_adjust(tenant=tenant, amount=value, reason="fix", actor=self.staff)
            elif name == "trial":
                trial_credits_grant(tenant=tenant, amount=value or None)
            else:  # pragma: no cover - the strategy names every operation
                raise AssertionError(name)
        except REFUSALS:
            pass

    def ledger_sum(self) -> int:
        total = CreditLedger.objects.filter(tenant=self.tenant).aggregate(total=Sum("amount"))["total"]
        return total or 0


def ledger_amounts_via_api(client) -> list[int]:
    amounts, url = [], f"{LEDGER_URL}?page_size=200"
    while url:
        response = client.get(url)
        assert response.status_code == 200, response.json()
        amounts += [row["amount"] for row in response.json()["results"]]
        url = response.json()["next"]
    return amounts


@settings(
    max_examples=40,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(operations=st.lists(OPERATIONS, max_size=20))
# The shape: trial credits, a purchase, charges, a refund, a bonus, both kinds of adjustment,
# and a refused second trial and refund.
@example(
    operations=[
        ("trial", 0),
        ("purchase", 10),
        ("consume", 1),
        ("consume_batch", 3),
        ("refund", 0),
        ("refund", 0),
        ("bonus", 5),
        ("adjust", -2),
        ("adjust", 4),
        ("trial", 3),
    ]
)
def check_balance_reconciles(operations: list[tuple[str, int]], make_member, client_for) -> None:
    with transaction.atomic():
        history = LedgerHistory()
        client = client_for(make_member(history.tenant, TenantRole.VIEWER))

        for name, value in operations:
            history.apply(name, value)
            summary = balance_summary_get(tenant=history.tenant)
            assert summary.balance == reconciled(vars(summary)) == history.ledger_sum(), (name, value)

        response = client.get(BALANCE_URL)
        assert response.status_code == 200
        body = response.json()
        ledger_amounts = ledger_amounts_via_api(client)
        assert body["balance"] == reconciled(body) == sum(ledger_amounts) == history.ledger_sum()
        # And each total is the sum of its own transaction type (the chain, the one-charge rule...).
        assert assert_ledger_consistent(history.tenant) == body["balance"]
        transaction.set_rollback(True)


def test_balance_equals_its_totals_and_the_ledger_sum_for_any_history(make_member, client_for):
    # Fixtures go in as plain arguments: the factories they return hold no per-example state.
    check_balance_reconciles(make_member=make_member, client_for=client_for)
