"""Ingestion jobs. Thin: the work is in `leads.ingestion`, which tests call directly."""

from __future__ import annotations

from procrastinate import JobContext
from procrastinate.contrib.django import app

from converzia.jobs import QUEUE_INGESTION, QUEUE_MAINTENANCE, backoff, db_job
from leads.ingestion import InboxRetryLater, inbox_event_process, inbox_stale_sweep

# 2 s, 4 s … 1024 s: about half an hour of Graph trouble before a change is parked for staff.
INGESTION_RETRY = backoff(max_attempts=10, retry_on=(InboxRetryLater,))


@app.task(name="leads.process_inbox_event", queue=QUEUE_INGESTION, retry=INGESTION_RETRY, pass_context=True)
@db_job
def process_inbox_event(context: JobContext, event_id: int) -> None:
    final_attempt = context.job.attempts >= INGESTION_RETRY.max_attempts
    inbox_event_process(event_id, final_attempt=final_attempt)


@app.periodic(cron="* * * * *", periodic_id="sweep-stale-inbox")
@app.task(name="leads.sweep_stale_inbox", queue=QUEUE_MAINTENANCE, queueing_lock="leads.sweep_stale_inbox")
@db_job
def sweep_stale_inbox(timestamp: int) -> int:
    return inbox_stale_sweep()
