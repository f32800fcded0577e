"""Queue maintenance: recover jobs of workers that died without a word (SIGKILL, OOM, lost host)."""

from __future__ import annotations

import logging

from django.conf import settings
from procrastinate import JobContext
from procrastinate import exceptions as procrastinate_exceptions
from procrastinate.contrib.django import app
from procrastinate.jobs import Status
from procrastinate.manager import QUEUEING_LOCK_CONSTRAINT

from converzia.jobs import QUEUE_MAINTENANCE

logger = logging.getLogger(__name__)

# Checks per stalled window: a dead worker's jobs are back in the queue within ~1.5 windows.
RECOVERY_CHECKS_PER_STALLED_WINDOW = 2


def recovery_cron(stalled_after_s: float) -> str:
    """How often to look for stalled jobs, as a cron spec (procrastinate reads a 6th field as seconds).

    Looking more often than a few times per stalled window finds nothing new; looking only once a
    minute would let a short window (tests, latency-sensitive deployments) wait up to a minute. So:
    twice per window, between every second and every minute. Each check is one indexed query.
    """
    every_s = int(stalled_after_s // RECOVERY_CHECKS_PER_STALLED_WINDOW)
    if every_s >= 60:
        return "* * * * *"
    return f"* * * * * */{max(1, every_s)}"


@app.periodic(cron=recovery_cron(settings.WORKER_STALLED_AFTER_S), periodic_id="recover-stalled-jobs")
@app.task(
    name="converzia.recover_stalled_jobs",
    queue=QUEUE_MAINTENANCE,
    queueing_lock="converzia.recover_stalled_jobs",
    pass_context=True,
)
async def recover_stalled_jobs(context: JobContext, timestamp: int) -> int:
    """Jobs still `doing` on a worker without a heartbeat for WORKER_STALLED_AFTER_S go back to the
    queue (they are idempotent by design: the domain rows say what is already done).

    A stalled job whose queueing lock is already taken by a waiting twin (the inbox sweep re-deferred
    the event while the job hung) cannot go back to `todo`: the twin carries the same work, so the
    stalled one is ended as aborted, which releases its lock and lets the twin run. Each job is
    handled on its own, so one that cannot be recovered never blocks the others.
    """
    manager = context.app.job_manager
    stalled_after = settings.WORKER_STALLED_AFTER_S
    stalled = await manager.get_stalled_jobs(seconds_since_heartbeat=stalled_after)
    recovered = 0
    for job in stalled:
        log_extra = {"job_id": job.id, "task_name": job.task_name}
        try:
            try:
                await manager.retry_job(job)
                logger.warning("retrying stalled job %s (%s)", job.id, job.task_name, extra=log_extra)
            except procrastinate_exceptions.UniqueViolation as exc:
                if exc.constraint_name != QUEUEING_LOCK_CONSTRAINT:
                    raise
                await manager.finish_job(job, status=Status.ABORTED, delete_job=False)
                logger.warning(
                    "stalled job %s (%s) ended: a queued job with its queueing lock %s takes over",
                    job.id,
                    job.task_name,
                    job.queueing_lock,
                    extra=log_extra,
                )
            recovered += 1
        except procrastinate_exceptions.ConnectorException:
            # Typically the job ended meanwhile (its worker was slow, not dead): nothing to recover.
            logger.exception("could not recover stalled job %s (%s)", job.id, job.task_name, extra=log_extra)
    await manager.prune_stalled_workers(seconds_since_heartbeat=stalled_after)
    return recovered
