"""Ingestion jobs. Thin: the work is in `leads.ingestion`, which tests call directly."""

from __future__ import annotations

from procrastinate import JobContext, RetryStrategy
from procrastinate.contrib.django import app
from procrastinate.jobs import Job
from procrastinate.retry import RetryDecision

from converzia.jobs import QUEUE_INGESTION, QUEUE_MAINTENANCE, backoff, db_job, every_seconds_cron
from leads.counters import lead_offer_counts_compact
from leads.ingestion import InboxRetryLater, inbox_drain, inbox_event_process, inbox_stale_sweep


class EventRetry(RetryStrategy):
    """Backoff counted from the event's first run: a drain's run is the first attempt of an event it
    hands over (`prior_attempts=1`), so the waits and the final attempt come as if one job ran them."""

    def get_retry_decision(self, *, exception: BaseException, job: Job) -> RetryDecision | None:
        prior = int(job.task_kwargs.get("prior_attempts", 0))
        return super().get_retry_decision(exception=exception, job=job.evolve(attempts=job.attempts + prior))


# 2 s, 4 s … 1024 s: about half an hour of Graph trouble before a change is parked for staff.
_BACKOFF = backoff(max_attempts=10, retry_on=(InboxRetryLater,))
INGESTION_RETRY = EventRetry(
    max_attempts=_BACKOFF.max_attempts,
    exponential_wait=_BACKOFF.exponential_wait,
    retry_exceptions=_BACKOFF.retry_exceptions,
)
COUNTS_COMPACT_EVERY_S = 30


@app.task(name="leads.process_inbox_event", queue=QUEUE_INGESTION, retry=INGESTION_RETRY, pass_context=True)
@db_job
def process_inbox_event(context: JobContext, event_id: int, prior_attempts: int = 0) -> None:
    inbox_event_process(event_id, final_attempt=event_final_attempt(context.job))


def event_final_attempt(job: Job) -> bool:
    """The event's last run, counting the runs before its job (`prior_attempts`: a drain's)."""
    return job.attempts + int(job.task_kwargs.get("prior_attempts", 0)) >= INGESTION_RETRY.max_attempts


# No procrastinate retry: a failed drain's claims are free for the next drain (or the sweep's), and a
# retried drain could not go back to `todo` while its shard has another one queued.
@app.task(name="leads.drain_inbox", queue=QUEUE_INGESTION, pass_context=True)
@db_job
def drain_inbox(context: JobContext, shard: int) -> int:
    assert context.job.id is not None
    return inbox_drain(job_id=context.job.id, shard=shard).events


@app.periodic(cron="* * * * *", periodic_id="sweep-stale-inbox")
@app.task(name="leads.sweep_stale_inbox", queue=QUEUE_MAINTENANCE, queueing_lock="leads.sweep_stale_inbox")
@db_job
def sweep_stale_inbox(timestamp: int) -> int:
    return inbox_stale_sweep()


@app.periodic(cron=every_seconds_cron(COUNTS_COMPACT_EVERY_S), periodic_id="compact-lead-offer-counts")
@app.task(
    name="leads.compact_lead_offer_counts",
    queue=QUEUE_MAINTENANCE,
    queueing_lock="leads.compact_lead_offer_counts",
)
@db_job
def compact_lead_offer_counts(timestamp: int) -> int | None:
    """Folds the counter deltas (leads/counters.py); None when another compaction held the lock.

    Reads are exact without it; it keeps the deltas a reader sums down to ~30 s of writes."""
    return lead_offer_counts_compact()
