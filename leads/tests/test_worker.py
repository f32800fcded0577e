"""Real workers: `manage.py run_worker` subprocesses against the test database and a local Graph stub.

What only real processes can show: a waiting worker wakes on LISTEN/NOTIFY rather than a poll; a
worker killed mid-event (SIGKILL) loses and duplicates nothing once another worker recovers its job;
SIGTERM lets the running job finish (or, when it cannot, exits and leaves the job to recovery).

The tests commit (transaction=True) so the subprocesses see their rows. Each worker connects with
its own `application_name`, which is how the tests see from pg_stat_activity that it is listening
or waiting on a lock. Short WORKER_STALLED_AFTER_S makes recovery take seconds, not minutes.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import quote

import psycopg
import pytest
from django.conf import settings
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connection, connections, transaction

from converzia.management.commands.run_worker import heartbeat_interval
from converzia.tasks import recovery_cron
from leads import meta
from leads.ingestion import (
    drain_queueing_lock,
    drain_shard,
    inbox_drain,
    inbox_drain_wake,
    inbox_event_store,
    inbox_stale_sweep,
)
from leads.measure.graph_stub import GraphStub, phone_for_leadgen
from leads.measure.payloads import leadgen_payload
from leads.models import (
    InboxChange,
    InboxChangeStatus,
    InboxEvent,
    InboxEventStatus,
    Lead,
    LeadOffer,
    LeadSource,
)
from leads.tests.factories import AdOfferMapFactory

MANAGE_PY = Path(settings.BASE_DIR) / "manage.py"
# Short enough for recovery within seconds, long enough that a busy test box never makes a live
# worker (heartbeat every STALLED_AFTER_S / 4) look dead.
STALLED_AFTER_S = 3
# Generous: on a loaded 2-core box two workers starting at once take a while to import Django.
WORKER_START_TIMEOUT_S = 30
PROCRASTINATE_TABLES = (
    "procrastinate_events",
    "procrastinate_periodic_defers",
    "procrastinate_jobs",
    "procrastinate_workers",
)


# --- Helpers ---------------------------------------------------------------------------------------


def wait_until(predicate: Callable[[], object], *, timeout_s: float, interval_s: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval_s)
    return bool(predicate())


def worker_database_url() -> str:
    db = connection.settings_dict
    password = f":{quote(db['PASSWORD'], safe='')}" if db.get("PASSWORD") else ""
    return f"postgres://{quote(db['USER'], safe='')}{password}@{db['HOST']}:{db['PORT']}/{db['NAME']}"


def backend_states(application_name: str) -> list[tuple[str, str | None]]:
    """(query, wait_event_type) of every connection the named worker holds in the test database."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT query, wait_event_type FROM pg_stat_activity"
            " WHERE datname = current_database() AND application_name = %s",
            [application_name],
        )
        return cursor.fetchall()


def clear_queue() -> None:
    """procrastinate's tables are unmanaged, so the test database flush leaves them alone."""
    with connection.cursor() as cursor:
        cursor.execute(f"TRUNCATE {', '.join(PROCRASTINATE_TABLES)}")


def jobs_of_event(event_id: int) -> list[str]:
    """Statuses of the event's procrastinate jobs, oldest first."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT status::text FROM procrastinate_jobs"
            " WHERE task_name = 'leads.process_inbox_event' AND (args->>'event_id')::bigint = %s ORDER BY id",
            [event_id],
        )
        return [status for (status,) in cursor.fetchall()]


def drain_jobs_of(event_id: int) -> list[str]:
    """Statuses of the drain jobs of the event's shard, oldest first."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT status::text FROM procrastinate_jobs WHERE queueing_lock = %s ORDER BY id",
            [drain_queueing_lock(drain_shard(event_id))],
        )
        return [status for (status,) in cursor.fetchall()]


DRAIN_ENDED = re.compile(r"leads\.drain_inbox\[(\d+)\]\(shard=\d+\) ended")


