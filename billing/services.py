"""The credit ledger (decision D7) and tenant approval. Every function is one transaction.

Every ledger write locks the tenant's balance row (`SELECT … FOR UPDATE`), appends an immutable row
with `balance_after` and updates the balance, so concurrent writers serialise per tenant and the
running balance is exact. A CHECK keeps the balance ≥ 0; partial unique indexes allow one
consumption and one refund per delivery.

A write that crosses the tenant's low-credit threshold, or empties the balance, also writes a
`CreditAlert`. After commit each write is counted (`converzia_ledger_entries_total`), each alert is
counted and logged, and a write that adds credits sends `billing.signals.balance_increased`.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass, field
from decimal import Decimal
from functools import partial

from django.db import IntegrityError, connection, transaction
from django.db.models import IntegerField, OuterRef, Subquery, Value
from django.db.models.functions import Coalesce
from django.utils import timezone

from billing.errors import (
    AlreadyCharged,
    AlreadyRefunded,
    InvalidAmount,
    NotEnoughCredits,
    NothingToRefund,
    OrderNotPending,
    TrialAlreadyGranted,
)
from billing.models import (
    BillingOrder,
    BillingOrderStatus,
    CreditAlert,
    CreditAlertType,
    CreditLedger,
    CreditTransactionType,
    TenantCreditBalance,
    TenantPricing,
)
from billing.signals import balance_increased
from converzia.cache import invalidate_tenant
from converzia.metrics import CREDIT_ALERTS, LEDGER_ENTRIES
from converzia.models import MembershipStatus, Tenant, TenantMember, TenantStatus, User
from converzia.request_context import tenant_id_var

logger = logging.getLogger(__name__)
T = CreditTransactionType

# Which running total each transaction type moves.
_TOTAL_FIELD = {
    T.CREDIT_PURCHASE: "total_purchased",
    T.CREDIT_CONSUMPTION: "total_consumed",
    T.CREDIT_REFUND: "total_refunded",
    T.CREDIT_BONUS: "total_bonus",
    T.CREDIT_ADJUSTMENT: "total_adjusted",
}


# The model default applies to a tenant that has no pricing row yet.
DEFAULT_LOW_CREDIT_THRESHOLD: int = TenantPricing._meta.get_field("low_credit_threshold").default


def _lock_balance(tenant_id: uuid.UUID) -> TenantCreditBalance:
    """Lock the tenant's balance row, reading its low-credit threshold in the same statement.

    The row exists once a tenant has any ledger entry, so the hot path is this one query; the first
    entry creates the row race-free, then locks it. The result carries `low_credit_threshold`.

    After waiting for the lock PostgreSQL returns the row's newest version, so the balance is exact;
    the threshold subquery keeps the statement's snapshot, which only delays a threshold change by one
    write. (So nothing that must be exact, like "already charged?", belongs in this statement.)
    """
    (balance,) = _lock_balances([tenant_id])
    return balance


def _lock_balances(tenant_ids: list[uuid.UUID]) -> list[TenantCreditBalance]:
    """`_lock_balance` for several tenants at once, locked in tenant-id order."""
    threshold = Subquery(
        TenantPricing.objects.filter(tenant_id=OuterRef("tenant_id")).values("low_credit_threshold")[:1]
    )
    locked = (
        TenantCreditBalance.objects.select_for_update()
        .filter(tenant_id__in=tenant_ids)
        .annotate(
            low_credit_threshold=Coalesce(
                threshold, Value(DEFAULT_LOW_CREDIT_THRESHOLD), output_field=IntegerField()
            )
        )
        .order_by("tenant_id")
    )
    rows = list(locked)
    if len(rows) < len(tenant_ids):
        missing = set(tenant_ids) - {row.tenant_id for row in rows}
        TenantCreditBalance.objects.bulk_create(
            [TenantCreditBalance(tenant_id=t) for t in sorted(missing)], ignore_conflicts=True
        )
        # `.all()`: a fresh query (the first one's result is cached on the queryset).
        rows = list(locked.all())
    return rows


def _ledger_append(
    *,
    tenant_id: uuid.UUID,
    transaction_type: str,
    amount: int,
    description: str,
    notes: str = "",
    created_by: User | None = None,
    billing_order: BillingOrder | None = None,
    delivery_id: uuid.UUID | None = None,
    lead_offer_id: uuid.UUID | None = None,
) -> CreditLedger:
    """Append one ledger row under the tenant's balance lock. Callers are inside `atomic`.

    Three statements on the hot path (lock + threshold, INSERT, UPDATE), plus one INSERT when the entry
    raises a low-credit alert. Metrics, the alert's log line and `balance_increased` run after commit,
    so a rolled-back entry is never counted, logged or announced.
    """
    if amount == 0:
        raise InvalidAmount("A ledger entry must move at least one credit.")
    balance = _lock_balance(tenant_id)
    before = balance.balance
    after = before + amount
    if after < 0:
        raise NotEnoughCredits(
            f"The tenant has {before} credits; {-amount} are needed.",
            details={"balance": before, "required": -amount},
        )
    entry = CreditLedger(
        tenant_id=tenant_id,
        transaction_type=transaction_type,
        amount=amount,
        balance_after=after,
        billing_order=billing_order,
        delivery_id=delivery_id,
        lead_offer_id=lead_offer_id,
        description=description,
        notes=notes,
        created_by=created_by,
    )
    # No savepoint of our own (two statements saved per write): every caller is an atomic service, which
    # is a savepoint when nested, so a failed INSERT rolls back with it and nothing else runs here.
    try:
        entry.save(force_insert=True)
    except IntegrityError as exc:
        constraint = getattr(getattr(exc.__cause__, "diag", None), "constraint_name", "") or ""
        if constraint == "idx_credit_ledger_delivery_consumption":
            raise AlreadyCharged() from None
        if constraint == "idx_credit_ledger_delivery_refund":
            raise AlreadyRefunded() from None
        raise

    total_field = _TOTAL_FIELD[transaction_type]
    balance.balance = after
    # Adjustments keep their sign; every other total counts credits moved.
    moved = amount if transaction_type == T.CREDIT_ADJUSTMENT else abs(amount)
    setattr(balance, total_field, getattr(balance, total_field) + moved)
    balance.save(update_fields=["balance", total_field, "updated_at"])

    threshold: int = balance.low_credit_threshold
    alert_type = credit_alert_type(before=before, after=after, threshold=threshold)
    if alert_type is not None:
        CreditAlert.objects.create(
            tenant_id=tenant_id,
            alert_type=alert_type,
            balance=after,
            threshold=threshold,
            ledger_entry=entry,
        )
    invalidate_tenant(tenant_id)
    transaction.on_commit(
        partial(
            _ledger_entry_committed,
            tenant_id=tenant_id,
            transaction_type=transaction_type,
            balance=after,
            threshold=threshold,
            alert_type=alert_type,
        )
    )
    if amount > 0:

        def announce_balance_increased() -> None:
            balance_increased.send(sender=CreditLedger, tenant_id=tenant_id, balance=after)

        # Robust: a failing receiver (another domain's) is logged and never breaks the committed write.
        transaction.on_commit(announce_balance_increased, robust=True)
    return entry


def credit_alert_type(*, before: int, after: int, threshold: int) -> CreditAlertType | None:
    """The alert an entry moving the balance from `before` to `after` raises, if any.

    LOW_CREDITS when the balance crosses from at or above the threshold to below it; ZERO_CREDITS when
    it reaches 0 from above. An entry that does both raises ZERO_CREDITS only: one alert per entry, the
    stronger one (reaching 0 implies being below any threshold).
    """
    if before > 0 and after == 0:
        return CreditAlertType.ZERO_CREDITS
    if before >= threshold > after:
        return CreditAlertType.LOW_CREDITS
    return None


def _ledger_entry_committed(
    *,
    tenant_id: uuid.UUID,
    transaction_type: str,
    balance: int,
    threshold: int,
    alert_type: CreditAlertType | None,
    count: int = 1,
) -> None:
    LEDGER_ENTRIES.labels(transaction_type).inc(count)
    if alert_type is None:
        return
    CREDIT_ALERTS.labels(alert_type).inc()
    # The logging filter stamps every record with the context's tenant (none in a worker), which would
    # overwrite `extra["tenant_id"]`; this line is about this tenant wherever it runs.
    token = tenant_id_var.set(str(tenant_id))
    try:
        _log_alert(tenant_id=tenant_id, balance=balance, threshold=threshold, alert_type=alert_type)
    finally:
        tenant_id_var.reset(token)


def _log_alert(*, tenant_id: uuid.UUID, balance: int, threshold: int, alert_type: CreditAlertType) -> None:
    logger.warning(
        "tenant credits are low" if alert_type == CreditAlertType.LOW_CREDITS else "tenant credits ran out",
        extra={
            "tenant_id": str(tenant_id),
            "balance": balance,
            "threshold": threshold,
            "alert_type": str(alert_type),
        },
    )


def credit_balance_get(*, tenant: Tenant) -> int:
    """The one balance definition: the tenant's balance row (0 when it has none yet)."""
    value = TenantCreditBalance.objects.filter(tenant=tenant).values_list("balance", flat=True).first()
    return value or 0


