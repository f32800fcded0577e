"""The credit ledger (decision D7) and tenant approval. Every function is one transaction.

Every ledger write locks the tenant's balance row (`SELECT … FOR UPDATE`), appends an immutable row
with `balance_after` and updates the balance, so concurrent writers serialise per tenant and the
running balance is exact. A CHECK keeps the balance ≥ 0; partial unique indexes allow one
consumption and one refund per delivery.
"""

from __future__ import annotations

import logging
import uuid
from decimal import Decimal

from django.db import IntegrityError, connection, transaction
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
    CreditLedger,
    CreditTransactionType,
    TenantCreditBalance,
    TenantPricing,
)
from converzia.cache import invalidate_tenant
from converzia.models import MembershipStatus, Tenant, TenantMember, TenantStatus, User

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


def _lock_balance(tenant_id: uuid.UUID) -> TenantCreditBalance:
    # The row may not exist yet; create it race-free, then lock it.
    TenantCreditBalance.objects.bulk_create([TenantCreditBalance(tenant_id=tenant_id)], ignore_conflicts=True)
    return TenantCreditBalance.objects.select_for_update().get(tenant_id=tenant_id)


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
    """Append one ledger row under the tenant's balance lock. Callers are inside `atomic`."""
    if amount == 0:
        raise InvalidAmount("A ledger entry must move at least one credit.")
    balance = _lock_balance(tenant_id)
    new_balance = balance.balance + amount
    if new_balance < 0:
        raise NotEnoughCredits(
            f"The tenant has {balance.balance} credits; {-amount} are needed.",
            details={"balance": balance.balance, "required": -amount},
        )
    entry = CreditLedger(
        tenant_id=tenant_id,
        transaction_type=transaction_type,
        amount=amount,
        balance_after=new_balance,
        billing_order=billing_order,
        delivery_id=delivery_id,
        lead_offer_id=lead_offer_id,
        description=description,
        notes=notes,
        created_by=created_by,
    )
    try:
        with transaction.atomic():
            entry.save(force_insert=True)
    except IntegrityError as exc:
        constraint = getattr(getattr(exc.__cause__, "diag", None), "constraint_name", "") or ""
        if constraint == "idx_credit_ledger_delivery_consumption":
            raise AlreadyCharged() from None
        if constraint == "idx_credit_ledger_delivery_refund":
            raise AlreadyRefunded() from None
        raise

    total_field = _TOTAL_FIELD[transaction_type]
    balance.balance = new_balance
    # Adjustments keep their sign; every other total counts credits moved.
    moved = amount if transaction_type == T.CREDIT_ADJUSTMENT else abs(amount)
    setattr(balance, total_field, getattr(balance, total_field) + moved)
    balance.save(update_fields=["balance", total_field, "updated_at"])
    _alert_if_low(tenant_id=tenant_id, before=new_balance - amount, after=new_balance)
    invalidate_tenant(tenant_id)
    return entry


def _alert_if_low(*, tenant_id: uuid.UUID, before: int, after: int) -> None:
    threshold = (
        TenantPricing.objects.filter(tenant_id=tenant_id)
        .values_list("low_credit_threshold", flat=True)
        .first()
    )
    if threshold is None:
        threshold = 10
    if before >= threshold > after:
        logger.warning(
            "tenant credits fell below threshold",
            extra={"tenant_id": str(tenant_id), "balance": after, "threshold": threshold},
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