class WorkerProcess:
    """One `manage.py run_worker` subprocess; its log goes to a file the failure messages quote."""

    def __init__(self, env: dict[str, str], args: list[str], log_dir: Path) -> None:
        self.name = env["PGAPPNAME"]
        self.log_path = log_dir / f"{self.name}.log"
        self._log = self.log_path.open("wb")
        self.process = subprocess.Popen(
            [sys.executable, str(MANAGE_PY), "run_worker", *args],
            env=env,
            cwd=MANAGE_PY.parent,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    def log(self, *, tail_chars: int = 4000) -> str:
        return self.log_path.read_text(errors="replace")[-tail_chars:]

    def wait_logged(self, text: str, *, timeout_s: float = 2) -> bool:
        """The worker writes its log line just after the database change a test waits for."""
        return wait_until(lambda: text in self.log(tail_chars=10**7), timeout_s=timeout_s)

    def drains_run(self) -> set[int]:
        """Ids of the drain jobs this worker ran to the end (from its INFO log)."""
        return set(map(int, DRAIN_ENDED.findall(self.log(tail_chars=10**8))))

    def wait_listening(self) -> None:
        """Until the worker's listener connection has run LISTEN (it is then waiting for NOTIFY)."""

        def listening() -> bool:
            assert self.process.poll() is None, f"worker {self.name} died:\n{self.log()}"
            return any(query.startswith("LISTEN") for query, _ in backend_states(self.name))

        assert wait_until(listening, timeout_s=WORKER_START_TIMEOUT_S), f"not listening:\n{self.log()}"

    def wait_blocked_on_lock(self) -> None:
        def blocked() -> bool:
            return any(wait_type == "Lock" for _, wait_type in backend_states(self.name))

        assert wait_until(blocked, timeout_s=30), (
            f"worker {self.name} never waited on the lock:\n{self.log()}"
        )

    def signal(self, signum: int) -> None:
        self.process.send_signal(signum)

    def wait_exit(self, timeout_s: float) -> int:
        try:
            return self.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            pytest.fail(f"worker {self.name} still running {timeout_s} s later:\n{self.log()}")

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(timeout=10)
        self._log.close()


@pytest.fixture
def graph() -> Iterator[GraphStub]:
    with GraphStub() as stub:
        yield stub


@pytest.fixture
def route():
    """An active mapping, committed so the workers see it."""
    return AdOfferMapFactory(ad_id="120000000777")


@pytest.fixture
def start_worker(graph: GraphStub) -> Iterator[Callable[..., WorkerProcess]]:
    """`start_worker(*args, stalled_after_s=…, env=…)`: a worker on the test database, killed at
    teardown."""
    clear_queue()
    started: list[WorkerProcess] = []
    with tempfile.TemporaryDirectory(prefix="cvz-worker-test-") as log_dir:

        def start(
            *args: str, stalled_after_s: float = STALLED_AFTER_S, env: dict[str, str] | None = None
        ) -> WorkerProcess:
            worker_env = {
                **os.environ,
                "DJANGO_SETTINGS_MODULE": "converzia.settings.test",
                "DATABASE_URL": worker_database_url(),
                "META_GRAPH_URL": graph.url,
                "META_PAGE_ACCESS_TOKEN": "test-page-token",
                "WORKER_STALLED_AFTER_S": str(stalled_after_s),
                # The tests run the sweep themselves when they want it.
                "INBOX_STALE_AFTER_S": "3600",
                "PGAPPNAME": f"cvz-test-worker-{len(started)}-{uuid.uuid4().hex[:6]}",
                "PROCRASTINATE_LOG_LEVEL": "INFO",
                **(env or {}),
            }
            worker = WorkerProcess(worker_env, ["--concurrency", "4", *args], Path(log_dir))
            started.append(worker)
            return worker

        try:
            yield start
        finally:
            for worker in started:
                worker.kill()
            clear_queue()


def store_event(route, leadgen_ids: list[str]) -> InboxEvent:
    """What the webhook does for a signed POST: store the event and defer its job, committed."""
    payload = leadgen_payload(
        page_id="153125381133",
        ad_id=route.ad_id,
        form_id="880000000001",
        leadgen_ids=leadgen_ids,
        created_time=int(time.time()),
    )
    return inbox_event_store(payload=payload, changes=meta.leadgen_changes(payload))


def event_status(event_id: int) -> str:
    return InboxEvent.objects.values_list("status", flat=True).get(pk=event_id)


def assert_each_lead_once(route, leadgen_ids: list[str]) -> None:
    for leadgen_id in leadgen_ids:
        source = LeadSource.objects.get(tenant_id=route.tenant_id, leadgen_id=leadgen_id)
        assert source.lead.phone == phone_for_leadgen(leadgen_id)
        assert LeadOffer.objects.filter(lead_source=source).count() == 1
    assert LeadSource.objects.filter(tenant_id=route.tenant_id).count() == len(leadgen_ids)
    assert LeadOffer.objects.filter(tenant_id=route.tenant_id).count() == len(leadgen_ids)
    assert Lead.objects.count() == len(leadgen_ids)


# --- LISTEN/NOTIFY ---------------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_idle_worker_wakes_on_notify_not_on_poll(start_worker, graph, route):
    # A long stalled window keeps the periodic recovery (every 30 s) from waking the worker.
    worker = start_worker(stalled_after_s=60)
    worker.wait_listening()
    # Let the startup jobs (periodic tasks) run out: the worker is now idle until a NOTIFY or its
    # next poll, which is 5 s after its last fetch.
    time.sleep(1.0)

    stored_at = time.monotonic()
    event = store_event(route, ["710000000001"])
    processed = wait_until(lambda: event_status(event.pk) == InboxEventStatus.DONE, timeout_s=2.0)
    elapsed_s = time.monotonic() - stored_at

    assert processed, f"event still {event_status(event.pk)} after {elapsed_s:.1f} s:\n{worker.log()}"
    assert_each_lead_once(route, ["710000000001"])
    assert graph.hits("710000000001") == 1
    assert jobs_of_event(event.pk) == []  # succeeded jobs are deleted


# --- SIGKILL mid-event -----------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_worker_killed_between_two_changes_loses_and_duplicates_nothing(start_worker, graph, route):
    """The worker commits the first change, then waits for the second change's row lock, which the
    test holds (an event's Graph fetches all happen before its database work, so holding a Graph answer
    could not stop a worker between two committed changes). It is killed right there; another worker's
    stalled-job recovery puts the drain back in the queue, and the rerun (same job, so its claim on the
    event is still its own) finishes the second change only."""
    leadgen_ids = ["720000000001", "720000000002"]
    event = store_event(route, leadgen_ids)
    second = InboxChange.objects.get(event_id=event.pk, position=1)

    with psycopg.connect(worker_database_url()) as blocker:
        blocker.execute("SELECT 1 FROM webhook_inbox_changes WHERE id = %s FOR UPDATE", [second.pk])
        doomed = start_worker()
        doomed.wait_blocked_on_lock()
        assert InboxChange.objects.get(event_id=event.pk, position=0).status == InboxChangeStatus.PROCESSED
        doomed.signal(signal.SIGKILL)
        doomed.wait_exit(timeout_s=5)
        blocker.rollback()

    assert event_status(event.pk) == InboxEventStatus.PENDING
    assert drain_jobs_of(event.pk) == ["doing"], doomed.log()

    rescuer = start_worker()
    recovered = wait_until(
        lambda: event_status(event.pk) == InboxEventStatus.DONE, timeout_s=STALLED_AFTER_S + 10
    )

    assert recovered, f"event still {event_status(event.pk)}:\n{rescuer.log()}"
    assert list(
        InboxChange.objects.filter(event_id=event.pk).order_by("position").values_list("status", flat=True)
    ) == [InboxChangeStatus.PROCESSED, InboxChangeStatus.PROCESSED]
    assert_each_lead_once(route, leadgen_ids)
    # The committed change was never fetched again; the other one once per run.
    assert graph.hits(leadgen_ids[0]) == 1
    assert graph.hits(leadgen_ids[1]) == 2
    assert wait_until(lambda: drain_jobs_of(event.pk) == [], timeout_s=2), drain_jobs_of(event.pk)
    assert jobs_of_event(event.pk) == []


@pytest.mark.django_db(transaction=True)
def test_the_sweep_recovers_the_events_of_a_killed_drain_without_the_stalled_job_recovery(
    start_worker, graph, route, settings
):
    """A drain killed mid-event holds its claim while its worker's heartbeat is fresh (the sweep leaves
    it alone); once the heartbeat is older than the stalled window the event is free, and the drain the
    sweep queues takes it, on a worker that runs no recovery at all."""
    settings.WORKER_STALLED_AFTER_S = STALLED_AFTER_S  # the sweep runs here, in the test process
    answer = graph.hold("750000000001")
    doomed = start_worker()
    event = store_event(route, ["750000000001"])
    assert graph.wait_for_request("750000000001", timeout_s=WORKER_START_TIMEOUT_S), doomed.log()
    doomed.signal(signal.SIGKILL)
    doomed.wait_exit(timeout_s=5)
    killed_at = time.monotonic()
    answer.set()
    assert inbox_stale_sweep(older_than_s=0) == 0
    assert drain_jobs_of(event.pk) == ["doing"]

    time.sleep(max(0.0, killed_at + STALLED_AFTER_S + 0.5 - time.monotonic()))
    assert inbox_stale_sweep(older_than_s=0) == 1
    assert drain_jobs_of(event.pk) == ["doing", "todo"]

    ingestion = start_worker("--queues", "ingestion")
    processed = wait_until(
        lambda: event_status(event.pk) == InboxEventStatus.DONE, timeout_s=WORKER_START_TIMEOUT_S + 10
    )

    assert processed, f"event still {event_status(event.pk)}:\n{ingestion.log()}"
    assert_each_lead_once(route, ["750000000001"])
    assert graph.hits("750000000001") == 2
    # The dead drain is left to the stalled-job recovery; its rerun would find nothing of its own.
    assert wait_until(lambda: drain_jobs_of(event.pk) == ["doing"], timeout_s=5), drain_jobs_of(event.pk)


# --- Drains ----------------------------------------------------------------------------------------


def store_events_concurrently(route, leadgen_ids: list[str], *, threads: int) -> list[int]:
    """Each thread posts its share of single-change events (its own connection, as gunicorn's would)."""
    event_ids: list[int] = []
    lock = threading.Lock()

    def post(share: list[str]) -> None:
        try:
            for leadgen_id in share:
                event = store_event(route, [leadgen_id])
                with lock:
                    event_ids.append(event.pk)
        finally:
            connections.close_all()

    workers = [threading.Thread(target=post, args=(leadgen_ids[n::threads],)) for n in range(threads)]
    for thread in workers:
        thread.start()
    for thread in workers:
        thread.join()
    return sorted(event_ids)


def assert_each_event_claimed_once(event_ids: list[int]) -> None:
    """Every claim counts an attempt: one attempt each means no event went to two jobs."""
    attempts = InboxEvent.objects.filter(pk__in=event_ids).values_list("attempts", flat=True)
    assert sorted(set(attempts)) == [1]


@pytest.mark.django_db(transaction=True)
def test_many_single_change_events_are_drained_by_few_jobs(start_worker, graph, route):
    leadgen_ids = [str(760_000_000_000 + n) for n in range(300)]
    event_ids = [store_event(route, [leadgen_id]).pk for leadgen_id in leadgen_ids]

    worker = start_worker()
    done = wait_until(
        lambda: not InboxEvent.objects.filter(status=InboxEventStatus.PENDING).exists(), timeout_s=60
    )

    assert done, worker.log()
    assert_each_lead_once(route, leadgen_ids)
    assert all(graph.hits(leadgen_id) == 1 for leadgen_id in leadgen_ids)
    assert_each_event_claimed_once(event_ids)
    assert wait_until(lambda: len(worker.drains_run()) >= 1, timeout_s=2)
    # One queued drain per shard (16) plus the successors of drains that used up their time budget.
    assert len(worker.drains_run()) < len(event_ids) / 4, worker.log()


@pytest.mark.django_db(transaction=True)
def test_concurrent_drains_on_two_workers_never_take_an_event_twice(start_worker, graph, route):
    first, second = start_worker(), start_worker()
    first.wait_listening()
    second.wait_listening()
    leadgen_ids = [str(770_000_000_000 + n) for n in range(400)]

    event_ids = store_events_concurrently(route, leadgen_ids, threads=4)
    done = wait_until(
        lambda: not InboxEvent.objects.filter(status=InboxEventStatus.PENDING).exists(), timeout_s=60
    )

    assert done, f"{first.log()}\n{second.log()}"
    assert_each_lead_once(route, leadgen_ids)
    assert all(graph.hits(leadgen_id) == 1 for leadgen_id in leadgen_ids)
    assert_each_event_claimed_once(event_ids)
    drains = first.drains_run() | second.drains_run()
    assert first.drains_run() and second.drains_run(), "both workers drained"
    assert len(drains) < len(event_ids)


@pytest.mark.django_db(transaction=True)
def test_an_event_that_joins_a_queued_drain_commits_before_that_drain_can_start(
    graph, route, settings, start_worker
):
    """The race of a drain finishing its last scan as a new event commits. The webhook that finds its
    shard's drain queued joins it with a share lock on the job row: procrastinate's fetch (`FOR UPDATE
    SKIP LOCKED`) cannot start that drain before the event is visible, and the commit notifies the
    workers as a job insert would. (`start_worker` only to empty the queue before and after: the drain
    runs in this process.)"""
    settings.META_GRAPH_URL = graph.url
    settings.META_PAGE_ACCESS_TOKEN = "test-page-token"
    first = store_event(route, ["780000000001"])
    shard = drain_shard(first.pk)
    assert drain_jobs_of(first.pk) == ["todo"]

    with psycopg.connect(worker_database_url(), autocommit=True) as worker:
        worker.execute("LISTEN procrastinate_any_queue_v1")
        with transaction.atomic():
            # What the webhook does for an event of the same shard (stored directly: its id would
            # rarely fall in the shard).
            second = InboxEvent.objects.create(payload={}, leadgen_ids=["780000000002"], change_count=1)
            InboxChange.objects.create(
                event=second, position=0, leadgen_id="780000000002", ad_id=route.ad_id, value={}
            )
            assert inbox_drain_wake(shard) is False  # joined, not a second job
            fetched = worker.execute(
                "SELECT id FROM procrastinate_fetch_job_v2(ARRAY['ingestion']::varchar[], NULL)"
            ).fetchone()
            assert fetched == (None,), "the joined drain started before the event committed"
        notified = [n.payload for n in worker.notifies(timeout=2, stop_after=1)]
        (job_id,) = worker.execute(
            "SELECT id FROM procrastinate_fetch_job_v2(ARRAY['ingestion']::varchar[], NULL)"
        ).fetchone()

    assert job_id is not None
    assert notified and f'"job_id" : {job_id}' in notified[0]
    # The drain that starts now sees both events.
    report = inbox_drain(job_id=job_id, shard=shard)
    assert report.events == 2
    assert_each_lead_once(route, ["780000000001", "780000000002"])


@pytest.mark.django_db(transaction=True)
def test_a_transient_graph_failure_is_retried_by_the_events_own_job_after_the_backoff(
    start_worker, graph, route
):
    """The Graph call times out in the drain; the event goes to its own job, which runs about 2 s
    later (the first backoff wait) and succeeds; the other events of the batch were not held back."""
    answer = graph.hold("790000000001")
    worker = start_worker(env={"META_GRAPH_TIMEOUT_S": "0.5"})
    worker.wait_listening()
    slow = store_event(route, ["790000000001"])
    fine = store_event(route, ["790000000002"])
    assert wait_until(lambda: event_status(fine.pk) == InboxEventStatus.DONE, timeout_s=5), worker.log()
    assert wait_until(lambda: jobs_of_event(slow.pk) == ["todo"], timeout_s=5), worker.log()
    handed_over_at = time.monotonic()
    answer.set()

    processed = wait_until(lambda: event_status(slow.pk) == InboxEventStatus.DONE, timeout_s=10)
    waited_s = time.monotonic() - handed_over_at

    assert processed, worker.log()
    # The job is due 2 s after the hand-over; a worker looks for due scheduled jobs every few seconds.
    assert 0.5 < waited_s < 9, waited_s
    assert_each_lead_once(route, ["790000000001", "790000000002"])
    assert graph.hits("790000000001") == 2
    assert InboxEvent.objects.get(pk=slow.pk).attempts == 2


# --- SIGTERM ---------------------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_sigterm_lets_the_running_job_finish_then_exits_cleanly(start_worker, graph, route):
    grace_s = 5.0
    worker = start_worker("--shutdown-grace", str(grace_s))
    worker.wait_listening()
    answer = graph.hold("730000000001")
    event = store_event(route, ["730000000001"])
    assert graph.wait_for_request("730000000001", timeout_s=5), worker.log()

    stopped_at = time.monotonic()
    worker.signal(signal.SIGTERM)
    time.sleep(0.5)  # the job is still waiting on Graph: the worker must wait for it
    assert worker.process.poll() is None, worker.log()
    answer.set()
    exit_code = worker.wait_exit(timeout_s=grace_s + 5)

    assert exit_code == 0, worker.log()
    assert time.monotonic() - stopped_at < grace_s, worker.log()
    assert event_status(event.pk) == InboxEventStatus.DONE
    assert_each_lead_once(route, ["730000000001"])
    assert jobs_of_event(event.pk) == []


@pytest.mark.django_db(transaction=True)
def test_sigterm_with_a_job_stuck_past_the_grace_period_exits_and_recovery_finishes_it(
    start_worker, graph, route
):
    grace_s = 1.0
    answer = graph.hold("740000000001")
    worker = start_worker("--shutdown-grace", str(grace_s))
    event = store_event(route, ["740000000001"])
    assert graph.wait_for_request("740000000001", timeout_s=WORKER_START_TIMEOUT_S), worker.log()

    worker.signal(signal.SIGTERM)
    # grace, then HARD_STOP_MARGIN_S (3 s) for procrastinate's own shutdown, then the exit.
    exit_code = worker.wait_exit(timeout_s=grace_s + 3 + 5)

    assert exit_code == 1, worker.log()
    assert worker.wait_logged("stalled-job recovery will retry them"), worker.log()
    assert event_status(event.pk) == InboxEventStatus.PENDING
    answer.set()

    rescuer = start_worker()
    recovered = wait_until(
        lambda: event_status(event.pk) == InboxEventStatus.DONE, timeout_s=STALLED_AFTER_S + 10
    )

    assert recovered, f"event still {event_status(event.pk)}:\n{rescuer.log()}"
    assert_each_lead_once(route, ["740000000001"])
    assert jobs_of_event(event.pk) == []


# --- Arguments -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "message"),
    [
        pytest.param(
            ["--queues", "nope"],
            "Unknown queue(s) nope; known: ingestion, deliveries, maintenance.",
            id="_case_unknown_queue",
        ),
        pytest.param(["--queues", " , "], "Unknown queue(s) (none given)", id="_case_no_queue"),
        pytest.param(
            ["--concurrency", "0"], "--concurrency must be at least 1.", id="_case_zero_concurrency"
        ),
        pytest.param(["--shutdown-grace", "0"], "--shutdown-grace", id="_case_zero_grace"),
    ],
)
def test_run_worker_refuses_bad_arguments(args, message):
    with pytest.raises(CommandError) as raised:
        call_command("run_worker", *args)

    assert message in str(raised.value)


def test_run_worker_refuses_a_stalled_window_that_is_not_positive(settings):
    settings.WORKER_STALLED_AFTER_S = 0

    with pytest.raises(CommandError, match="WORKER_STALLED_AFTER_S must be a positive"):
        call_command("run_worker")


# --- Cadences ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("stalled_after_s", "cron", "heartbeat_s"),
    [
        pytest.param(60, "* * * * * */30", 10.0, id="_case_default"),
        pytest.param(300, "* * * * *", 10.0, id="_case_long_window_checks_each_minute"),
        pytest.param(3, "* * * * * */1", 0.75, id="_case_short_window"),
        pytest.param(1, "* * * * * */1", 0.25, id="_case_shortest_check_is_every_second"),
    ],
)
def test_recovery_and_heartbeat_follow_the_stalled_window(stalled_after_s, cron, heartbeat_s):
    """Recovery looks twice per window; a live worker beats four times per window, so it never looks
    dead to the recovery of another."""
    assert recovery_cron(stalled_after_s) == cron
    assert heartbeat_interval(stalled_after_s) == heartbeat_s
