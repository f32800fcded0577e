"""A real `manage.py run_worker` through real PostgreSQL outages (TARGETS.md "Reliability and
security" 11): it rides them out as the same process, listens again, processes what was pending and
what comes after, counts each outage, and exits non-zero only when told to give up.

The shared PostgreSQL is never touched: the module starts a private server (the embedded one `make
test` uses, under .data/ like `scratch_data_dir` in test_devstack.py), migrates a template database
once and gives each test a copy. For the length of a test this process's default connection points
at that copy, so the helpers of leads/tests/test_worker.py (the worker subprocess, the Graph stub,
`store_event`) work unchanged; the worker writes its Prometheus metrics to a directory of its own.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest
from django.db import connections, transaction
from prometheus_client import CollectorRegistry
from prometheus_client.multiprocess import MultiProcessCollector
from psycopg import sql

from converzia.devstack import DEFAULT_DATA_DIR
from converzia.devstack_servers import EmbeddedPostgres, find_free_port
from converzia.management.commands.run_worker import (
    EXIT_DATABASE_GAVE_UP,
    RECONNECT_MAX_WAIT_S,
    WORKER_POOL_TIMEOUT_S,
)
from leads.ingestion import inbox_event_defer
from leads.models import InboxChange, InboxEvent, InboxEventStatus
from leads.tests.factories import AdOfferMapFactory
from leads.tests.test_worker import (  # noqa: F401 — `graph` and `start_worker` are fixtures
    MANAGE_PY,
    WORKER_START_TIMEOUT_S,
    WorkerProcess,
    assert_each_lead_once,
    backend_states,
    event_status,
    graph,
    start_worker,
    store_event,
    wait_until,
)

# Each test starts a worker, stops the server at least once and waits for recovery.
pytestmark = pytest.mark.timeout(150)

TEMPLATE_DATABASE = "cvz_outage_template"
# How long a recovered worker may take to process what was pending: a scheduled job is fetched by the
# worker's 5 s poll, a failed one after its retry wait (2 s) or the stalled-job recovery (3 s window).
PROCESSING_TIMEOUT_S = 30.0


@pytest.fixture(scope="module")
def private_postgres() -> Iterator[EmbeddedPostgres]:
    """A PostgreSQL server of this module's own, with the app's schema in TEMPLATE_DATABASE."""
    DEFAULT_DATA_DIR.mkdir(exist_ok=True)
    data_dir = DEFAULT_DATA_DIR / f"test-outage-{uuid.uuid4().hex[:8]}"
    server = EmbeddedPostgres(data_dir, first_port=find_free_port(27432))
    server.start()
    try:
        server.ensure_database(TEMPLATE_DATABASE)
        migrate = subprocess.run(
            [sys.executable, str(MANAGE_PY), "migrate", "--noinput", "-v", "0"],
            env={
                **os.environ,
                "DJANGO_SETTINGS_MODULE": "converzia.settings.test",
                "DATABASE_URL": server.url(TEMPLATE_DATABASE),
            },
            cwd=MANAGE_PY.parent,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert migrate.returncode == 0, migrate.stdout + migrate.stderr
        yield server
    finally:
        server.stop()
        shutil.rmtree(data_dir, ignore_errors=True)


class Outage:
    """Stops and restarts the private server; this process's own connection is closed around it."""

    def __init__(self, server: EmbeddedPostgres) -> None:
        self.server = server
        self.port = server.port

    def begin(self) -> float:
        connections.close_all()
        self.server.stop()
        return time.monotonic()

    def end(self) -> float:
        self.server.start()
        assert self.server.port == self.port, "the server came back on another port"
        return time.monotonic()


@pytest.fixture
def outage(private_postgres, django_db_blocker) -> Iterator[Outage]:
    """A fresh copy of the template database as this process's default database, for one test; the
    server is running again afterwards whatever the test did to it."""
    name = f"cvz_outage_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(private_postgres.url(), autocommit=True) as admin:
        admin.execute(
            sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
                sql.Identifier(name), sql.Identifier(TEMPLATE_DATABASE)
            )
        )
    default = connections["default"]
    saved = dict(default.settings_dict)
    default.close()
    default.settings_dict.update(
        NAME=name, USER="postgres", PASSWORD="", HOST="127.0.0.1", PORT=str(private_postgres.port)
    )
    try:
        with django_db_blocker.unblock():
            yield Outage(private_postgres)
    finally:
        connections.close_all()
        default.settings_dict.clear()
        default.settings_dict.update(saved)
        if private_postgres.pid is None:
            private_postgres.start()


@pytest.fixture
def private_route(outage):
    return AdOfferMapFactory(ad_id="120000000888")


@pytest.fixture
def worker_on_private_database(
    outage,
    start_worker,  # noqa: F811
) -> Iterator[Callable[..., WorkerProcess]]:
    """`start_worker`, after `outage` has pointed this process (hence the worker) at the private copy;
    the server is up again before `start_worker` empties the queue at teardown."""
    yield start_worker
    if outage.server.pid is None:
        outage.end()


def queued_event(route, leadgen_id: str, *, job_in_s: int | None = None) -> InboxEvent:
    """A one-change inbox event whose own job (leads.process_inbox_event, which retries on database
    errors) is queued, due in `job_in_s` seconds; no drain is woken for it."""
    with transaction.atomic():
        event = InboxEvent.objects.create(payload={}, leadgen_ids=[leadgen_id], change_count=1)
        InboxChange.objects.create(
            event=event, position=0, leadgen_id=leadgen_id, ad_id=route.ad_id, value={}
        )
        inbox_event_defer(event.pk, retry_in_s=job_in_s)
    return event


