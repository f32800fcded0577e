"""Writes of a tenant's delivery destination: configure it, rotate its secret, send it a test event.

Decisions:
- A tenant has at most one WEBHOOK destination (unique on tenant + type); `destination_configure`
  creates or updates it, and the signing secret is shown only when it is created or rotated.
- Rotating or testing without a destination is a `Conflict` (409), not `NotFound`: the route exists,
  the tenant's state does not allow the action yet ("configure a destination first").
- A test send works on an inactive destination too, so a tenant can check a receiver before enabling
  it. It goes through the same address guard and signing as real deliveries, writes no rows and
  stamps nothing (`last_success_at` and `last_failure_at` describe real deliveries only).
"""

from __future__ import annotations

import json
import logging
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.utils import timezone

from converzia.errors import Conflict, InvalidInput
from converzia.models import Tenant, User
from deliveries import outbound
from deliveries.models import (
    DeliveryBlockedReason,
    DeliveryDestination,
    DestinationType,
    new_webhook_secret,
)
from deliveries.selectors import destination_get_for_tenant

logger = logging.getLogger(__name__)

URL_MAX_LENGTH = DeliveryDestination._meta.get_field("url").max_length or 500
TEST_EVENT_TYPE = "converzia.test"
TEST_EVENT_MESSAGE = "This is a test event from Converzia. Your endpoint received and can verify it."
DISABLED_BY_TENANT_REASON = "Disabled in the portal."
NO_DESTINATION_MESSAGE = "No delivery destination is configured yet. Set its URL first."


@dataclass(frozen=True)
class DestinationTestResult:
    """What happened to one test event. `error` is None when the receiver answered 2xx."""

    delivered: bool
    status_code: int | None
    latency_ms: int
    error: str | None
    webhook_id: str


def _url_problems(url: str) -> list[str]:
    """Why `url` cannot be the destination (empty when it can). Cheap checks first: DNS comes last."""
    if not url:
        return ["Enter the URL of your webhook receiver."]
    if len(url) > URL_MAX_LENGTH:
        return [f"The URL must be at most {URL_MAX_LENGTH} characters long."]
    return outbound.url_problems(url, allow_private=settings.DELIVERY_ALLOW_PRIVATE_NETWORKS)


def _destination_locked(tenant: Tenant) -> DeliveryDestination | None:
    return (
        DeliveryDestination.objects.for_tenant(tenant)
        .filter(destination_type=DestinationType.WEBHOOK)
        .select_for_update()
        .first()
    )


def _full_clean(destination: DeliveryDestination) -> None:
    try:
        # The (tenant, type) constraint is the database's job: the create race is handled below.
        destination.full_clean(validate_unique=False, validate_constraints=False)
    except ValidationError as exc:
        raise InvalidInput("The delivery destination is invalid.", details=exc.message_dict) from None


def destination_configure(
    *, tenant: Tenant, url: str, is_active: bool = True, actor: User | None = None
) -> tuple[DeliveryDestination, str | None]:
    """Create or update the tenant's webhook destination.

    Returns the destination and, only when it was created, its new signing secret (shown once; an
    update keeps the secret and returns None). Raises `InvalidInput` with `{"url": [problems]}`
    when the URL cannot be used (the host is resolved and must be public unless
    `DELIVERY_ALLOW_PRIVATE_NETWORKS`). Enabling clears a previous disable (by the tenant or by a
    410 from the receiver); when the destination ends up active, deliveries that were waiting for
    one are requeued in the same transaction.
    """
    url = url.strip()
    # Resolved before the transaction opens: no row lock is held while DNS answers.
    problems = _url_problems(url)
    if problems:
        raise InvalidInput("The destination URL cannot be used.", details={"url": problems})

    with transaction.atomic():
        destination = _destination_locked(tenant)
        secret: str | None = None
        created = False
        if destination is None:
            secret = new_webhook_secret()
            candidate = DeliveryDestination(
                tenant=tenant,
                destination_type=DestinationType.WEBHOOK,
                url=url,
                secret=secret,
                is_active=is_active,
                disabled_at=None if is_active else timezone.now(),
                disabled_reason="" if is_active else DISABLED_BY_TENANT_REASON,
            )
            _full_clean(candidate)
            try:
                with transaction.atomic():
                    candidate.save(force_insert=True)
                destination, created = candidate, True
            except IntegrityError:
                # A concurrent request created it first: update that row instead (its secret stands).
                secret = None
                destination = _destination_locked(tenant)
                if destination is None:  # pragma: no cover - the conflicting row cannot vanish here
                    raise
        if not created:
            assert destination is not None
            _apply_update(destination, url=url, is_active=is_active)

        if destination.is_active:
            # Lazy: the lifecycle module imports this app's models and may import these services.
            from deliveries.services.lifecycle import deliveries_resume_blocked

            resumed = deliveries_resume_blocked(
                tenant_id=tenant.pk, reason=DeliveryBlockedReason.NO_ACTIVE_DESTINATION
            )
        else:
            resumed = 0

    logger.info(
        "delivery destination %s: tenant=%s active=%s resumed=%d",
        "created" if created else "updated",
        tenant.pk,
        destination.is_active,
        resumed,
        extra={
            "tenant_id": str(tenant.pk),
            "destination_id": str(destination.pk),
            "is_active": destination.is_active,
            "resumed_deliveries": resumed,
            "actor_id": str(actor.pk) if actor is not None else None,
        },
    )
    return destination, secret


