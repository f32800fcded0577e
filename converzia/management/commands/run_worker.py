"""`manage.py run_worker`: a procrastinate worker for every queue, plus the periodic tasks.

Wakes up on LISTEN/NOTIFY (so it needs a direct database connection, not a transaction pooler),
retries stalled jobs of dead workers (see `converzia.tasks`), and on SIGTERM or Ctrl-C stops taking
jobs and lets running ones finish for `--shutdown-grace` seconds. Async jobs still running then are
cancelled; sync jobs (ingestion, deliveries) cannot be interrupted from outside their thread, so if
any still runs HARD_STOP_MARGIN_S later the process exits with status 1 (a second signal does the same
at once). Exiting mid-job is what SIGKILL does too, and is safe: every job is idempotent (one
transaction per lead, the domain rows say what is done) and the stalled-job recovery of the remaining
workers puts the abandoned job back in the queue after WORKER_STALLED_AFTER_S.

A database outage does not end the process. Left alone, procrastinate stops its worker at the first
LISTEN, heartbeat or periodic-task query that fails, exactly as a stop signal would: `run_worker_async`
then returns normally (exit status 0) or, when the outage outlasts its shutdown's waits for a pooled
connection, raises. Here procrastinate's worker runs under `WorkerSupervisor`: the connector reports
the first query that fails for want of a database (`WatchedConnector`), the worker is stopped at once
(running jobs may end, as on SIGTERM), its pool is closed, and the database is tried with backoff
(RECONNECT_FIRST_WAIT_S doubling up to RECONNECT_MAX_WAIT_S) until `SELECT 1` answers; then a fresh
pool and a new worker start (a new LISTEN, a new heartbeat row, the periodic tasks again). A job the
outage interrupted is retried by its retry policy or, when even its failure could not be recorded, by
the stalled-job recovery. Each outage is logged and counted (`converzia_worker_database_outages_total`
when it begins, its length in `converzia_worker_database_outage_seconds` when it ends).

Exit status: 0 after a requested stop (or `--burst` done); 1 when a stop had to abandon running jobs;
2 (EXIT_WORKER_FAILED) when the worker stopped on an error other than a lost database; 3
(EXIT_DATABASE_GAVE_UP) when the database stayed unreachable for WORKER_GIVE_UP_AFTER_S seconds (0,
the default, never gives up). The process supervisor (systemd, deploy/converzia-worker.service)
restarts it on any non-zero status.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import os
import signal
import sys
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from typing import Any, LiteralString, TypeVar

import psycopg
from django.conf import settings
from django.core.management.base import CommandError, CommandParser
from django.db import DatabaseError as DjangoDatabaseError
from procrastinate.connector import Notify
from procrastinate.contrib.django import app
from procrastinate.contrib.django.utils import connector_params
from procrastinate.exceptions import ConnectorException
from procrastinate.psycopg_connector import PsycopgConnector
from procrastinate.worker import Worker

from converzia import metrics
from converzia.jobs import ALL_QUEUES
from converzia.management.base import ConverziaCommand
from converzia.observability import otel

logger = logging.getLogger("converzia.worker")

T = TypeVar("T")

# After the grace period procrastinate cancels async jobs and records their end; give it this long.
HARD_STOP_MARGIN_S = 3.0
EXIT_JOBS_ABANDONED = 1
EXIT_WORKER_FAILED = 2
EXIT_DATABASE_GAVE_UP = 3
# Beats per stalled window: a live worker must never look dead, even if one or two beats are late.
HEARTBEATS_PER_STALLED_WINDOW = 4
MAX_HEARTBEAT_INTERVAL_S = 10.0
# Tries of the database during an outage: 0.5 s, 1 s, 2 s, 4 s, then every 5 s. A try is one
# connection and `SELECT 1`, so a short cap costs the database nothing and resumes work sooner.
RECONNECT_FIRST_WAIT_S = 0.5
RECONNECT_MAX_WAIT_S = 5.0
# One try never takes longer than this, even against a server that accepts and then says nothing.
PROBE_TIMEOUT_S = 10.0
# A worker the database takes down again within this long after it started waits before the next
# start (RECONNECT_FIRST_WAIT_S, doubling up to RECONNECT_MAX_WAIT_S).
STABLE_RUN_S = 30.0
# How long a worker query waits for a pooled connection (procrastinate's pool: 4 connections, each
# query a few milliseconds). Rather than psycopg_pool's 30 s: a worker shutting down during an outage
# waits this long (to record a running job's end, to unregister) before it gives those up.
WORKER_POOL_TIMEOUT_S = 10.0
# Errors that say the server is going away, starting up, or refusing connections: admin_shutdown,
# crash_shutdown, cannot_connect_now, too_many_connections.
UNAVAILABLE_SQLSTATES = frozenset({"57P01", "57P02", "57P03", "53300"})


def _positive_float(value: str) -> float:
    number = float(value)
    if number <= 0:
        raise ValueError(value)
    return number


def _non_negative_float(value: str) -> float:
    number = float(value)
    if number < 0:
        raise ValueError(value)
    return number


def heartbeat_interval(stalled_after_s: float) -> float:
    """How often the worker proves it is alive: well inside the window after which others presume it
    dead and retry its jobs (procrastinate's fixed 10 s would make a worker with a short window look
    dead while it runs)."""
    return min(MAX_HEARTBEAT_INTERVAL_S, stalled_after_s / HEARTBEATS_PER_STALLED_WINDOW)


def give_up_after_default() -> float:
    """WORKER_GIVE_UP_AFTER_S; 0 (the default) never gives up."""
    return float(settings.WORKER_GIVE_UP_AFTER_S)


def is_database_error(error: BaseException) -> bool:
    """True when `error`, or anything it wraps, comes from the database or the way to it."""
    return any(
        isinstance(cause, psycopg.Error | DjangoDatabaseError | OSError | ConnectorException)
        for cause in _causes(error)
    )


def is_database_unavailable(error: BaseException) -> bool:
    """True when `error`, or anything it wraps, says the database cannot be reached or dropped us:
    a refused, failed or lost connection, the pool's timeout or closure (psycopg errors without a
    SQLSTATE), a connection exception (08xxx), a server shutting down, starting up or refusing
    connections (57P01-57P03, 53300). Errors of a query on a working connection (a missing table, a
    deadlock) are not: reconnecting would not cure them."""
    for cause in _causes(error):
        if isinstance(cause, psycopg.InterfaceError | OSError):
            return True
        if isinstance(cause, psycopg.OperationalError):
            sqlstate = cause.sqlstate
            return sqlstate is None or sqlstate.startswith("08") or sqlstate in UNAVAILABLE_SQLSTATES
    return False


def _causes(error: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def _brief(error: BaseException) -> str:
    """The first line of an error, with its type: driver messages run over several lines."""
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0]}" if text else type(error).__name__


def _abandon_running_jobs(reason: str, exit_code: int = EXIT_JOBS_ABANDONED) -> None:
    logger.error("worker exiting with jobs still running (%s); stalled-job recovery will retry them", reason)
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    os._exit(exit_code)


class WorkerFailed(Exception):
    """The worker stopped on an error that is not a lost database; starting it again in-process would
    only repeat it. The process exits with EXIT_WORKER_FAILED."""


class DatabaseGaveUp(Exception):
    """The database stayed unreachable for WORKER_GIVE_UP_AFTER_S."""


class _Interrupted(Exception):
    """A stop was requested, or the supervisor gave up: what it was waiting for has been cancelled."""


class WatchedConnector(PsycopgConnector):
    """procrastinate's psycopg connector, reporting every query (or LISTEN) that failed because the
    database is unreachable, from whichever thread it ran in; and able to fail the queries waiting
    for a pooled connection at once (`abandon_waits`).

    procrastinate notices a lost database only through the query that fails (the listener's
    reconnection, the heartbeat, a fetch, a job's end), and each reacts differently: a failed side
    task stops the worker as a stop signal would, a failed fetch ends it with an exception once its
    shutdown is over, a failed job end is only logged. The report is what tells the supervisor, at
    the first failure, that an outage began. A stop during an outage must not wait for the pool to
    time out (closing the pool does not wake a query that is between two connection checks).
    """

    def __init__(self, *, on_database_lost: Callable[[BaseException], None], **pool_options: Any) -> None:
        super().__init__(**pool_options)
        self._on_database_lost = on_database_lost
        self._abandoned = asyncio.Event()

    def abandon_waits(self) -> None:
        """Fail every query now in progress, and every later one, until `resume()`."""
        self._abandoned.set()

    def resume(self) -> None:
        self._abandoned.clear()

    async def _watched(self, query: Awaitable[T]) -> T:
        if self._abandoned.is_set():
            if inspect.iscoroutine(query):
                query.close()  # never awaited: say so, or Python warns
            raise ConnectorException("the database is unavailable and the worker is stopping")
        running = asyncio.ensure_future(query)
        abandoned = asyncio.ensure_future(self._abandoned.wait())
        try:
            await asyncio.wait({running, abandoned}, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            running.cancel()
            raise
        finally:
            abandoned.cancel()
        if not running.done():
            running.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await running
            raise ConnectorException("the database is unavailable and the worker is stopping")
        try:
            return running.result()
        except Exception as error:
            if is_database_unavailable(error):
                self._on_database_lost(error)
            raise

    async def execute_query_async(self, query: LiteralString, **arguments: Any) -> None:
        await self._watched(super().execute_query_async(query, **arguments))

    async def execute_query_one_async(self, query: LiteralString, **arguments: Any) -> dict[str, Any]:
        return await self._watched(super().execute_query_one_async(query, **arguments))

    async def execute_query_all_async(self, query: LiteralString, **arguments: Any) -> list[dict[str, Any]]:
        return await self._watched(super().execute_query_all_async(query, **arguments))

    async def listen_notify(self, on_notification: Notify, channels: Iterable[str]) -> None:
        await self._watched(super().listen_notify(on_notification, channels))


class WorkerSupervisor:
    """Runs procrastinate workers one after another until a stop is requested: a worker the database
    took down is followed, once the database answers again, by a new one (see the module docstring).

    `serve()` returns after a requested stop (or a `--burst` run that found nothing more to do), and
    raises `DatabaseGaveUp` or `WorkerFailed` otherwise. `request_stop()` is what the signal handlers
    call: it cancels whatever the supervisor is waiting for, the worker (which procrastinate turns
    into its graceful shutdown) or a reconnection attempt.
    """

    def __init__(
        self,
        *,
        database_params: Mapping[str, Any],
        worker_options: Mapping[str, Any],
        give_up_after_s: float,
    ) -> None:
        self.database_params = dict(database_params)
        # What `app.connector.get_worker_connector()` builds, with a shorter wait for a pooled connection.
        self.connector = WatchedConnector(
            kwargs=self.database_params, timeout=WORKER_POOL_TIMEOUT_S, on_database_lost=self._database_lost
        )
        self.worker_options = dict(worker_options)
        self.give_up_after_s = give_up_after_s
        self.stop_requested = False
        self.giving_up = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._worker: Worker | None = None
        self._current: asyncio.Future[Any] | None = None
        self._outage_started_at: float | None = None
        self._give_up_timer: asyncio.TimerHandle | None = None
        self._restart_wait_s = 0.0
        # Which worker run a connector report belongs to: a late one from a finished run is ignored.
        self._run_number = 0

    # --- the loop ----------------------------------------------------------------------------------

    async def serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        try:
            await self._serve_until_interrupted()
        except _Interrupted:
            pass
        finally:
            if self._give_up_timer is not None:
                self._give_up_timer.cancel()
        if self.giving_up:
            raise DatabaseGaveUp(f"the database stayed unavailable for {self.give_up_after_s:g} s")

    async def _serve_until_interrupted(self) -> None:
        while True:
            if self._restart_wait_s:
                await self._phase(asyncio.sleep(self._restart_wait_s))
            started_at = time.monotonic()
            try:
                await self._run_worker_once()
            except _Interrupted:
                raise
            except Exception as error:
                if self._interrupted:
                    if not is_database_error(error):
                        raise WorkerFailed(f"the worker failed while stopping: {_brief(error)}") from error
                    logger.warning("worker stopped while the database was unavailable (%s)", _brief(error))
                    raise _Interrupted from error
                if not is_database_unavailable(error):
                    raise WorkerFailed(f"the worker failed: {_brief(error)}") from error
                self._outage_begins(error)
            if self._interrupted:
                raise _Interrupted
            if self._outage_started_at is None:
                if not self.worker_options.get("wait", True):
                    return  # --burst: nothing left to do
                # procrastinate stops its worker when a side task fails (it logs which and why); the
                # database alone can tell whether that was an outage.
                problem = await self._phase(self.database_problem())
                if problem is None:
                    raise WorkerFailed("the worker stopped on its own, with the database answering")
                self._outage_begins(problem)
            self._space_restarts(run_s=time.monotonic() - started_at)
            await self._phase(self._wait_for_database())

    async def _run_worker_once(self) -> None:
        # Try the database first: opening the pool against a dead one waits 30 s before it fails.
        problem = await self._phase(self.database_problem())
        if problem is not None:
            raise problem
        self._run_number += 1
        self.connector.resume()
        try:
            await self._phase(self.connector.open_async())
            self._worker = Worker(app=app, **self.worker_options)
            await self._phase(self._worker.run())
        finally:
            self._worker = None
            await self._close_pool()

    @property
    def _interrupted(self) -> bool:
        return self.stop_requested or self.giving_up

    async def _phase(self, awaitable: Awaitable[T]) -> T:
        """Await `awaitable` as the one thing a stop request cancels."""
        self._current = asyncio.ensure_future(awaitable)
        try:
            return await self._current
        except asyncio.CancelledError:
            if self._interrupted:
                raise _Interrupted from None
            raise
        finally:
            self._current = None

    def _space_restarts(self, *, run_s: float) -> None:
        """A worker the database takes down again soon after it started waits longer and longer
        before the next start: a database that accepts connections and then keeps failing them must
        not make the supervisor spin."""
        if run_s >= STABLE_RUN_S:
            self._restart_wait_s = 0.0
        else:
            self._restart_wait_s = min(
                max(RECONNECT_FIRST_WAIT_S, self._restart_wait_s * 2), RECONNECT_MAX_WAIT_S
            )

    # --- stopping ----------------------------------------------------------------------------------

    def request_stop(self) -> None:
        self.stop_requested = True
        self._interrupt()

    def _interrupt(self) -> None:
        if self._current is not None:
            self._current.cancel()
        if self._outage_started_at is not None:
            # A worker shutting down after losing the database may be waiting for a pooled connection
            # (to record a job's end, to unregister): those waits cannot succeed, cut them short.
            self.connector.abandon_waits()

    async def _close_pool(self) -> None:
        try:
            await self.connector.close_async()
        except Exception as error:
            logger.debug("closing the worker's connection pool: %s", _brief(error))

    # --- outages -----------------------------------------------------------------------------------

    def _database_lost(self, error: BaseException) -> None:
        """The connector's report (from the event loop or a job's thread)."""
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._on_database_lost, error, self._run_number)

    def _on_database_lost(self, error: BaseException, run_number: int) -> None:
        if run_number != self._run_number:
            return
        self._outage_begins(error)
        if self._worker is not None:
            # It stops taking jobs now, rather than at the next failure of one of its own queries.
            self._worker.stop()

    def _outage_begins(self, error: BaseException) -> None:
        if self._outage_started_at is not None:
            return
        self._outage_started_at = started_at = time.monotonic()
        metrics.WORKER_DATABASE_OUTAGES.inc()
        logger.warning(
            "database unavailable (%s): the worker stops taking jobs, lets running ones end, and reconnects",
            _brief(error),
            extra={"error": _brief(error)},
        )
        if self.give_up_after_s and self._loop is not None:
            self._give_up_timer = self._loop.call_later(
                self.give_up_after_s, self._give_up_if_still_down, started_at
            )

    def _give_up_if_still_down(self, started_at: float) -> None:
        if self._outage_started_at != started_at or self._interrupted:
            return
        logger.error(
            "database unavailable for %.1f s: giving up (WORKER_GIVE_UP_AFTER_S=%g)",
            time.monotonic() - started_at,
            self.give_up_after_s,
        )
        self.giving_up = True
        self._interrupt()
        # As after a stop signal: a sync job that will not end must not keep the process from exiting.
        wait_s = self.worker_options.get("shutdown_graceful_timeout") or 0.0
        assert self._loop is not None
        self._loop.call_later(
            wait_s + HARD_STOP_MARGIN_S,
            _abandon_running_jobs,
            "giving up on the database",
            EXIT_DATABASE_GAVE_UP,
        )

    async def database_problem(self) -> BaseException | None:
        """None when the database answers `SELECT 1` on a new connection, else why it did not."""
        try:
            async with asyncio.timeout(PROBE_TIMEOUT_S):
                connection = await psycopg.AsyncConnection.connect(**self.database_params, autocommit=True)
                async with connection:
                    await connection.execute("SELECT 1")
        except (psycopg.Error, OSError, TimeoutError) as error:
            return error
        return None

    async def _wait_for_database(self) -> None:
        started_at = self._outage_started_at
        assert started_at is not None
        wait_s = RECONNECT_FIRST_WAIT_S
        while (problem := await self.database_problem()) is not None:
            logger.warning(
                "database unavailable for %.1f s (%s); retrying in %.1f s",
                time.monotonic() - started_at,
                _brief(problem),
                wait_s,
                extra={"error": _brief(problem), "retry_in_s": wait_s},
            )
            await asyncio.sleep(wait_s)
            wait_s = min(wait_s * 2, RECONNECT_MAX_WAIT_S)
        down_s = time.monotonic() - started_at
        self._outage_started_at = None
        if self._give_up_timer is not None:
            self._give_up_timer.cancel()
            self._give_up_timer = None
        metrics.WORKER_DATABASE_OUTAGE_SECONDS.observe(down_s)
        logger.info(
            "database back after %.1f s: starting the worker again",
            down_s,
            extra={"down_s": round(down_s, 3)},
        )


class Command(ConverziaCommand):
    help = (
        "Run a background worker: every queue by default, the periodic tasks, graceful on SIGTERM,"
        " reconnecting through database outages."
    )

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
            "--give-up-after",
            type=_non_negative_float,
            default=None,
            help=(
                "Exit (status 3) once the database has been unreachable this many seconds; 0 never"
                " gives up. Default: WORKER_GIVE_UP_AFTER_S, else 0."
            ),
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
        give_up_after_s = options["give_up_after"]
        if give_up_after_s is None:
            give_up_after_s = give_up_after_default()
        if give_up_after_s < 0:
            raise CommandError("WORKER_GIVE_UP_AFTER_S must be 0 (never) or a positive number of seconds.")
        otel.init_otel("worker")  # tracing, when OTEL_EXPORTER_OTLP_ENDPOINT is set
        logger.info(
            "worker starting: queues=%s concurrency=%d",
            ",".join(queues),
            options["concurrency"],
            extra={"queues": queues, "concurrency": options["concurrency"]},
        )
        app.perform_import_paths()
        stalled_after_s = settings.WORKER_STALLED_AFTER_S
        supervisor = WorkerSupervisor(
            database_params=connector_params(),
            give_up_after_s=give_up_after_s,
            worker_options={
                **app.worker_defaults,
                "queues": queues,
                "concurrency": options["concurrency"],
                "name": options["name"],
                "wait": not options["burst"],
                "listen_notify": True,
                "shutdown_graceful_timeout": options["shutdown_grace"],
                "update_heartbeat_interval": heartbeat_interval(stalled_after_s),
                "stalled_worker_timeout": stalled_after_s,
                "install_signal_handlers": False,
                "task_middleware": otel.job_middlewares(),  # a span per job when tracing is on
            },
        )
        try:
            with app.replace_connector(supervisor.connector):
                asyncio.run(self._serve(supervisor, grace_s=options["shutdown_grace"]))
        except DatabaseGaveUp as error:
            raise CommandError(f"worker gave up: {error}", returncode=EXIT_DATABASE_GAVE_UP) from error
        except WorkerFailed as error:
            logger.error("worker stopped: %s", error, exc_info=error.__cause__)
            raise CommandError(str(error), returncode=EXIT_WORKER_FAILED) from error
        logger.info("worker stopped")

    async def _serve(self, supervisor: WorkerSupervisor, *, grace_s: float) -> None:
        """Run the supervisor until it is done (`--burst`), a stop signal has been honoured, or it
        fails.

        We handle the signals ourselves (procrastinate's own handlers would wait forever on a stuck
        sync job): the first one cancels what the supervisor is doing (a running worker turns that
        into its graceful shutdown); a timer and any further signal cover what that shutdown cannot
        stop.
        """
        loop = asyncio.get_running_loop()

        def on_stop_signal(signum: int) -> None:
            if supervisor.stop_requested:
                _abandon_running_jobs(f"second {signal.Signals(signum).name}")
            logger.info("%s: finishing running jobs (grace %.1f s)", signal.Signals(signum).name, grace_s)
            supervisor.request_stop()
            loop.call_later(
                grace_s + HARD_STOP_MARGIN_S,
                _abandon_running_jobs,
                f"still running {grace_s + HARD_STOP_MARGIN_S:.1f} s after the stop signal",
            )

        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, on_stop_signal, signum)
        try:
            await supervisor.serve()
        finally:
            for signum in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(signum)
