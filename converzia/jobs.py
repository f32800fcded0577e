"""Shared plumbing for procrastinate tasks (decision D5). Tasks live in each app's `tasks.py`.

Sync tasks run in the worker's thread pool, each thread with its own Django connection; `db_job`
gives every run a healthy connection (a database restart must not poison a thread for good) and
binds the job to a request id so its logs and lead events can be traced.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import ParamSpec, TypeVar

from django.db import InterfaceError, OperationalError, close_old_connections
from procrastinate import RetryStrategy

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


def db_job(fn: Callable[P, R]) -> Callable[P, R]:
    """Close stale or broken connections of this thread before and after the job."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        close_old_connections()
        try:
            return fn(*args, **kwargs)
        finally:
            close_old_connections()

    return wrapper
