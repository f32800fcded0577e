"""Checks of the ledger's invariants (decision D7), shared by the race tests and the state machine."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence

from django.db.models import Count, Sum

from billing.models import CreditLedger, CreditTransactionType, TenantCreditBalance
from converzia.models import Tenant

T = CreditTransactionType
TOTAL_BY_TYPE = {
    T.CREDIT_PURCHASE: "total_purchased",
    T.CREDIT_CONSUMPTION: "total_consumed",
    T.CREDIT_REFUND: "total_refunded",
    T.CREDIT_BONUS: "total_bonus",
    T.CREDIT_ADJUSTMENT: "total_adjusted",
}


def chain_problems(rows: Sequence[tuple[str, int, int]]) -> list[str]:
    """Rows in write order as (type, amount, balance_after): each balance_after is the previous plus
    the amount, starting from 0, and never negative."""
    problems = []
    running = 0
    for position, (transaction_type, amount, balance_after) in enumerate(rows):
        running += amount
        if balance_after != running:
            problems.append(f"row {position} {transaction_type} {amount:+d}: {balance_after} != {running}")
        if balance_after < 0:
            problems.append(f"row {position}: negative balance {balance_after}")
    return problems


def assert_ledger_consistent(tenant: Tenant) -> int:
    """Assert every ledger invariant for `tenant`; returns its balance.

    The balance row equals SUM(amount) and the newest balance_after; the balance_after chain is exact
    and never negative; each running total equals the sum of its type; one consumption and one refund
    per delivery at most, and a refund only of a consumed delivery.
    """
    # Ledger writes of a tenant are serialised by the balance lock and stamp created_at under it, so
    # (created_at, id) is the write order.
    rows = list(
        CreditLedger.objects.filter(tenant=tenant)
        .order_by("created_at", "id")
        .values_list("transaction_type", "amount", "balance_after", "delivery_id")
    )
    assert chain_problems([row[:3] for row in rows]) == []
    balance = TenantCreditBalance.objects.filter(tenant=tenant).values().first()
    if balance is None:
        assert rows == []
        return 0
    total = sum(amount for _, amount, _, _ in rows)
    assert balance["balance"] == total == (rows[-1][2] if rows else 0)
    assert balance["balance"] >= 0

    sums = dict(
        CreditLedger.objects.filter(tenant=tenant)
        .values_list("transaction_type")
        .annotate(total=Sum("amount"))
        .values_list("transaction_type", "total")
    )
    for transaction_type, field in TOTAL_BY_TYPE.items():
        expected = sums.get(transaction_type, 0)
        if transaction_type == T.CREDIT_CONSUMPTION:
            expected = -expected
        assert balance[field] == expected, field

    assert_one_charge_and_refund_per_delivery(
        (transaction_type, delivery_id) for transaction_type, _, _, delivery_id in rows
    )
    return balance["balance"]


def assert_one_charge_and_refund_per_delivery(entries: Iterable[tuple[str, object]]) -> None:
    per_delivery = Counter(
        (transaction_type, delivery_id)
        for transaction_type, delivery_id in entries
        if transaction_type in (T.CREDIT_CONSUMPTION, T.CREDIT_REFUND)
    )
    assert max(per_delivery.values(), default=0) <= 1
    refunded = {delivery_id for (kind, delivery_id) in per_delivery if kind == T.CREDIT_REFUND}
    consumed = {delivery_id for (kind, delivery_id) in per_delivery if kind == T.CREDIT_CONSUMPTION}
    assert refunded <= consumed


def ledger_type_counts(tenant: Tenant) -> dict[str, int]:
    return dict(
        CreditLedger.objects.filter(tenant=tenant)
        .values_list("transaction_type")
        .annotate(n=Count("id"))
        .values_list("transaction_type", "n")
    )
