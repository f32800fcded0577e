"""Pricing, credit purchases, the immutable credit ledger and each tenant's balance row."""

from __future__ import annotations

import uuid
from decimal import Decimal

from django.conf import settings as django_settings
from django.db import models
from django.utils import timezone

from converzia.models import Tenant, TimestampedModel
from converzia.tenancy import TenantScopedQuerySet
from leads.models import AdPlatform, LeadOffer, Offer

# Bound once: several models have a field called `settings`.
USER_MODEL = django_settings.AUTH_USER_MODEL


class ChargeModel(models.TextChoices):
    PER_LEAD = "PER_LEAD"
    PER_SALE = "PER_SALE"
    SUBSCRIPTION = "SUBSCRIPTION"


class CreditTransactionType(models.TextChoices):
    CREDIT_PURCHASE = "CREDIT_PURCHASE"
    CREDIT_CONSUMPTION = "CREDIT_CONSUMPTION"
    CREDIT_REFUND = "CREDIT_REFUND"
    CREDIT_ADJUSTMENT = "CREDIT_ADJUSTMENT"
    CREDIT_BONUS = "CREDIT_BONUS"


class BillingOrderStatus(models.TextChoices):
    PENDING = "pending"
    COMPLETED = "completed"
    FAILED = "failed"
    REFUNDED = "refunded"


def default_packages() -> list[dict[str, object]]:
    return [
        {"id": "starter", "name": "Starter", "credits": 50, "price": 400},
        {
            "id": "growth",
            "name": "Growth",
            "credits": 100,
            "price": 700,
            "discount_pct": 12.5,
            "is_popular": True,
        },
        {"id": "scale", "name": "Scale", "credits": 250, "price": 1500, "discount_pct": 25},
    ]


class TenantPricing(TimestampedModel):
    """Exactly one row per tenant: what a delivered lead costs and the credit packages on sale."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    tenant = models.OneToOneField(Tenant, on_delete=models.CASCADE, related_name="pricing")
    charge_model = models.CharField(max_length=16, choices=ChargeModel.choices, default=ChargeModel.PER_LEAD)
    cost_per_lead = models.DecimalField(max_digits=10, decimal_places=2, default=Decimal("10.00"))
    currency = models.CharField(max_length=3, default="USD")
    success_fee_percentage = models.DecimalField(max_digits=5, decimal_places=2, null=True, blank=True)
    success_fee_flat = models.DecimalField(max_digits=10, decimal_places=2, null=True, blank=True)
    packages = models.JSONField(default=default_packages, blank=True)
    low_credit_threshold = models.PositiveIntegerField(default=10)
    auto_refund_duplicates = models.BooleanField(default=True)
    auto_refund_spam = models.BooleanField(default=True)
    default_trial_credits = models.PositiveIntegerField(default=5)

    objects = TenantScopedQuerySet.as_manager()

    class Meta:
        db_table = "tenant_pricing"
        verbose_name_plural = "tenant pricing"
        constraints = [
            models.CheckConstraint(
                condition=models.Q(cost_per_lead__gte=0), name="tenant_pricing_cost_non_negative"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.tenant}: {self.cost_per_lead} {self.currency}/lead"


class BillingOrder(TimestampedModel):
    """A credit package purchase. Completing it and crediting the ledger happen in one transaction."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    # Indexed as the leading column of idx_billing_orders_tenant_status_paid.
    tenant = models.ForeignKey(
        Tenant, on_delete=models.CASCADE, related_name="billing_orders", db_index=False
    )
    # `YYYY-NNNNNN` from a database sequence, so two concurrent orders never share a number.
    order_number = models.CharField(max_length=20, unique=True)
    package_name = models.CharField(max_length=100, blank=True)
    credits_purchased = models.PositiveIntegerField()
    subtotal = models.DecimalField(max_digits=10, decimal_places=2)
    discount_amount = models.DecimalField(max_digits=10, decimal_places=2, default=Decimal("0"))
    tax_amount = models.DecimalField(max_digits=10, decimal_places=2, default=Decimal("0"))
    total = models.DecimalField(max_digits=10, decimal_places=2)
    currency = models.CharField(max_length=3, default="USD")
    status = models.CharField(
        max_length=16, choices=BillingOrderStatus.choices, default=BillingOrderStatus.PENDING
    )
    payment_reference = models.CharField(max_length=200, blank=True, help_text="Receipt or provider id.")
    paid_at = models.DateTimeField(null=True, blank=True)
    notes = models.TextField(blank=True)
    created_by = models.ForeignKey(
        USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
        db_index=False,
    )

    objects = TenantScopedQuerySet.as_manager()

    class Meta:
        db_table = "billing_orders"
        constraints = [
            models.CheckConstraint(
                condition=models.Q(credits_purchased__gt=0), name="billing_orders_credits_positive"
            ),
            models.CheckConstraint(
                condition=models.Q(total__gte=0), name="billing_orders_total_non_negative"
            ),
            models.CheckConstraint(
                condition=~models.Q(status="completed") | models.Q(paid_at__isnull=False),
                name="billing_orders_completed_has_paid_at",
            ),
        ]
        indexes = [
            models.Index(
                models.F("tenant"),
                models.F("status"),
                models.F("paid_at").desc(nulls_last=True),
                name="idx_billing_orders_tenant_status_paid",
            ),
        ]

    def __str__(self) -> str:
        return self.order_number


