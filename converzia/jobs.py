"""Shared plumbing for procrastinate tasks (decision D5). Tasks live in each app's `tasks.py`.

Sync tasks run in the worker's thread pool, each thread with its own Django connection; `db_job`
gives every run a healthy connection (a database restart must not poison a thread for good).

Job connections commit without waiting for the WAL flush (`synchronous_commit = off`). That is safe
here because every job is idempotent over durable input: the webhook's inbox write (and any other
producer's) commits synchronously, and a job's own writes commit atomically with the row that marks
them done. If PostgreSQL crashes, it loses at most the last fraction of a second of job commits, as a
whole: those rows are simply still pending and are processed again. It halves the cost of a commit.
"""

from __future__ import annotations

import functools
import weakref
from collections.abc import Callable
from typing import ParamSpec, TypeVar

from django.db import InterfaceError, OperationalError, close_old_connections, connection
from procrastinate import RetryStrategy

from converzia.request_context import job_context

P = ParamSpec("P")
R = TypeVar("R")

QUEUE_INGESTION = "ingestion"
QUEUE_DELIVERIES = "deliveries"
QUEUE_MAINTENANCE = "maintenance"
ALL_QUEUES = (QUEUE_INGESTION, QUEUE_DELIVERIES, QUEUE_MAINTENANCE)

# Lost connections are worth a retry: the database may be back by then.
DATABASE_TRANSIENT_ERRORS = (OperationalError, InterfaceError)


def backoff(
    *, max_attempts: int, base_s: int = 2, retry_on: tuple[type[BaseException], ...] = ()
) -> RetryStrategy:
    """Exponential backoff: waits base_s², base_s³, … seconds between attempts (2 s, 4 s, 8 s …)."""
    return RetryStrategy(
        max_attempts=max_attempts,
        exponential_wait=base_s,
        retry_exceptions={*retry_on, *DATABASE_TRANSIENT_ERRORS},
    )


# The driver connections already switched to asynchronous commit (a new one after a reconnect is not).
_relaxed_connections: weakref.WeakSet[object] = weakref.WeakSet()


def _relax_commit_durability() -> None:
    connection.ensure_connection()
    raw = connection.connection
    if raw in _relaxed_connections:
        return
    with connection.cursor() as cursor:
        cursor.execute("SET synchronous_commit TO off")
    _relaxed_connections.add(raw)


def _draw_live_pooled_connection() -> None:
    """With Django's pool (DB_POOL_SIZE > 0) and no CONN_HEALTH_CHECKS, take pooled connections until
    one answers `SELECT 1`.

    Persistent connections need nothing here: Django checks one before its first use after
    `close_old_connections` (CONN_HEALTH_CHECKS, set by settings/base.py). Pooled connections are
    handed out unchecked, and after a database restart every idle one in the pool is dead until used:
    each would fail the job that drew it (measured: the first job after an outage failed in 9 ms), and a
    drain, which has no retry, would leave its events to the stale-inbox sweep. A dead one is given
    back broken, which makes the pool discard it. A database that is down still fails the job.
    """
    settings_dict = connection.settings_dict
    pool_options = settings_dict["OPTIONS"].get("pool")
    if not pool_options or settings_dict.get("CONN_HEALTH_CHECKS"):
        return
    # Each dead connection is discarded once, so at most the pool's size of them, then a new one.
    pool_size = pool_options.get("max_size", 1) if isinstance(pool_options, dict) else 1
    for _draw in range(pool_size + 1):
        connection.ensure_connection()
        if connection.is_usable():
            return
        connection.close()


def db_job(fn: Callable[P, R]) -> Callable[P, R]:
    """A healthy connection for the job (stale or broken ones closed before and after, pooled ones
    checked), committing asynchronously (see the module docstring), and a trace id for its log lines
    and rows."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        with job_context():
            close_old_connections()
            _draw_live_pooled_connection()
            _relax_commit_durability()
            try:
                return fn(*args, **kwargs)
            finally:
                close_old_connections()

    return wrapper


def every_seconds_cron(seconds: float) -> str:
    """A cron spec for "every `seconds`" (procrastinate reads a 6th field as seconds).

    Under a minute: the seconds field (`*/N`, N dividing into the minute as cron does); a minute or
    more: whole minutes (`*/M`), at least one.
    """
    if seconds < 60:
        return f"* * * * * */{max(1, int(seconds))}"
    minutes = max(1, round(seconds / 60))
    return "* * * * *" if minutes == 1 else f"*/{minutes} * * * *"
