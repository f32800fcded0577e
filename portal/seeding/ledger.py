"""Credits for the demo tenants: trial bonus, purchases when credits run low, a charge per delivery.

The ledger is replayed per tenant in time order, exactly as `billing.services` would have written
it: `balance_after` is the running balance, it never goes below zero (a purchase lands shortly
before the charge that needs it), and the tenant's balance row ends equal to the last entry.
"""

from __future__ import annotations

import datetime as dt
import random
import uuid
from dataclasses import dataclass, field
from decimal import Decimal

from portal.seeding import binary as b
from portal.seeding.plan import DAY_US, HOUR_US, MINUTE_US, DatasetPlan, TenantPlan, stream, uuid4_from

TRIAL_CREDITS = 5

# (name, credits, price): the default catalogue, and larger packs for high-volume tenants.
PACKAGES = (
    ("Starter", 50, Decimal("400")),
    ("Growth", 100, Decimal("700")),
    ("Scale", 250, Decimal("1500")),
    ("Business", 1000, Decimal("5500")),
    ("Enterprise", 2500, Decimal("12000")),
)

LEDGER_COLUMNS = (
    "id", "tenant_id", "transaction_type", "amount", "balance_after", "billing_order_id", "delivery_id",
    "lead_offer_id", "description", "notes", "created_by_id", "created_at",
)  # fmt: skip

_HEADER = b.field_count(len(LEDGER_COLUMNS))
_TYPES = {
    name: b.text(name)
    for name in (
        "CREDIT_PURCHASE",
        "CREDIT_CONSUMPTION",
        "CREDIT_REFUND",
        "CREDIT_BONUS",
        "CREDIT_ADJUSTMENT",
    )
}
_CONSUMPTION_TAIL = b.text("Lead delivery") + b.text("") + b.NULL
_REFUND_NOTES = b.text("Credit refund") + b.text("Lead not chargeable (duplicate or spam).") + b.NULL


@dataclass
class Purchase:
    tenant: TenantPlan
    order_id: uuid.UUID
    paid_us: int
    package: tuple[str, int, Decimal]
    order_number: str = ""


@dataclass
class Balance:
    tenant_id: uuid.UUID
    balance: int = 0
    purchased: int = 0
    consumed: int = 0
    refunded: int = 0
    bonus: int = 0


@dataclass
class LedgerResult:
    rows: list[bytes] = field(default_factory=list)
    purchases: list[Purchase] = field(default_factory=list)
    balances: list[Balance] = field(default_factory=list)


def _package_for(tenant: TenantPlan, months_active: float) -> int:
    """The package a tenant usually buys: about two months of its deliveries."""
    monthly = len(tenant.charges) / max(months_active, 1.0)
    for index, (_, credits, _) in enumerate(PACKAGES):
        if credits >= monthly * 2:
            return index
    return len(PACKAGES) - 1


def ledger_build(plan: DatasetPlan) -> LedgerResult:
    """Replay every active tenant's credits. Order numbers are assigned later (`assign_order_numbers`)."""
    rnd = stream(plan.config.seed, "ledger")
    result = LedgerResult()
    staff_field = b.uuid_field(plan.staff_id.bytes)
    now = plan.config.now_us
    for tenant in plan.tenants:
        if tenant.status != "ACTIVE":
            continue
        _tenant_ledger(tenant, rnd, result, staff_field, now)
    return result


def _tenant_ledger(
    tenant: TenantPlan, rnd: random.Random, result: LedgerResult, staff_field: bytes, now: int
) -> None:
    owner_field = b.uuid_field(tenant.owner.user_id.bytes)
    balance = Balance(tenant.id)
    last = tenant.activated_us
    rows = result.rows

    def append(
        at: int, kind: str, amount: int, tail: bytes, order: bytes = b.NULL, refs: bytes = b""
    ) -> None:
        nonlocal last
        # Strictly increasing per tenant, so "created_at order" is one well-defined order.
        at = max(at, last + 1)
        last = at
        balance.balance += amount
        rows.append(
            b"".join(
                (
                    _HEADER,
                    b.uuid_field(uuid4_from(rnd).bytes),
                    tenant.id_field,
                    _TYPES[kind],
                    b.int4(amount),
                    b.int4(balance.balance),
                    order,
                    refs or b.NULL + b.NULL,
                    tail,
                    b.ts(at),
                )
            )
        )

    append(
        tenant.activated_us + MINUTE_US,
        "CREDIT_BONUS",
        TRIAL_CREDITS,
        b.text("Trial credits") + b.text("") + staff_field,
    )
    balance.bonus += TRIAL_CREDITS

    months_active = (now - tenant.join_us) / (30.44 * DAY_US)
    usual = _package_for(tenant, months_active)
    low_mark = rnd.randint(0, 10)
    # Charges and refunds in time order; at equal times a charge precedes its refund.
    moves = sorted(
        [(at, 0, delivery, lead_offer) for at, delivery, lead_offer in tenant.charges]
        + [(at, 1, delivery, lead_offer) for at, delivery, lead_offer in tenant.refunds]
    )
    for at, is_refund, delivery, lead_offer in moves:
        refs = b.uuid_field(delivery) + b.uuid_field(lead_offer)
        if is_refund:
            append(at, "CREDIT_REFUND", 1, _REFUND_NOTES, refs=refs)
            balance.refunded += 1
            continue
        if balance.balance == 0 or (balance.balance <= low_mark and rnd.random() < 0.2):
            # Bought shortly before it was needed (never before the previous entry).
            gap = at - last
            if gap >= 2:
                paid = at - max(1, int(min(gap - 1, 6 * HOUR_US) * rnd.random()))
            else:
                paid = last + 1
            choice = min(len(PACKAGES) - 1, max(0, usual + (rnd.random() < 0.15) - (rnd.random() < 0.15)))
            package = PACKAGES[choice]
            purchase = Purchase(tenant, uuid4_from(rnd), paid, package)
            result.purchases.append(purchase)
            append(
                paid,
                "CREDIT_PURCHASE",
                package[1],
                b.text(f"Purchase of {package[1]} credits") + b.text("") + owner_field,
                order=b.uuid_field(purchase.order_id.bytes),
            )
            purchase.paid_us = last
            balance.purchased += package[1]
        append(at, "CREDIT_CONSUMPTION", -1, _CONSUMPTION_TAIL, refs=refs)
        balance.consumed += 1
    result.balances.append(balance)


def assign_order_numbers(purchases: list[Purchase], numbers: list[int]) -> None:
    """`YYYY-NNNNNN` like `billing.services.billing_order_number_next`, numbers from its sequence."""
    purchases.sort(key=lambda p: p.paid_us)
    for purchase, number in zip(purchases, numbers, strict=True):
        year = dt.datetime.fromtimestamp(purchase.paid_us / 1e6, tz=dt.UTC).year
        purchase.order_number = f"{year}-{number:06d}"
