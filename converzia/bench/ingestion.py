"""The Meta webhook scenarios, on the pieces of `manage.py measure_ingestion` (leads/measure/).

- Ack: signed `POST /api/webhooks/meta-leads`, one leadgen change each, at concurrency 2 (the durable
  insert and the job deferral only). The worker is started after the POSTs, so the ack is measured with
  the web server alone, and then drains them: a change left unprocessed is a failure.
- End to end: N signed events at a throughput concurrency, timed from the first POST sent to the last
  change processed by the worker (Graph fetch from the local stub, upserts, events): leads/s.

Every change is a new leadgen id (a new person) on the `measure-ingestion` tenant, its offer and ad
mapping (`measure_route_ensure`), so each one creates a lead, a lead_source and a lead_offer there.

The worker: `IngestionRig` starts `manage.py run_worker` subprocesses on this process's database with
META_GRAPH_URL at the stub it starts, and stops them at the end; with `worker_running` it starts only
the stub (on a fixed port) for a worker already running with META_GRAPH_URL pointed at it.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from urllib.parse import quote

from django.conf import settings
from django.db import connection

from converzia.bench.http import LoadResult
from converzia.bench.scenarios import Targets
from leads.measure.graph_stub import GraphStub
from leads.measure.load import (
    WEBHOOK_PATH,
    MeasureRoute,
    PostResults,
    ProcessingResults,
    SignedPost,
    measure_route_ensure,
    next_leadgen_number,
    percentile,
    post_all,
    signed_posts,
    wait_processed,
)
from leads.models import InboxChange, InboxChangeStatus

ACK_TARGETS = Targets(guide_ms=(500, 2000, 5000), ours_ms=(5, 20))
LEADS_PER_S_TARGET = 500.0
ENQUEUE_TO_START_P95_TARGET_MS = 50.0
MANAGE_PY = Path(settings.BASE_DIR) / "manage.py"
# run_worker's grace on SIGTERM; the bench's jobs are short.
WORKER_SHUTDOWN_GRACE_S = 5.0
WORKER_STOP_TIMEOUT_S = 15.0


class IngestionError(Exception):
    """The worker could not be started or died: the webhook scenarios cannot go on."""


class _TimingGraphStub(GraphStub):
    """The Graph stub, noting when the first request for each leadgen id arrived: the moment the
    worker's job for that change had started and read its event (enqueue → start, from the data)."""

    def __init__(self, *, port: int = 0) -> None:
        super().__init__(port=port)
        self.first_request_at: dict[str, float] = {}

    def _request_arrived(self, leadgen_id: str) -> None:
        self.first_request_at.setdefault(leadgen_id, time.time())
        super()._request_arrived(leadgen_id)


def _database_url() -> str:
    """This process's database as a URL for the worker: DATABASE_URL itself when it names the same
    database (keeping its options), else built from the connection settings (under tests, the test
    database)."""
    db = connection.settings_dict
    env_url = os.environ.get("DATABASE_URL", "")
    if env_url and env_url.split("?", 1)[0].rstrip("/").rsplit("/", 1)[-1] == db["NAME"]:
        return env_url
    password = f":{quote(db['PASSWORD'], safe='')}" if db.get("PASSWORD") else ""
    host = db.get("HOST") or "127.0.0.1"
    port = db.get("PORT") or 5432
    return f"postgres://{quote(db['USER'], safe='')}{password}@{host}:{port}/{db['NAME']}"