def billing_order_number_next() -> str:
    """`YYYY-NNNNNN` from a sequence: unique even when two orders are created at once."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT nextval('billing_order_number_seq')")
        (number,) = cursor.fetchone()
    return f"{timezone.now():%Y}-{number:06d}"


@transaction.atomic
def credit_purchase_record(
    *,
    tenant: Tenant,
    credits: int,
    total: Decimal,
    actor: User | None = None,
    package_name: str = "",
    payment_reference: str = "",
    currency: str = "USD",
) -> BillingOrder:
    """Record a paid purchase: the completed order and its credits, in one transaction."""
    if credits <= 0:
        raise InvalidAmount(
            "A purchase must add at least one credit.", details={"credits": ["Must be positive."]}
        )
    if total < 0:
        raise InvalidAmount("The total cannot be negative.", details={"total": ["Must not be negative."]})
    order = BillingOrder.objects.create(
        tenant=tenant,
        order_number=billing_order_number_next(),
        package_name=package_name,
        credits_purchased=credits,
        subtotal=total,
        total=total,
        currency=currency,
        status=BillingOrderStatus.PENDING,
        payment_reference=payment_reference,
        created_by=actor,
    )
    return billing_order_complete(order=order, actor=actor)


@transaction.atomic
def billing_order_complete(*, order: BillingOrder, actor: User | None = None) -> BillingOrder:
    """Mark a pending order paid and credit it. Completing an already completed order is a no-op."""
    order = BillingOrder.objects.select_for_update().get(pk=order.pk)
    if order.status == BillingOrderStatus.COMPLETED:
        return order
    if order.status != BillingOrderStatus.PENDING:
        raise OrderNotPending(details={"status": order.status})
    order.status = BillingOrderStatus.COMPLETED
    order.paid_at = timezone.now()
    order.save(update_fields=["status", "paid_at", "updated_at"])
    _ledger_append(
        tenant_id=order.tenant_id,
        transaction_type=T.CREDIT_PURCHASE,
        amount=order.credits_purchased,
        billing_order=order,
        description=f"Purchase of {order.credits_purchased} credits ({order.order_number})",
        created_by=actor,
    )
    return order


@transaction.atomic
def trial_credits_grant(
    *, tenant: Tenant, actor: User | None = None, amount: int | None = None
) -> CreditLedger:
    """Grant the one-time trial credits. A second grant raises `TrialAlreadyGranted`."""
    tenant = Tenant.objects.select_for_update().get(pk=tenant.pk)
    if tenant.trial_credits_granted:
        raise TrialAlreadyGranted()
    if amount is None:
        pricing = TenantPricing.objects.filter(tenant=tenant).first()
        amount = pricing.default_trial_credits if pricing else 5
    if amount <= 0:
        raise InvalidAmount("Trial credits must be positive.")
    entry = _ledger_append(
        tenant_id=tenant.pk,
        transaction_type=T.CREDIT_BONUS,
        amount=amount,
        description="Trial credits",
        created_by=actor,
    )
    tenant.trial_credits_granted = True
    tenant.trial_credits_amount = amount
    tenant.trial_granted_at = timezone.now()
    tenant.trial_granted_by = actor
    tenant.save(
        update_fields=[
            "trial_credits_granted",
            "trial_credits_amount",
            "trial_granted_at",
            "trial_granted_by",
            "updated_at",
        ]
    )
    return entry


@transaction.atomic
def credit_bonus_grant(
    *, tenant: Tenant, amount: int, reason: str, actor: User | None = None
) -> CreditLedger:
    if amount <= 0:
        raise InvalidAmount("A bonus must be positive.", details={"amount": ["Must be positive."]})
    return _ledger_append(
        tenant_id=tenant.pk,
        transaction_type=T.CREDIT_BONUS,
        amount=amount,
        description="Bonus credits",
        notes=reason,
        created_by=actor,
    )


@transaction.atomic
def credit_adjust(*, tenant: Tenant, amount: int, reason: str, actor: User) -> CreditLedger:
    """A staff correction, positive or negative, always with a reason."""
    if not reason.strip():
        raise InvalidAmount("An adjustment needs a reason.", details={"reason": ["This field is required."]})
    return _ledger_append(
        tenant_id=tenant.pk,
        transaction_type=T.CREDIT_ADJUSTMENT,
        amount=amount,
        description="Staff adjustment",
        notes=reason,
        created_by=actor,
    )


@transaction.atomic
def credit_consume(
    *,
    tenant_id: uuid.UUID,
    delivery_id: uuid.UUID,
    lead_offer_id: uuid.UUID,
    description: str = "Lead delivery",
) -> CreditLedger:
    """Charge one credit for a delivery. Raises `NotEnoughCredits` or `AlreadyCharged`."""
    return _ledger_append(
        tenant_id=tenant_id,
        transaction_type=T.CREDIT_CONSUMPTION,
        amount=-1,
        delivery_id=delivery_id,
        lead_offer_id=lead_offer_id,
        description=description,
    )


@dataclass(frozen=True)
class Charge:
    """One credit to consume for one delivery (see `credit_consume_many`)."""

    tenant_id: uuid.UUID
    delivery_id: uuid.UUID
    lead_offer_id: uuid.UUID
    description: str = "Lead delivery"
    # Known before the write, so a caller can reference the ledger row in rows it writes first.
    entry_id: uuid.UUID = field(default_factory=uuid.uuid4)


@transaction.atomic
def credit_consume_many(
    charges: list[Charge],
) -> dict[uuid.UUID, CreditLedger | NotEnoughCredits | AlreadyCharged]:
    """Consume one credit per delivery for a batch of deliveries, in a handful of statements.

    The batch path of `credit_consume` (the dispatcher settles a hundred deliveries at a time) with the
    same rules: every tenant's balance row is locked first, in tenant-id order (so concurrent batches
    never deadlock), then "already charged?" is read under those locks (any other consumer of the same
    delivery must wait for the same lock, so the answer is exact), then the rows are appended with an
    exact running `balance_after`, and each balance updated once. Returns, per delivery, its ledger
    row or the error it would have raised; nothing is charged for an error.
    """
    results: dict[uuid.UUID, CreditLedger | NotEnoughCredits | AlreadyCharged] = {}
    if not charges:
        return results
    tenant_ids = sorted({c.tenant_id for c in charges})
    balances = {b.tenant_id: b for b in _lock_balances(tenant_ids)}
    already = set(
        CreditLedger.objects.filter(
            delivery_id__in=[c.delivery_id for c in charges], transaction_type=T.CREDIT_CONSUMPTION
        ).values_list("delivery_id", flat=True)
    )
    before = {tenant_id: balance.balance for tenant_id, balance in balances.items()}
    running = dict(before)
    entries: list[CreditLedger] = []
    for charge in charges:
        if charge.delivery_id in results:
            continue  # the same delivery twice in one batch: its first outcome stands
        if charge.delivery_id in already:
            results[charge.delivery_id] = AlreadyCharged()
            continue
        if running[charge.tenant_id] < 1:
            results[charge.delivery_id] = NotEnoughCredits(
                f"The tenant has {running[charge.tenant_id]} credits; 1 is needed.",
                details={"balance": running[charge.tenant_id], "required": 1},
            )
            continue
        running[charge.tenant_id] -= 1
        already.add(charge.delivery_id)
        entry = CreditLedger(
            id=charge.entry_id,
            tenant_id=charge.tenant_id,
            transaction_type=T.CREDIT_CONSUMPTION,
            amount=-1,
            balance_after=running[charge.tenant_id],
            delivery_id=charge.delivery_id,
            lead_offer_id=charge.lead_offer_id,
            description=charge.description,
        )
        entries.append(entry)
        results[charge.delivery_id] = entry
    if not entries:
        return results
    CreditLedger.objects.bulk_create(entries)
    consumed = {tenant_id: before[tenant_id] - running[tenant_id] for tenant_id in tenant_ids}
    last_entry = {entry.tenant_id: entry for entry in entries}
    alerts = []
    now = timezone.now()
    changed = [balances[t] for t in tenant_ids if consumed[t]]
    for balance in changed:
        balance.balance = running[balance.tenant_id]
        balance.total_consumed += consumed[balance.tenant_id]
        balance.updated_at = now
    # One UPDATE for every tenant of the batch (the rows are locked above).
    TenantCreditBalance.objects.bulk_update(changed, ["balance", "total_consumed", "updated_at"])
    for tenant_id in tenant_ids:
        if not consumed[tenant_id]:
            continue
        threshold: int = balances[tenant_id].low_credit_threshold
        alert_type = credit_alert_type(
            before=before[tenant_id], after=running[tenant_id], threshold=threshold
        )
        if alert_type is not None:
            alerts.append(
                CreditAlert(
                    tenant_id=tenant_id,
                    alert_type=alert_type,
                    balance=running[tenant_id],
                    threshold=threshold,
                    ledger_entry=last_entry[tenant_id],
                )
            )
        invalidate_tenant(tenant_id)
        transaction.on_commit(
            partial(
                _ledger_entry_committed,
                tenant_id=tenant_id,
                transaction_type=T.CREDIT_CONSUMPTION,
                balance=running[tenant_id],
                threshold=threshold,
                alert_type=alert_type,
                count=consumed[tenant_id],
            )
        )
    CreditAlert.objects.bulk_create(alerts)
    return results


@transaction.atomic
def credit_refund(
    *, tenant_id: uuid.UUID, delivery_id: uuid.UUID, reason: str, actor: User | None = None
) -> CreditLedger:
    """Give back the credit a delivery consumed. Only a consumed delivery can be refunded, once."""
    consumption = CreditLedger.objects.filter(
        tenant_id=tenant_id, delivery_id=delivery_id, transaction_type=T.CREDIT_CONSUMPTION
    ).first()
    if consumption is None:
        raise NothingToRefund()
    return _ledger_append(
        tenant_id=tenant_id,
        transaction_type=T.CREDIT_REFUND,
        amount=-consumption.amount,
        delivery_id=delivery_id,
        lead_offer_id=consumption.lead_offer_id,
        description="Credit refund",
        notes=reason,
        created_by=actor,
    )


@transaction.atomic
def tenant_approve(*, tenant: Tenant, actor: User | None = None) -> Tenant:
    """Approve a tenant: ACTIVE, its pending memberships ACTIVE, default pricing, trial credits.

    All in one transaction (v1 did these steps one by one). Approving twice changes nothing more.
    """
    tenant = Tenant.objects.select_for_update().get(pk=tenant.pk)
    now = timezone.now()
    if tenant.status != TenantStatus.ACTIVE:
        tenant.status = TenantStatus.ACTIVE
        tenant.activated_at = tenant.activated_at or now
        tenant.rejected_at = None
        tenant.rejected_reason = ""
        tenant.save(update_fields=["status", "activated_at", "rejected_at", "rejected_reason", "updated_at"])
    TenantMember.objects.filter(tenant=tenant, status=MembershipStatus.PENDING_APPROVAL).update(
        status=MembershipStatus.ACTIVE, approved_by=actor, approved_at=now, updated_at=now
    )
    TenantPricing.objects.get_or_create(tenant=tenant)
    if not tenant.trial_credits_granted:
        trial_credits_grant(tenant=tenant, actor=actor)
        # The grant saved its own copy of the row; callers serialise what we return.
        tenant.refresh_from_db()
    return tenant


@transaction.atomic
def tenant_reject(*, tenant: Tenant, reason: str, actor: User | None = None) -> Tenant:
    tenant = Tenant.objects.select_for_update().get(pk=tenant.pk)
    tenant.rejected_at = timezone.now()
    tenant.rejected_reason = reason
    tenant.save(update_fields=["rejected_at", "rejected_reason", "updated_at"])
    TenantMember.objects.filter(tenant=tenant, status=MembershipStatus.PENDING_APPROVAL).update(
        status=MembershipStatus.REVOKED,
        rejected_at=tenant.rejected_at,
        rejected_reason=reason,
        # QuerySet.update() skips auto_now.
        updated_at=tenant.rejected_at,
    )
    return tenant
