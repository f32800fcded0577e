"""`manage.py run_worker`: a procrastinate worker for every queue, plus the periodic tasks.

Wakes up on LISTEN/NOTIFY (so it needs a direct database connection, not a transaction pooler),
retries stalled jobs of dead workers (see `converzia.tasks`), and on SIGTERM or Ctrl-C stops taking
jobs and lets running ones finish for `--shutdown-grace` seconds. Async jobs still running then are
cancelled; sync jobs (ingestion, deliveries) cannot be interrupted from outside their thread, so if
any still runs HARD_STOP_MARGIN_S later the process exits with status 1 (a second signal does the same
at once). Exiting mid-job is what SIGKILL does too, and is safe: every job is idempotent (one
transaction per lead, the domain rows say what is done) and the stalled-job recovery of the remaining
workers puts the abandoned job back in the queue after WORKER_STALLED_AFTER_S.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
from typing import Any

from django.conf import settings
from django.core.management.base import CommandError, CommandParser
from procrastinate.contrib.django import app

from converzia.jobs import ALL_QUEUES
from converzia.management.base import ConverziaCommand
from converzia.observability import otel

logger = logging.getLogger("converzia.worker")

# After the grace period procrastinate cancels async jobs and records their end; give it this long.
HARD_STOP_MARGIN_S = 3.0
EXIT_JOBS_ABANDONED = 1
# Beats per stalled window: a live worker must never look dead, even if one or two beats are late.
HEARTBEATS_PER_STALLED_WINDOW = 4
MAX_HEARTBEAT_INTERVAL_S = 10.0


def _positive_float(value: str) -> float:
    number = float(value)
    if number <= 0:
        raise ValueError(value)
    return number


def heartbeat_interval(stalled_after_s: float) -> float:
    """How often the worker proves it is alive: well inside the window after which others presume it
    dead and retry its jobs (procrastinate's fixed 10 s would make a worker with a short window look
    dead while it runs)."""
    return min(MAX_HEARTBEAT_INTERVAL_S, stalled_after_s / HEARTBEATS_PER_STALLED_WINDOW)


def _abandon_running_jobs(reason: str) -> None:
    logger.error("worker exiting with jobs still running (%s); stalled-job recovery will retry them", reason)
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    os._exit(EXIT_JOBS_ABANDONED)


class Command(ConverziaCommand):
    help = "Run a background worker: every queue by default, the periodic tasks, graceful on SIGTERM."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--queues",
            default=",".join(ALL_QUEUES),
            help=f"Comma-separated queues to serve (default: all of {', '.join(ALL_QUEUES)}).",
        )
        parser.add_argument(
            "--concurrency",
            type=int,
            default=settings.WORKER_CONCURRENCY,
            help="Jobs run at once (sync jobs use a thread each). Default: WORKER_CONCURRENCY.",
        )
        parser.add_argument("--name", default=None, help="Worker name shown in logs and the job table.")
        parser.add_argument(
            "--shutdown-grace",
            type=_positive_float,
            default=settings.WORKER_SHUTDOWN_GRACE_S,
            help="Seconds running jobs get to finish after SIGTERM before they are cancelled.",
        )
        parser.add_argument(
            "--burst",
            action="store_true",
            help="Process what is queued, then exit (tests and one-off drains).",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        queues = [queue.strip() for queue in options["queues"].split(",") if queue.strip()]
        unknown = sorted(set(queues) - set(ALL_QUEUES))
        if not queues or unknown:
            raise CommandError(
                f"Unknown queue(s) {', '.join(unknown) or '(none given)'}; known: {', '.join(ALL_QUEUES)}."
            )
        if options["concurrency"] < 1:
            raise CommandError("--concurrency must be at least 1.")
        if settings.WORKER_STALLED_AFTER_S <= 0:
            raise CommandError("WORKER_STALLED_AFTER_S must be a positive number of seconds.")
        otel.init_otel("worker")  # tracing, when OTEL_EXPORTER_OTLP_ENDPOINT is set
        logger.info(
            "worker starting: queues=%s concurrency=%d",
            ",".join(queues),
            options["concurrency"],
            extra={"queues": queues, "concurrency": options["concurrency"]},
        )
        with app.replace_connector(app.connector.get_worker_connector()):
            asyncio.run(
                self._serve(
                    queues=queues,
                    concurrency=options["concurrency"],
                    name=options["name"],
                    wait=not options["burst"],
                    grace_s=options["shutdown_grace"],
                )
            )
        logger.info("worker stopped")

    async def _serve(
        self, *, queues: list[str], concurrency: int, name: str | None, wait: bool, grace_s: float
    ) -> None:
        """Run the worker until it is done (`--burst`) or a stop signal has been honoured.

        We handle the signals ourselves (procrastinate's own handlers would wait forever on a stuck
        sync job): the first one cancels the worker task, which procrastinate turns into its graceful
        shutdown; a timer and any further signal cover what that shutdown cannot stop.
        """
        loop = asyncio.get_running_loop()
        stalled_after_s = settings.WORKER_STALLED_AFTER_S
        async with app.open_async():
            worker = asyncio.create_task(
                app.run_worker_async(
                    queues=queues,
                    concurrency=concurrency,
                    name=name,
                    wait=wait,
                    listen_notify=True,
                    shutdown_graceful_timeout=grace_s,
                    update_heartbeat_interval=heartbeat_interval(stalled_after_s),
                    stalled_worker_timeout=stalled_after_s,
                    install_signal_handlers=False,
                    task_middleware=otel.job_middlewares(),  # a span per job when tracing is on
                ),
                name="procrastinate worker",
            )
            stop_requested = False

            def on_stop_signal(signum: int) -> None:
                nonlocal stop_requested
                if stop_requested:
                    _abandon_running_jobs(f"second {signal.Signals(signum).name}")
                stop_requested = True
                logger.info("%s: finishing running jobs (grace %.1f s)", signal.Signals(signum).name, grace_s)
                worker.cancel()
                loop.call_later(
                    grace_s + HARD_STOP_MARGIN_S,
                    _abandon_running_jobs,
                    f"still running {grace_s + HARD_STOP_MARGIN_S:.1f} s after the stop signal",
                )

            for signum in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(signum, on_stop_signal, signum)
            try:
                await worker
            except asyncio.CancelledError:
                # Our own cancellation (the stop signal) ends here; anyone else's propagates.
                if not stop_requested:
                    raise
            finally:
                for signum in (signal.SIGINT, signal.SIGTERM):
                    loop.remove_signal_handler(signum)
