"""Writes of the deliveries domain, by concern:

- `lifecycle`: a lead becoming ready creates its delivery; completion charges it once; retry, refund.
- `dispatch`: the dispatcher job's claim → send → settle loop.
- `destinations`: the tenant's webhook destination (configure, rotate the secret, test).
"""

from deliveries.services.destinations import (
    DestinationTestResult,
    destination_configure,
    destination_secret_rotate,
    destination_test_send,
)
from deliveries.services.dispatch import (
    deliveries_claim,
    deliveries_dispatch,
    deliveries_due_exist,
    deliveries_fail,
    deliveries_send,
    dispatcher_wake,
)
from deliveries.services.lifecycle import (
    SendRecord,
    deliveries_complete,
    deliveries_resume_blocked,
    delivery_complete,
    delivery_create_for_ready,
    delivery_refund,
    delivery_retry,
    lead_offer_advance,
    lead_offer_qualify,
)

__all__ = [
    "DestinationTestResult",
    "destination_configure",
    "destination_secret_rotate",
    "destination_test_send",
    "SendRecord",
    "deliveries_claim",
    "deliveries_complete",
    "deliveries_dispatch",
    "deliveries_due_exist",
    "deliveries_fail",
    "deliveries_resume_blocked",
    "deliveries_send",
    "delivery_complete",
    "delivery_create_for_ready",
    "delivery_refund",
    "delivery_retry",
    "dispatcher_wake",
    "lead_offer_advance",
    "lead_offer_qualify",
]