def listening(worker: WorkerProcess) -> bool:
    assert worker.process.poll() is None, f"worker {worker.name} died:\n{worker.log()}"
    return any(query.startswith("LISTEN") for query, _ in backend_states(worker.name))


def worker_metrics(directory: Path) -> CollectorRegistry:
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(directory))
    return registry


def all_done(event_ids: list[int]) -> bool:
    return all(event_status(event_id) == InboxEventStatus.DONE for event_id in event_ids)


@pytest.mark.parametrize(
    ("outage_s", "pool_size"),
    [
        pytest.param(5.0, 0, id="_case_5_s_outage"),
        pytest.param(20.0, 0, id="_case_20_s_outage"),
        # Django's own pool for the jobs' connections (DB_POOL_SIZE): its idle connections all die with
        # the server, and none may fail a job afterwards.
        pytest.param(5.0, 2, id="_case_5_s_outage_pooled_job_connections"),
    ],
)
def test_the_worker_rides_out_an_outage_and_processes_what_was_pending_and_what_comes_after(
    outage_s,
    pool_size,
    outage,
    worker_on_private_database,
    graph,  # noqa: F811
    private_route,
    tmp_path,
):
    metrics_dir = tmp_path / "prometheus"
    metrics_dir.mkdir()
    worker = worker_on_private_database(
        env={"PROMETHEUS_MULTIPROC_DIR": str(metrics_dir), "DB_POOL_SIZE": str(pool_size)}
    )
    assert wait_until(lambda: listening(worker), timeout_s=WORKER_START_TIMEOUT_S), worker.log()
    pid = worker.process.pid
    # In flight when the server stops: the job waits on Graph, and writes only once the server is gone.
    answer = graph.hold("810000000001")
    in_flight = queued_event(private_route, "810000000001")
    assert graph.wait_for_request("810000000001", timeout_s=10), worker.log()
    # Queued: its job comes due while the server is down.
    waiting = queued_event(private_route, "810000000002", job_in_s=2)

    stopped_at = outage.begin()
    time.sleep(1.0)
    answer.set()
    time.sleep(max(0.0, stopped_at + outage_s - time.monotonic()))
    back_at = outage.end()
    listening_again = wait_until(lambda: listening(worker), timeout_s=RECONNECT_MAX_WAIT_S + 15)
    resumed_s = time.monotonic() - back_at
    after = store_event(private_route, ["810000000003"])
    event_ids = [in_flight.pk, waiting.pk, after.pk]
    processed = wait_until(lambda: all_done(event_ids), timeout_s=PROCESSING_TIMEOUT_S, interval_s=0.2)

    assert listening_again, f"not listening {resumed_s:.1f} s after the server came back:\n{worker.log()}"
    assert processed, f"{[event_status(event_id) for event_id in event_ids]}:\n{worker.log()}"
    assert worker.process.poll() is None and worker.process.pid == pid
    assert_each_lead_once(private_route, ["810000000001", "810000000002", "810000000003"])
    assert graph.hits("810000000002") == 1
    assert graph.hits("810000000003") == 1
    log = worker.log(tail_chars=10**7)
    assert "database unavailable (" in log
    _, back, after_recovery = log.partition("database back after")
    assert back, log
    # Every job after the recovery got a live connection (the in-flight one failed before it).
    assert "ended with status: Error" not in after_recovery, after_recovery
    registry = worker_metrics(metrics_dir)
    assert registry.get_sample_value("converzia_worker_database_outages_total") == 1
    assert registry.get_sample_value("converzia_worker_database_outage_seconds_count") == 1
    measured_s = registry.get_sample_value("converzia_worker_database_outage_seconds_sum")
    assert outage_s - 1 <= measured_s <= outage_s + WORKER_POOL_TIMEOUT_S + RECONNECT_MAX_WAIT_S

    worker.signal(signal.SIGTERM)
    assert worker.wait_exit(timeout_s=15) == 0, worker.log()


def test_during_an_outage_a_stop_signal_exits_0_at_once_and_a_worker_told_to_give_up_exits_3(
    outage, worker_on_private_database
):
    """One outage, two workers: the one asked to stop does not wait for the database (its waits for a
    pooled connection are cut short); the one with WORKER_GIVE_UP_AFTER_S=3 exits with status 3 once
    the database has been gone that long (plus, at most, its shutdown's wait for a pooled connection)."""
    give_up_after_s = 3.0
    stopping = worker_on_private_database()
    giving_up = worker_on_private_database(env={"WORKER_GIVE_UP_AFTER_S": str(give_up_after_s)})
    for worker in (stopping, giving_up):
        assert wait_until(lambda worker=worker: listening(worker), timeout_s=WORKER_START_TIMEOUT_S), (
            worker.log()
        )

    stopped_at = outage.begin()
    assert stopping.wait_logged("database unavailable (", timeout_s=10), stopping.log()
    signalled_at = time.monotonic()
    stopping.signal(signal.SIGTERM)
    stop_code = stopping.wait_exit(timeout_s=10)
    stop_took_s = time.monotonic() - signalled_at
    give_up_code = giving_up.wait_exit(timeout_s=give_up_after_s + WORKER_POOL_TIMEOUT_S + 15)
    gave_up_after_s = time.monotonic() - stopped_at

    assert stop_code == 0, stopping.log()
    assert stop_took_s < 5, f"{stop_took_s:.1f} s:\n{stopping.log()}"
    assert give_up_code == EXIT_DATABASE_GAVE_UP, giving_up.log()
    assert give_up_after_s <= gave_up_after_s <= give_up_after_s + WORKER_POOL_TIMEOUT_S + 5, giving_up.log()
    assert "giving up (WORKER_GIVE_UP_AFTER_S=3)" in giving_up.log(
        tail_chars=10**7
    )  # the whole log: tracebacks follow it
