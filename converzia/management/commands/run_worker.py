"""`manage.py run_worker`: a procrastinate worker for every queue, plus the periodic tasks.

Wakes up on LISTEN/NOTIFY (so it needs a direct database connection, not a transaction pooler),
retries stalled jobs of dead workers (see `converzia.tasks`), and on SIGTERM or Ctrl-C stops taking
jobs, lets running ones finish for `--shutdown-grace` seconds, then cancels them (they are retried).
"""

from __future__ import annotations

import logging
from typing import Any

from django.conf import settings
from django.core.management.base import CommandError, CommandParser
from procrastinate.contrib.django import app

from converzia.jobs import ALL_QUEUES
from converzia.management.base import ConverziaCommand

logger = logging.getLogger("converzia.worker")


def _positive_float(value: str) -> float:
    number = float(value)
    if number <= 0:
        raise ValueError(value)
    return number


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
        logger.info(
            "worker starting: queues=%s concurrency=%d",
            ",".join(queues),
            options["concurrency"],
            extra={"queues": queues, "concurrency": options["concurrency"]},
        )
        with app.replace_connector(app.connector.get_worker_connector()):
            app.run_worker(
                queues=queues,
                concurrency=options["concurrency"],
                name=options["name"],
                wait=not options["burst"],
                listen_notify=True,
                shutdown_graceful_timeout=options["shutdown_grace"],
                stalled_worker_timeout=settings.WORKER_STALLED_AFTER_S,
                install_signal_handlers=True,
            )
        logger.info("worker stopped")