class CreditLedger(models.Model):
    """The immutable, append-only credit journal. Rows are written only by `billing.services`.

    Each write locks the tenant's balance row, so `balance_after` is the exact running balance.
    A database trigger rejects UPDATEs; the partial unique indexes allow one consumption and one
    refund per delivery.
    """

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    # Indexed as the leading column of idx_credit_ledger_tenant_type_created.
    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="credit_ledger", db_index=False)
    transaction_type = models.CharField(max_length=24, choices=CreditTransactionType.choices)
    amount = models.IntegerField(help_text="Signed: + adds credits, − removes them.")
    balance_after = models.IntegerField()
    # Indexed through the partial unique "one purchase per order".
    billing_order = models.ForeignKey(
        BillingOrder,
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="ledger_entries",
        db_index=False,
    )
    # Indexed through the partial unique indexes per delivery. String reference: deliveries → billing.
    delivery = models.ForeignKey(
        "deliveries.Delivery",
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="ledger_entries",
        db_index=False,
    )
    # Charged leads are anonymised, never deleted, so PROTECT never scans in practice.
    lead_offer = models.ForeignKey(
        LeadOffer,
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="ledger_entries",
        db_index=False,
    )
    description = models.CharField(max_length=300, blank=True)
    notes = models.TextField(blank=True)
    created_by = models.ForeignKey(
        USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="+",
        db_index=False,
    )
    created_at = models.DateTimeField(default=timezone.now, editable=False)

    objects = TenantScopedQuerySet.as_manager()

    class Meta:
        db_table = "credit_ledger"
        verbose_name_plural = "credit ledger"
        constraints = [
            models.CheckConstraint(
                condition=models.Q(balance_after__gte=0), name="credit_ledger_balance_after_non_negative"
            ),
            models.CheckConstraint(
                condition=(
                    models.Q(transaction_type="CREDIT_CONSUMPTION", amount__lt=0)
                    | models.Q(
                        transaction_type__in=["CREDIT_PURCHASE", "CREDIT_REFUND", "CREDIT_BONUS"],
                        amount__gt=0,
                    )
                    | (models.Q(transaction_type="CREDIT_ADJUSTMENT") & ~models.Q(amount=0))
                ),
                name="credit_ledger_amount_sign_matches_type",
            ),
            models.CheckConstraint(
                condition=~models.Q(transaction_type__in=["CREDIT_CONSUMPTION", "CREDIT_REFUND"])
                | models.Q(delivery__isnull=False),
                name="credit_ledger_charge_has_delivery",
            ),
            # The double-charge guard: one consumption per delivery.
            models.UniqueConstraint(
                fields=["delivery"],
                name="idx_credit_ledger_delivery_consumption",
                condition=models.Q(transaction_type="CREDIT_CONSUMPTION"),
            ),
            # And one refund per delivery.
            models.UniqueConstraint(
                fields=["delivery"],
                name="idx_credit_ledger_delivery_refund",
                condition=models.Q(transaction_type="CREDIT_REFUND"),
            ),
            models.UniqueConstraint(
                fields=["billing_order"],
                name="idx_credit_ledger_order_purchase",
                condition=models.Q(transaction_type="CREDIT_PURCHASE"),
            ),
        ]
        indexes = [
            models.Index(
                models.F("tenant"),
                models.F("transaction_type"),
                models.F("created_at").desc(),
                name="idx_credit_ledger_tenant_type_created",
            ),
            # The tenant's ledger page, newest first, whatever the type.
            models.Index(
                models.F("tenant"),
                models.F("created_at").desc(),
                models.F("id").desc(),
                name="idx_credit_ledger_tenant_created",
            ),
            # Admin revenue sums charges and refunds by day across tenants, index-only.
            models.Index(
                fields=["created_at"],
                include=["tenant", "transaction_type", "amount"],
                condition=models.Q(transaction_type__in=["CREDIT_CONSUMPTION", "CREDIT_REFUND"]),
                name="idx_credit_ledger_charges_created",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.transaction_type} {self.amount:+d} → {self.balance_after}"


class TenantCreditBalance(models.Model):
    """One row per tenant: the balance every ledger write locks (`SELECT … FOR UPDATE`) and updates.

    The single definition of a tenant's balance. The CHECK keeps it from ever going negative.
    """

    tenant = models.OneToOneField(
        Tenant, primary_key=True, on_delete=models.CASCADE, related_name="credit_balance"
    )
    balance = models.IntegerField(default=0)
    total_purchased = models.PositiveIntegerField(default=0)
    total_consumed = models.PositiveIntegerField(default=0)
    total_refunded = models.PositiveIntegerField(default=0)
    total_bonus = models.PositiveIntegerField(default=0)
    total_adjusted = models.IntegerField(default=0)
    updated_at = models.DateTimeField(auto_now=True)

    objects = TenantScopedQuerySet.as_manager()

    class Meta:
        db_table = "tenant_credit_balances"
        constraints = [
            models.CheckConstraint(
                condition=models.Q(balance__gte=0), name="tenant_credit_balances_non_negative"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.tenant}: {self.balance}"


class CreditAlertType(models.TextChoices):
    LOW_CREDITS = "LOW_CREDITS"
    ZERO_CREDITS = "ZERO_CREDITS"


class CreditAlert(models.Model):
    """A tenant's balance crossed below its low-credit threshold, or reached 0, with one ledger entry.

    Written by `billing.services` in the ledger entry's transaction, so an alert exists exactly when its
    entry does. One alert per entry at most: an entry that both crosses the threshold and empties the
    balance writes ZERO_CREDITS only (the stronger message; it implies the other).
    """

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    # Indexed as the leading column of idx_credit_alerts_tenant_created.
    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="credit_alerts", db_index=False)
    alert_type = models.CharField(max_length=16, choices=CreditAlertType.choices)
    balance = models.IntegerField(help_text="The balance after the entry.")
    threshold = models.PositiveIntegerField(help_text="The tenant's low-credit threshold at the time.")
    # RESTRICT, not PROTECT: a ledger row cannot be deleted on its own while an alert points at it, but
    # deleting the tenant cascades to both (PROTECT would block that). Unique: one alert per entry; its
    # index also serves the FK check when a tenant's ledger rows are deleted.
    ledger_entry = models.OneToOneField(CreditLedger, on_delete=models.RESTRICT, related_name="credit_alert")
    created_at = models.DateTimeField(default=timezone.now, editable=False)

    objects = TenantScopedQuerySet.as_manager()

    class Meta:
        db_table = "credit_alerts"
        indexes = [
            models.Index(
                models.F("tenant"), models.F("created_at").desc(), name="idx_credit_alerts_tenant_created"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.alert_type} {self.tenant_id}: {self.balance} (threshold {self.threshold})"


class PlatformCost(models.Model):
    """Ad spend per ad and period, synced from the ad platform; feeds revenue and attributed cost."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    # Indexed as the leading column of the unique key.
    tenant = models.ForeignKey(
        Tenant, on_delete=models.CASCADE, related_name="platform_costs", db_index=False
    )
    offer = models.ForeignKey(
        Offer, null=True, blank=True, on_delete=models.SET_NULL, related_name="platform_costs", db_index=False
    )
    platform = models.CharField(max_length=16, choices=AdPlatform.choices, default=AdPlatform.META)
    campaign_id = models.CharField(max_length=64, blank=True)
    campaign_name = models.CharField(max_length=300, blank=True)
    adset_id = models.CharField(max_length=64, blank=True)
    adset_name = models.CharField(max_length=300, blank=True)
    ad_id = models.CharField(max_length=64)
    ad_name = models.CharField(max_length=300, blank=True)
    spend = models.DecimalField(max_digits=12, decimal_places=2, default=Decimal("0"))
    impressions = models.PositiveBigIntegerField(default=0)
    clicks = models.PositiveBigIntegerField(default=0)
    leads_raw = models.PositiveIntegerField(default=0)
    date_start = models.DateField()
    date_end = models.DateField()
    synced_at = models.DateTimeField(default=timezone.now)
    platform_data = models.JSONField(default=dict, blank=True)

    objects = TenantScopedQuerySet.as_manager()

    class Meta:
        db_table = "platform_costs"
        constraints = [
            models.UniqueConstraint(
                fields=["tenant", "platform", "ad_id", "date_start", "date_end"],
                name="platform_costs_period_uniq",
            ),
            models.CheckConstraint(
                condition=models.Q(date_end__gte=models.F("date_start")), name="platform_costs_period_ordered"
            ),
            models.CheckConstraint(
                condition=models.Q(spend__gte=0), name="platform_costs_spend_non_negative"
            ),
        ]
        indexes = [
            # The admin list, newest periods first.
            models.Index(fields=["date_start", "date_end"], name="idx_platform_costs_date"),
            # Admin revenue: the periods overlapping a range (date_end >= its start), index-only. Ranges
            # are recent, so the periods that end after the start are few; `date_start <= end` filters
            # inside the index.
            models.Index(
                fields=["date_end"],
                include=["date_start", "tenant", "offer", "spend"],
                name="idx_platform_costs_date_end",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.ad_id} {self.date_start}…{self.date_end}: {self.spend}"
