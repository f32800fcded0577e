"""Keeps `tenant_stats_materialized` fresh (decision D8): refreshed concurrently every
`STATS_REFRESH_EVERY_S` (60 s by default), never two refreshes at once (the refresh's advisory lock;
the queueing lock also keeps at most one refresh job waiting). `manage.py refresh_stats` stays for
operators."""

from __future__ import annotations

import logging

from django.conf import settings
from procrastinate.contrib.django import app

from converzia.jobs import QUEUE_MAINTENANCE, db_job, every_seconds_cron
from portal.stats_view import StatsRefreshInProgress, tenant_stats_refresh

logger = logging.getLogger(__name__)


@app.periodic(cron=every_seconds_cron(settings.STATS_REFRESH_EVERY_S), periodic_id="refresh-tenant-stats")
@app.task(
    name="portal.refresh_tenant_stats", queue=QUEUE_MAINTENANCE, queueing_lock="portal.refresh_tenant_stats"
)
@db_job
def refresh_tenant_stats(timestamp: int) -> bool:
    """Returns False when another refresh was running (it will serve the same freshness)."""
    try:
        tenant_stats_refresh()
    except StatsRefreshInProgress:
        logger.info("stats view refresh skipped: another refresh is running")
        return False
    return True
