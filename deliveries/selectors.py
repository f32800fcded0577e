"""Reads of the deliveries domain."""

from __future__ import annotations

from converzia.models import Tenant
from deliveries.models import DeliveryDestination, DestinationType


def destination_get_for_tenant(*, tenant: Tenant) -> DeliveryDestination | None:
    """The tenant's webhook destination, or None when it has not configured one."""
    return (
        DeliveryDestination.objects.for_tenant(tenant)
        .filter(destination_type=DestinationType.WEBHOOK)
        .first()
    )