class _Workers:
    """`processes` × `manage.py run_worker --concurrency C`, logging to a temporary folder."""

    def __init__(self, *, graph_url: str, processes: int, concurrency: int) -> None:
        self.log_dir = Path(tempfile.mkdtemp(prefix="cvz-bench-worker-"))
        # Overridden settings (tests) have no SETTINGS_MODULE; the environment names the module then.
        settings_module = os.environ.get("DJANGO_SETTINGS_MODULE") or settings.SETTINGS_MODULE
        env = {
            **os.environ,
            **({"DJANGO_SETTINGS_MODULE": settings_module} if settings_module else {}),
            "DATABASE_URL": _database_url(),
            "META_GRAPH_URL": graph_url,
            "META_PAGE_ACCESS_TOKEN": settings.META_PAGE_ACCESS_TOKEN or "bench-page-token",
            "PYTHONUNBUFFERED": "1",
        }
        self.processes: list[tuple[subprocess.Popen[bytes], Path]] = []
        for index in range(processes):
            log_path = self.log_dir / f"worker-{index}.log"
            with log_path.open("wb") as log:
                process = subprocess.Popen(
                    [
                        sys.executable,
                        str(MANAGE_PY),
                        "run_worker",
                        "--concurrency",
                        str(concurrency),
                        "--shutdown-grace",
                        str(WORKER_SHUTDOWN_GRACE_S),
                        "--name",
                        f"bench-{index}",
                    ],
                    env={**env, "PGAPPNAME": f"cvz-bench-worker-{index}"},
                    cwd=MANAGE_PY.parent,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            self.processes.append((process, log_path))

    def dead(self) -> str | None:
        """A description of the first worker that exited, with its log's end; None while all run."""
        for process, log_path in self.processes:
            if process.poll() is not None:
                tail = log_path.read_text(errors="replace")[-1500:]
                return f"worker exited with status {process.returncode}:\n{tail}"
        return None

    def stop(self) -> None:
        for process, _ in self.processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + WORKER_STOP_TIMEOUT_S
        for process, _ in self.processes:
            try:
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)
        shutil.rmtree(self.log_dir, ignore_errors=True)


@dataclass(frozen=True)
class RigOptions:
    secret: str
    worker_running: bool
    graph_port: int
    worker_processes: int
    worker_concurrency: int
    timeout_s: float


class IngestionRig:
    """The stub (started at once) and the workers (started on first need), stopped on exit."""

    def __init__(self, options: RigOptions) -> None:
        self.options = options
        self.route: MeasureRoute = measure_route_ensure()
        self.graph = _TimingGraphStub(port=options.graph_port)
        self.workers: _Workers | None = None
        self.warm = False

    def __enter__(self) -> IngestionRig:
        self.graph.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        try:
            if self.workers is not None:
                self.workers.stop()
        finally:
            self.graph.stop()

    @property
    def worker_description(self) -> str:
        if self.options.worker_running:
            return f"already running (Graph stub on port {self.graph.port})"
        return f"started by bench: {self.options.worker_processes} × run_worker --concurrency " + str(
            self.options.worker_concurrency
        )

    def ensure_worker(self) -> None:
        if self.options.worker_running or self.workers is not None:
            return
        self.workers = _Workers(
            graph_url=self.graph.url,
            processes=self.options.worker_processes,
            concurrency=self.options.worker_concurrency,
        )

    def posts(self, events: int, changes_per_event: int = 1) -> list[SignedPost]:
        first = next_leadgen_number(self.route)
        return signed_posts(
            route=self.route,
            first_number=first,
            events=events,
            changes_per_event=changes_per_event,
            secret=self.options.secret,
        )

    def wait(self, posts: list[SignedPost], expected: int) -> ProcessingResults:
        """Until the worker has settled `expected` changes of `posts`; raises if a worker died."""
        self.ensure_worker()
        deadline = time.monotonic() + self.options.timeout_s
        while True:
            done = wait_processed(
                route=self.route,
                first_id=posts[0].leadgen_ids[0],
                last_id=posts[-1].leadgen_ids[-1],
                expected=expected,
                timeout_s=min(2.0, max(0.0, deadline - time.monotonic())),
            )
            if not done.timed_out or time.monotonic() >= deadline:
                self.warm = self.warm or not done.timed_out
                return done
            if self.workers is not None and (death := self.workers.dead()):
                raise IngestionError(death)

    def warm_up(self, url: str, events: int) -> None:
        """A few events through the whole path first, so the end-to-end timing starts warm."""
        if self.warm or events < 1:
            return
        posts = self.posts(events)
        sent = post_all(url=url, posts=posts, concurrency=min(2, events))
        if sent.accepted_changes:
            self.wait(posts, sent.accepted_changes)

    def enqueue_to_start_ms(self, posts: list[SignedPost]) -> list[float]:
        """Per change: stored by the webhook → the worker's Graph request for it (same machine clock)."""
        stored = InboxChange.objects.filter(
            ad_id=self.route.ad_id,
            leadgen_id__gte=posts[0].leadgen_ids[0],
            leadgen_id__lte=posts[-1].leadgen_ids[-1],
        ).values_list("leadgen_id", "created_at")
        arrivals = self.graph.first_request_at
        return [
            (arrivals[leadgen_id] - created_at.timestamp()) * 1000
            for leadgen_id, created_at in stored
            if leadgen_id in arrivals
        ]


