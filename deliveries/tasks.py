"""Delivery jobs. Thin: the work is in `deliveries.services.dispatch`, which tests call directly."""

from __future__ import annotations

import logging

from procrastinate.contrib.django import app

from converzia.jobs import QUEUE_DELIVERIES, QUEUE_MAINTENANCE, db_job
from deliveries.services.dispatch import deliveries_dispatch, deliveries_due_exist, dispatcher_wake

logger = logging.getLogger(__name__)


# No procrastinate retry: a failed run leaves its deliveries due (or leased, then due), and the
# sweep below wakes a new dispatcher within seconds. (A retry would also collide with the queueing
# lock of a dispatcher queued meanwhile.)
@app.task(name="deliveries.dispatch", queue=QUEUE_DELIVERIES)
@db_job
def dispatch_deliveries() -> int:
    """One dispatcher run; returns how many deliveries it delivered."""
    try:
        report = deliveries_dispatch()
    except Exception:
        logger.exception("dispatcher run failed")
        raise
    if report.batches:
        logger.info("dispatcher run", extra={"batches": report.batches, **report.outcomes})
    return report.outcomes["delivered"]


@app.periodic(cron="* * * * * */5", periodic_id="wake-delivery-dispatcher")
@app.task(name="deliveries.sweep_due", queue=QUEUE_MAINTENANCE, queueing_lock="deliveries.sweep_due")
@db_job
def sweep_due_deliveries(timestamp: int) -> bool:
    """Every 5 s: wake a dispatcher when deliveries are due (retries coming due, lost jobs, leases
    of dead workers running out). One indexed EXISTS query when there is nothing to do."""
    return deliveries_due_exist() and dispatcher_wake()
