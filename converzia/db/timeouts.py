"""The timeout-guarded query helper (decision D3): server-side timeouts PostgreSQL really enforces.

    @guarded("portal.leads.list")               # decorator: retried once on a timeout
    def leads_page(...): ...

    guarded("webhook.inbox.store", timeout_ms=2000).run(fn, *args)   # the same, for a callable

    with guarded("admin.queue.depth"):          # context manager: one attempt (a block cannot rerun)
        ...

Each attempt runs in a transaction (a savepoint when one is already open) with `SET LOCAL
statement_timeout` and `lock_timeout`, so the limit dies with the transaction and never reaches the
next user of the connection, pooled or not. Inside an outer transaction the previous values are put
back on exit.

A read declared `atomic=False` skips all that where the connection's session already carries these
very limits: the web server opens its connections with the default limits as session settings
(`DB_SESSION_TIMEOUTS`, converzia/db/postgresql), so a default-limit read outside any transaction
runs as it is, and the next user of the connection still finds the default. BEGIN, SET LOCAL and
COMMIT cost three round trips, two thirds of a one-statement read (docs/performance.md).

A cancelled statement (SQLSTATE 57014) or a lock wait past `lock_timeout` (55P03) is
retried once after a short backoff; then `QueryTimeout` (503 `query_timeout`, `Retry-After`). Every
attempt logs one structured line: name, attempt, duration, timeout, outcome, tenant and request id,
and is timed in `converzia_db_query_duration_seconds{query}`; timeouts are counted in
`converzia_db_query_timeouts_total{query}`.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, ParamSpec, TypeVar

from django.conf import settings
from django.db import DEFAULT_DB_ALIAS, OperationalError, connections, transaction

from converzia.errors import QueryTimeout
from converzia.metrics import DB_QUERY_SECONDS, DB_QUERY_TIMEOUTS
from converzia.request_context import current_request_id, tenant_id_var

logger = logging.getLogger("converzia.db")

P = ParamSpec("P")
R = TypeVar("R")

# SQLSTATEs that mean "the server gave up on our statement because of a limit we set".
_TIMEOUT_SQLSTATES = {"57014", "55P03"}
DEFAULT_RETRY_BACKOFF_S = 0.05
# set_config(..., true) is SET LOCAL with bound parameters.
_SET_LIMITS_SQL = "SELECT set_config('statement_timeout', %s, true), set_config('lock_timeout', %s, true)"


def default_lock_timeout_ms(timeout_ms: int) -> int:
    """Waiting on a lock longer than the statement may run makes no sense: half of it."""
    return max(1, timeout_ms // 2)


def is_timeout(exc: BaseException) -> bool:
    cause = exc.__cause__ or exc
    return getattr(cause, "sqlstate", None) in _TIMEOUT_SQLSTATES


class guarded:  # noqa: N801 — reads as a verb at the call site, like `transaction.atomic`
    def __init__(
        self,
        name: str,
        *,
        timeout_ms: int | None = None,
        lock_timeout_ms: int | None = None,
        retries: int = 1,
        backoff_s: float = DEFAULT_RETRY_BACKOFF_S,
        using: str = DEFAULT_DB_ALIAS,
        atomic: bool = True,
    ) -> None:
        self.name = name
        # False: the block's statements need not commit together (reads, or a single statement), so
        # it may skip its own transaction where the session already carries the limits.
        self.atomic = atomic
        self.timeout_ms = int(timeout_ms or settings.DB_STATEMENT_TIMEOUT_MS)
        self.lock_timeout_ms = int(lock_timeout_ms or default_lock_timeout_ms(self.timeout_ms))
        self.retries = retries
        self.backoff_s = backoff_s
        self.using = using
        # Open blocks, per thread and stacked: one instance (a module-level guard) may guard blocks in
        # many threads at once, or nest in itself.
        self._open = threading.local()

    # --- decorator and runner: retried -------------------------------------------------------------
    def __call__(self, fn: Callable[P, R]) -> Callable[P, R]:
        @functools.wraps(fn)
        def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
            return self.run(fn, *args, **kwargs)

        return wrapper

    def run(self, fn: Callable[..., R], *args: Any, **kwargs: Any) -> R:
        attempts = self.retries + 1
        for attempt in range(1, attempts + 1):
            try:
                with self._attempt(attempt):
                    return fn(*args, **kwargs)
            except QueryTimeout as exc:
                # Only our own timeouts are retried here: a nested guard has already retried its own.
                if attempt == attempts or getattr(exc, "raised_by", None) is not self:
                    raise
                time.sleep(self.backoff_s * attempt)
        raise AssertionError("unreachable")  # pragma: no cover

    # --- context manager: one attempt --------------------------------------------------------------
    def __enter__(self) -> guarded:
        context = self._attempt(1)
        context.__enter__()
        self._open_blocks().append(context)
        return self

    def __exit__(self, *exc_info: Any) -> bool | None:
        return self._open_blocks().pop().__exit__(*exc_info)

    def _open_blocks(self) -> list[Any]:
        if not hasattr(self._open, "blocks"):
            self._open.blocks = []
        return self._open.blocks

    @contextmanager
    def _attempt(self, attempt: int) -> Iterator[None]:
        connection = connections[self.using]
        nested = connection.in_atomic_block
        started = time.perf_counter()
        outcome = "ok"
        try:
            if self._session_carries_limits(connection):
                yield
            else:
                with transaction.atomic(using=self.using):
                    previous = self._set_limits(connection, remember=nested)
                    yield
                    if previous is not None:
                        self._restore_limits(connection, previous)
        except OperationalError as exc:
            outcome = "timeout" if is_timeout(exc) else "error"
            if outcome == "timeout":
                # Counted where the limit fired (an enclosing guard sees it pass through, uncounted).
                DB_QUERY_TIMEOUTS.labels(self.name).inc()
                timeout = QueryTimeout(details={"query": self.name})
                timeout.raised_by = self  # type: ignore[attr-defined]
                raise timeout from exc
            raise
        except QueryTimeout:
            # A nested guard's timeout passing through: a timeout for this attempt too.
            outcome = "timeout"
            raise
        except BaseException:
            outcome = "error"
            raise
        finally:
            DB_QUERY_SECONDS.labels(self.name).observe(time.perf_counter() - started)
            logger.info(
                "query %s attempt %d %s in %.1f ms",
                self.name,
                attempt,
                outcome,
                (time.perf_counter() - started) * 1000,
                extra={
                    "query_name": self.name,
                    "attempt": attempt,
                    "outcome": outcome,
                    "duration_ms": round((time.perf_counter() - started) * 1000, 2),
                    "timeout_ms": self.timeout_ms,
                    "tenant_id": tenant_id_var.get(),
                    "request_id": current_request_id(),
                },
            )

    def _session_carries_limits(self, connection: Any) -> bool:
        """True when this block may run as it is, without a transaction of its own: it declared that
        its statements need not commit together (`atomic=False`), none is open, and the connection's
        session already has exactly these limits (the web server's connections,
        `converzia.db.postgresql`). That saves BEGIN, the SET LOCAL and COMMIT: three round trips."""
        if self.atomic or connection.in_atomic_block:
            return False
        connection.ensure_connection()  # the limits are those its session was opened with
        return getattr(connection, "session_limits_ms", None) == (self.timeout_ms, self.lock_timeout_ms)

    def _set_limits(self, connection: Any, *, remember: bool) -> tuple[str, str] | None:
        with connection.cursor() as cursor:
            previous = None
            if remember:
                cursor.execute("SELECT current_setting('statement_timeout'), current_setting('lock_timeout')")
                previous = cursor.fetchone()
            cursor.execute(_SET_LIMITS_SQL, [f"{self.timeout_ms}ms", f"{self.lock_timeout_ms}ms"])
        return previous

    def _restore_limits(self, connection: Any, previous: tuple[str, str]) -> None:
        with connection.cursor() as cursor:
            cursor.execute(_SET_LIMITS_SQL, list(previous))
