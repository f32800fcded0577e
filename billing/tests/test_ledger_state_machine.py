"""A hypothesis state machine over every ledger service, checking D7's invariants after each step.

Each example runs on a fresh tenant inside the test's transaction (rolled back at the end), so
examples never see each other's rows and no table cleanup is needed. The machine keeps its own model
of the balance, the totals and which deliveries were charged and refunded, and predicts each call's
outcome, including the order of the checks (the balance is checked before the double-charge guard).
"""

from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    initialize,
    invariant,
    rule,
    run_state_machine_as_test,
)

from billing.errors import AlreadyCharged, AlreadyRefunded, NotEnoughCredits, NothingToRefund
from billing.models import CreditLedger, CreditTransactionType, TenantCreditBalance
from billing.services import (
    credit_adjust,
    credit_bonus_grant,
    credit_consume,
    credit_purchase_record,
    credit_refund,
)
from billing.tests.invariants import TOTAL_BY_TYPE, assert_ledger_consistent
from converzia.tests.factories import StaffUserFactory, TenantFactory
from deliveries.tests.factories import DeliveryFactory
from leads.tests.factories import OfferFactory

T = CreditTransactionType
MACHINE_SETTINGS = settings(
    max_examples=30,
    stateful_step_count=20,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


class LedgerMachine(RuleBasedStateMachine):
    deliveries = Bundle("deliveries")

    @initialize()
    def start(self) -> None:
        self.tenant = TenantFactory()
        self.offer = OfferFactory(tenant=self.tenant)
        self.staff = StaffUserFactory()
        self.balance = 0
        self.totals = dict.fromkeys(TOTAL_BY_TYPE.values(), 0)
        self.consumed: set[object] = set()
        self.refunded: set[object] = set()

    def credit(self, transaction_type: str, amount: int) -> None:
        self.balance += amount
        field = TOTAL_BY_TYPE[transaction_type]
        self.totals[field] += amount if transaction_type == T.CREDIT_ADJUSTMENT else abs(amount)

    # --- rules -----------------------------------------------------------------------------------------

    @rule(credits=st.integers(min_value=1, max_value=40))
    def purchase(self, credits: int) -> None:
        credit_purchase_record(tenant=self.tenant, credits=credits, total=Decimal(credits * 8))
        self.credit(T.CREDIT_PURCHASE, credits)

    @rule(amount=st.integers(min_value=1, max_value=10))
    def bonus(self, amount: int) -> None:
        credit_bonus_grant(tenant=self.tenant, amount=amount, reason="bonus")
        self.credit(T.CREDIT_BONUS, amount)

    @rule(amount=st.integers(min_value=-30, max_value=30).filter(bool))
    def adjust(self, amount: int) -> None:
        if self.balance + amount < 0:
            with pytest.raises(NotEnoughCredits):
                credit_adjust(tenant=self.tenant, amount=amount, reason="fix", actor=self.staff)
            return
        credit_adjust(tenant=self.tenant, amount=amount, reason="fix", actor=self.staff)
        self.credit(T.CREDIT_ADJUSTMENT, amount)

    @rule(target=deliveries)
    def consume_new_delivery(self) -> object:
        delivery = DeliveryFactory(lead_offer__offer=self.offer)
        self.consume(delivery.pk, delivery.lead_offer_id)
        return (delivery.pk, delivery.lead_offer_id)

    @rule(delivery=deliveries)
    def consume_again(self, delivery: tuple[object, object]) -> None:
        self.consume(*delivery)

    def consume(self, delivery_id: object, lead_offer_id: object) -> None:
        def call() -> CreditLedger:
            return credit_consume(
                tenant_id=self.tenant.pk, delivery_id=delivery_id, lead_offer_id=lead_offer_id
            )

        if self.balance < 1:
            with pytest.raises(NotEnoughCredits):
                call()
        elif delivery_id in self.consumed:
            with pytest.raises(AlreadyCharged):
                call()
        else:
            call()
            self.consumed.add(delivery_id)
            self.credit(T.CREDIT_CONSUMPTION, -1)

    @rule(delivery=deliveries)
    def refund(self, delivery: tuple[object, object]) -> None:
        delivery_id = delivery[0]

        def call() -> CreditLedger:
            return credit_refund(tenant_id=self.tenant.pk, delivery_id=delivery_id, reason="spam")

        if delivery_id not in self.consumed:
            with pytest.raises(NothingToRefund):
                call()
        elif delivery_id in self.refunded:
            with pytest.raises(AlreadyRefunded):
                call()
        else:
            call()
            self.refunded.add(delivery_id)
            self.credit(T.CREDIT_REFUND, 1)

    # --- invariants ------------------------------------------------------------------------------------

    @invariant()
    def ledger_matches_the_model(self) -> None:
        if not hasattr(self, "tenant"):
            return
        assert assert_ledger_consistent(self.tenant) == self.balance
        row = TenantCreditBalance.objects.filter(tenant=self.tenant).values(*self.totals).first()
        assert (row or dict.fromkeys(self.totals, 0)) == self.totals
        charges = CreditLedger.objects.filter(tenant=self.tenant, delivery__isnull=False)
        by_type = {T.CREDIT_CONSUMPTION: set(), T.CREDIT_REFUND: set()}
        for transaction_type, delivery_id in charges.values_list("transaction_type", "delivery_id"):
            by_type[transaction_type].add(delivery_id)
        assert by_type == {T.CREDIT_CONSUMPTION: self.consumed, T.CREDIT_REFUND: self.refunded}


@pytest.mark.django_db
def test_ledger_state_machine():
    run_state_machine_as_test(LedgerMachine, settings=MACHINE_SETTINGS)
