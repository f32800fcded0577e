"""Where ready leads go (destinations), the delivery state machine and its attempts."""

from __future__ import annotations

import secrets
import uuid

from django.db import models
from django.utils import timezone

from converzia.models import Tenant, TimestampedModel, choices_check
from converzia.tenancy import TenantScopedQuerySet
from leads.models import LeadOffer, Offer


def delivery_webhook_id(delivery_id: uuid.UUID) -> str:
    """Standard Webhooks `webhook-id`: derived from the delivery, so every retry carries the same."""
    return f"msg_{delivery_id.hex}"


class DestinationType(models.TextChoices):
    WEBHOOK = "WEBHOOK"


def new_webhook_secret() -> str:
    """A Standard Webhooks secret: `whsec_` + base64 of 32 random bytes."""
    import base64

    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


class DeliveryDestination(TimestampedModel):
    """A tenant's delivery target. Deliveries are signed with the destination's own secret."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    # Indexed as the leading column of the (tenant, type) unique constraint.
    tenant = models.ForeignKey(
        Tenant, on_delete=models.CASCADE, related_name="delivery_destinations", db_index=False
    )
    destination_type = models.CharField(
        max_length=16, choices=DestinationType.choices, default=DestinationType.WEBHOOK
    )
    url = models.URLField(max_length=500)
    secret = models.CharField(max_length=100, default=new_webhook_secret)
    is_active = models.BooleanField(default=True)
    disabled_at = models.DateTimeField(null=True, blank=True)
    disabled_reason = models.CharField(max_length=300, blank=True)
    last_success_at = models.DateTimeField(null=True, blank=True)
    last_failure_at = models.DateTimeField(null=True, blank=True)

    objects = TenantScopedQuerySet.as_manager()

    class Meta:
        db_table = "delivery_destinations"
        constraints = [
            models.UniqueConstraint(
                fields=["tenant", "destination_type"], name="delivery_destinations_tenant_type_uniq"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.destination_type} {self.url}"

    @property
    def secret_hint(self) -> str:
        return f"{self.secret[:10]}…{self.secret[-4:]}" if self.secret else ""


class DeliveryStatus(models.TextChoices):
    PENDING = "PENDING"
    DELIVERED = "DELIVERED"
    FAILED = "FAILED"
    REFUNDED = "REFUNDED"
    PARTIAL = "PARTIAL"
    DEAD_LETTER = "DEAD_LETTER"


class DeliveryBlockedReason(models.TextChoices):
    """Why a delivery is waiting instead of being sent. It is never charged while it waits."""

    NO_ACTIVE_DESTINATION = "NO_ACTIVE_DESTINATION"
    INSUFFICIENT_CREDITS = "INSUFFICIENT_CREDITS"


class NoChargeReason(models.TextChoices):
    """Why a delivered lead was not charged."""

    DUPLICATE = "DUPLICATE"
    SPAM = "SPAM"
    INCOMPLETE = "INCOMPLETE"
    OUT_OF_ZONE = "OUT_OF_ZONE"
    WAIVED = "WAIVED"


# The delivery state machine (decision D6); a trigger enforces the same moves in the database.
DELIVERY_TRANSITIONS: dict[str, frozenset[str]] = {
    DeliveryStatus.PENDING: frozenset({"DELIVERED", "PARTIAL", "FAILED", "DEAD_LETTER"}),
    DeliveryStatus.FAILED: frozenset({"PENDING", "DELIVERED", "PARTIAL", "DEAD_LETTER"}),
    DeliveryStatus.PARTIAL: frozenset({"DELIVERED", "REFUNDED"}),
    DeliveryStatus.DELIVERED: frozenset({"REFUNDED"}),
    # Staff may retry a dead letter (v1's guard made that impossible) or refund it.
    DeliveryStatus.DEAD_LETTER: frozenset({"PENDING", "REFUNDED"}),
    DeliveryStatus.REFUNDED: frozenset(),
}


class DeliveryQuerySet(TenantScopedQuerySet):
    def due(self, now: timezone.datetime | None = None) -> DeliveryQuerySet:
        now = now or timezone.now()
        return self.filter(
            status__in=[DeliveryStatus.PENDING, DeliveryStatus.FAILED], next_attempt_at__lte=now
        )


class Delivery(TimestampedModel):
    """The "lead ready" package for one lead_offer, sent to the tenant's destination."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    lead_offer = models.OneToOneField(LeadOffer, on_delete=models.CASCADE, related_name="delivery")
    # Indexed as the leading column of idx_deliveries_tenant_status_created.
    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="deliveries", db_index=False)
    offer = models.ForeignKey(
        Offer, null=True, blank=True, on_delete=models.SET_NULL, related_name="deliveries", db_index=False
    )
    destination = models.ForeignKey(
        DeliveryDestination,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="deliveries",
        db_index=False,
    )
    status = models.CharField(max_length=16, choices=DeliveryStatus.choices, default=DeliveryStatus.PENDING)
    payload = models.JSONField()
    attempt_count = models.PositiveSmallIntegerField(default=0)
    next_attempt_at = models.DateTimeField(null=True, blank=True, default=timezone.now)
    last_attempt_at = models.DateTimeField(null=True, blank=True)
    # The attempt limit counts from here: a staff retry of a dead letter grants a fresh set of attempts
    # while attempt numbers keep growing (they are unique per delivery).
    attempt_budget_start = models.PositiveSmallIntegerField(default=0, db_default=0)
    # Set while a dispatcher is sending it (a lease): not claimed again before then, and resent after
    # then if that dispatcher died mid-send.
    claimed_until = models.DateTimeField(null=True, blank=True)
    blocked_reason = models.CharField(max_length=32, choices=DeliveryBlockedReason.choices, blank=True)
    no_charge_reason = models.CharField(max_length=16, choices=NoChargeReason.choices, blank=True)
    error_message = models.TextField(blank=True)
    delivered_at = models.DateTimeField(null=True, blank=True)
    refunded_at = models.DateTimeField(null=True, blank=True)
    dead_letter_at = models.DateTimeField(null=True, blank=True)
    dead_letter_reason = models.TextField(blank=True)
    # The request id of the request that caused it (X-Request-ID allows 128 characters).
    trace_id = models.CharField(max_length=128, blank=True)

    objects = DeliveryQuerySet.as_manager()

    class Meta:
        db_table = "deliveries"
        verbose_name_plural = "deliveries"
        constraints = [
            models.CheckConstraint(
                condition=~models.Q(status__in=["DELIVERED", "PARTIAL"])
                | models.Q(delivered_at__isnull=False),
                name="deliveries_delivered_has_timestamp",
            ),
            choices_check("status", DeliveryStatus, "deliveries_status_valid"),
        ]
        indexes = [
            # Admin revenue counts completed deliveries by `delivered_at`, across tenants, index-only.
            models.Index(
                fields=["delivered_at"],
                include=["tenant", "offer"],
                condition=models.Q(delivered_at__isnull=False),
                name="idx_deliveries_delivered_at",
            ),
            # The guide's queue scan: deliveries by status, newest first.
            models.Index(
                models.F("status"), models.F("created_at").desc(), name="idx_deliveries_status_created"
            ),
            models.Index(
                models.F("tenant"),
                models.F("status"),
                models.F("created_at").desc(),
                name="idx_deliveries_tenant_status_created",
            ),
            # The worker's sweep: what is due to be (re)sent.
            models.Index(
                fields=["next_attempt_at"],
                name="idx_deliveries_due",
                condition=models.Q(status__in=["PENDING", "FAILED"]),
            ),
            # Sends in flight per tenant: the dispatcher's credit reservation counts them.
            models.Index(
                fields=["tenant"],
                name="idx_deliveries_in_flight",
                condition=models.Q(claimed_until__isnull=False),
            ),
        ]

    def __str__(self) -> str:
        return f"delivery {self.pk} ({self.status})"

    @property
    def webhook_id(self) -> str:
        """Standard Webhooks `webhook-id`: stable across retries, so receivers can deduplicate."""
        return delivery_webhook_id(self.pk)


class DeliveryAttempt(models.Model):
    """One try at sending a delivery: what we sent to, what came back, how long it took."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    # Indexed as the leading column of the (delivery, attempt_number) unique constraint.
    delivery = models.ForeignKey(Delivery, on_delete=models.CASCADE, related_name="attempts", db_index=False)
    attempt_number = models.PositiveSmallIntegerField()
    destination = models.ForeignKey(
        DeliveryDestination,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
        db_index=False,
    )
    url = models.URLField(max_length=500, blank=True)
    status_code = models.PositiveSmallIntegerField(null=True, blank=True)
    duration_ms = models.PositiveIntegerField(null=True, blank=True)
    succeeded = models.BooleanField(default=False)
    error = models.TextField(blank=True)
    response_excerpt = models.TextField(blank=True)
    created_at = models.DateTimeField(default=timezone.now, editable=False)

    class Meta:
        db_table = "delivery_attempts"
        ordering = ["delivery", "attempt_number"]
        constraints = [
            models.UniqueConstraint(
                fields=["delivery", "attempt_number"], name="delivery_attempts_delivery_number_uniq"
            ),
        ]

    def __str__(self) -> str:
        return f"attempt {self.attempt_number} → {self.status_code or self.error[:40]}"
