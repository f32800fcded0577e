"""Queue maintenance: recover jobs of workers that died without a word (SIGKILL, OOM, lost host)."""

from __future__ import annotations

import logging

from django.conf import settings
from procrastinate import JobContext
from procrastinate.contrib.django import app

from converzia.jobs import QUEUE_MAINTENANCE

logger = logging.getLogger(__name__)


@app.periodic(cron="* * * * *", periodic_id="recover-stalled-jobs")
@app.task(
    name="converzia.recover_stalled_jobs",
    queue=QUEUE_MAINTENANCE,
    queueing_lock="converzia.recover_stalled_jobs",
    pass_context=True,
)
async def recover_stalled_jobs(context: JobContext, timestamp: int) -> int:
    """Jobs still `doing` on a worker without a heartbeat for WORKER_STALLED_AFTER_S go back to the
    queue (they are idempotent by design: the domain rows say what is already done)."""
    manager = context.app.job_manager
    stalled_after = settings.WORKER_STALLED_AFTER_S
    stalled = await manager.get_stalled_jobs(seconds_since_heartbeat=stalled_after)
    for job in stalled:
        logger.warning("retrying stalled job %s (%s)", job.id, job.task_name, extra={"job_id": job.id})
        await manager.retry_job(job)
    await manager.prune_stalled_workers(seconds_since_heartbeat=stalled_after)
    return len(stalled)