def load_of_posts(sent: PostResults) -> LoadResult:
    """The load generator's results in the bench's shape (statuses, transport errors, first failure)."""
    load = LoadResult(latencies_s=list(sent.latencies_s), wall_s=sent.finished_at - sent.started_at)
    http_failures = 0
    for failure, count in sent.failures.items():
        if failure.startswith("HTTP "):
            load.statuses[int(failure.removeprefix("HTTP "))] += count
            http_failures += count
        else:
            load.errors[failure] += count
    load.statuses[200] += len(sent.latencies_s) - http_failures
    if sent.failures:
        load.first_failure = f"POST {WEBHOOK_PATH}: {dict(sent.failures)}"
    return load


def count_unprocessed(load: LoadResult, done: ProcessingResults, accepted: int) -> int:
    """Accepted changes the worker did not process count as failures of the scenario."""
    processed = done.statuses.get(InboxChangeStatus.PROCESSED, 0)
    missing = max(0, accepted - processed)
    if missing:
        load.errors["change not processed"] += missing
        others = {status: n for status, n in done.statuses.items() if status != InboxChangeStatus.PROCESSED}
        load.first_failure = load.first_failure or (
            f"{missing} of {accepted} accepted changes not processed ({others}"
            f"{', timed out' if done.timed_out else ''})"
        )
    return processed


def webhook_ack(rig: IngestionRig, url: str, *, posts: int, warmup: int, concurrency: int) -> LoadResult:
    """The ack latency of `posts` single-change POSTs, then the worker drains them (failures if not)."""
    batch = rig.posts(warmup + posts)
    warm = post_all(url=url, posts=batch[:warmup], concurrency=min(concurrency, warmup)) if warmup else None
    sent = post_all(url=url, posts=batch[warmup:], concurrency=concurrency)
    load = load_of_posts(sent)
    accepted = sent.accepted_changes + (warm.accepted_changes if warm else 0)
    if accepted:
        count_unprocessed(load, rig.wait(batch, accepted), accepted)
    return load


@dataclass(frozen=True)
class EndToEnd:
    load: LoadResult  # latencies: per change, stored → processed
    leads: int
    leads_per_s: float
    extra: dict[str, object]


def _percentiles_ms(values_ms: list[float]) -> dict[str, float | None]:
    if not values_ms:
        return {"p50": None, "p95": None, "p99": None}
    return {f"p{int(q * 100)}": round(percentile(values_ms, q), 2) for q in (0.50, 0.95, 0.99)}


def webhook_end_to_end(
    rig: IngestionRig, url: str, *, events: int, changes_per_event: int, concurrency: int, warmup: int
) -> EndToEnd:
    rig.ensure_worker()
    rig.warm_up(url, warmup)
    posts = rig.posts(events, changes_per_event)
    sent = post_all(url=url, posts=posts, concurrency=concurrency)
    done = rig.wait(posts, sent.accepted_changes)
    ingest = LoadResult(latencies_s=list(done.ingest_latencies_s))
    ack = load_of_posts(sent)
    ingest.statuses, ingest.errors, ingest.first_failure = ack.statuses, ack.errors, ack.first_failure
    processed = count_unprocessed(ingest, done, sent.accepted_changes)
    elapsed_s = done.last_processed_at.timestamp() - sent.started_at if done.last_processed_at else 0.0
    ingest.wall_s = max(elapsed_s, 1e-9)
    leads_per_s = processed / elapsed_s if elapsed_s > 0 else 0.0
    enqueue_to_start = _percentiles_ms(rig.enqueue_to_start_ms(posts))
    p95 = enqueue_to_start["p95"]
    extra: dict[str, object] = {
        "events": events,
        "changes_per_event": changes_per_event,
        "concurrency": concurrency,
        "worker": rig.worker_description,
        "leads": processed,
        "end_to_end_s": round(elapsed_s, 3),
        "ack_ms": _percentiles_ms([latency * 1000 for latency in sent.latencies_s]),
        "latency_columns": "per change: stored by the webhook → processed by the worker",
        "enqueue_to_start_ms": enqueue_to_start,
        "enqueue_to_start_note": "stored by the webhook → the worker's Graph request for the change",
        "enqueue_to_start_p95_target_ms": ENQUEUE_TO_START_P95_TARGET_MS,
        "meets_enqueue_to_start": None if p95 is None else p95 <= ENQUEUE_TO_START_P95_TARGET_MS,
        "graph_requests": rig.graph.total_hits(),
    }
    return EndToEnd(load=ingest, leads=processed, leads_per_s=leads_per_s, extra=extra)