def _apply_update(destination: DeliveryDestination, *, url: str, is_active: bool) -> None:
    update_fields: list[str] = []
    if destination.url != url:
        destination.url = url
        update_fields.append("url")
    if is_active and (not destination.is_active or destination.disabled_at or destination.disabled_reason):
        destination.is_active, destination.disabled_at, destination.disabled_reason = True, None, ""
        update_fields += ["is_active", "disabled_at", "disabled_reason"]
    elif not is_active and destination.is_active:
        destination.is_active = False
        destination.disabled_at = timezone.now()
        destination.disabled_reason = DISABLED_BY_TENANT_REASON
        update_fields += ["is_active", "disabled_at", "disabled_reason"]
    if update_fields:
        _full_clean(destination)
        destination.save(update_fields=[*update_fields, "updated_at"])


@transaction.atomic
def destination_secret_rotate(*, tenant: Tenant, actor: User | None = None) -> str:
    """Give the tenant's destination a new signing secret and return it (shown once).

    The old secret stops working at once: deliveries signed after this commit use the new one.
    Raises `Conflict` when the tenant has no destination.
    """
    destination = _destination_locked(tenant)
    if destination is None:
        raise Conflict(NO_DESTINATION_MESSAGE)
    destination.secret = new_webhook_secret()
    destination.save(update_fields=["secret", "updated_at"])
    logger.info(
        "delivery destination secret rotated: tenant=%s",
        tenant.pk,
        extra={
            "tenant_id": str(tenant.pk),
            "destination_id": str(destination.pk),
            "actor_id": str(actor.pk) if actor is not None else None,
        },
    )
    return destination.secret


def destination_test_send(*, tenant: Tenant) -> DestinationTestResult:
    """Send a signed `converzia.test` event to the tenant's destination and report what happened.

    Works whether or not the destination is active. Uses the real sender (signing, address guard,
    timeouts); writes nothing. Raises `Conflict` when the tenant has no destination. No transaction:
    nothing is written, and no connection should stay open while a receiver takes its time.
    """
    destination = destination_get_for_tenant(tenant=tenant)
    if destination is None:
        raise Conflict(NO_DESTINATION_MESSAGE)
    sent_at = datetime.now(UTC)
    webhook_id = f"msg_test_{uuid.uuid4().hex}"
    body = json.dumps(
        {
            "type": TEST_EVENT_TYPE,
            "timestamp": sent_at.isoformat(),
            "data": {"tenant_id": str(tenant.pk), "message": TEST_EVENT_MESSAGE},
        },
        separators=(",", ":"),
    ).encode()
    headers = outbound.signed_headers(
        secret=destination.secret, message_id=webhook_id, body=body, sent_at=sent_at
    )
    (sent,) = outbound.send([outbound.OutboundRequest(url=destination.url, body=body, headers=headers)])
    result = DestinationTestResult(
        delivered=sent.succeeded,
        status_code=sent.status_code,
        latency_ms=sent.duration_ms,
        error=None if sent.succeeded else _test_error(sent),
        webhook_id=webhook_id,
    )
    logger.info(
        "delivery destination test: tenant=%s delivered=%s status=%s",
        tenant.pk,
        result.delivered,
        result.status_code,
        extra={
            "tenant_id": str(tenant.pk),
            "destination_id": str(destination.pk),
            "delivered": result.delivered,
            "status_code": result.status_code,
            "latency_ms": result.latency_ms,
            "webhook_id": webhook_id,
        },
    )
    return result


def _test_error(sent: outbound.OutboundResult) -> str:
    if sent.error:
        return sent.error
    return f"The receiver answered HTTP {sent.status_code}; only a 2xx status counts as delivered."
