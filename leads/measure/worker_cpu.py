"""Where the ingestion worker's time goes: CPU per lead of the worker process and of its PostgreSQL
backends, for events already stored (no web server involved).

    DJANGO_SETTINGS_MODULE=converzia.settings.local DEBUG=false DATABASE_URL=postgres://…/cvz_measure \\
        .venv/bin/python -m leads.measure.worker_cpu --events 300 --changes-per-event 10 --concurrency 8

It stores the events directly (as the webhook would), starts the Graph stub, runs
`manage.py run_worker --burst --queues ingestion` until the queue is drained, and reads CPU time from
the kernel: the worker's from its rusage, each backend's from /proc while it lives (so the figure
includes only this database's backends). Worker start-up (Django import, about 1.5 s of CPU) is part
of the worker figure; use enough events to amortise it. Run it on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import threading
import time

import django


def _cpu_seconds(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class BackendCpu:
    """Samples the CPU time of every backend connected to `database` (other than its own)."""

    def __init__(self, dsn: str, database: str) -> None:
        self.dsn, self.database = dsn, database
        self.first: dict[int, float] = {}
        self.last: dict[int, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        import psycopg

        with psycopg.connect(self.dsn, autocommit=True) as conn:
            own = conn.execute("SELECT pg_backend_pid()").fetchone()[0]
            while not self._stop.is_set():
                rows = conn.execute(
                    "SELECT pid FROM pg_stat_activity WHERE datname = %s AND pid <> %s", (self.database, own)
                ).fetchall()
                for (pid,) in rows:
                    cpu = _cpu_seconds(pid)
                    if cpu is not None:
                        self.first.setdefault(pid, cpu)
                        self.last[pid] = cpu
                self._stop.wait(0.05)

    def __enter__(self) -> BackendCpu:
        self._thread.start()
        time.sleep(0.3)
        # Backends that existed before the run count from here.
        self.first = dict(self.last)
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def seconds(self) -> float:
        return sum(self.last[pid] - self.first.get(pid, self.last[pid]) for pid in self.last)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--events", type=int, default=300)
    parser.add_argument("--changes-per-event", type=int, default=10)
    parser.add_argument("--concurrency", type=int, default=8)
    options = parser.parse_args(argv)
    django.setup()

    from django.db import connection

    from leads.ingestion import inbox_event_store
    from leads.measure.graph_stub import GraphStub
    from leads.measure.load import measure_route_ensure, next_leadgen_number
    from leads.measure.payloads import leadgen_payload
    from leads.meta import leadgen_changes
    from leads.models import InboxChange, InboxChangeStatus

    route = measure_route_ensure()
    first = next_leadgen_number(route)
    per = options.changes_per_event
    for event in range(options.events):
        ids = [str(first + event * per + i) for i in range(per)]
        body = leadgen_payload(page_id="1", ad_id=route.ad_id, form_id="1", leadgen_ids=ids, created_time=1)
        inbox_event_store(payload=body, changes=leadgen_changes(body))
    leads = options.events * per
    settings_dict = connection.settings_dict
    dsn = " ".join(
        f"{key}={value}"
        for key, value in (
            ("host", settings_dict["HOST"] or "localhost"),
            ("port", settings_dict["PORT"] or 5432),
            ("user", settings_dict["USER"]),
            ("dbname", settings_dict["NAME"]),
        )
    )
    connection.close()

    with GraphStub() as graph, BackendCpu(dsn, settings_dict["NAME"]) as backends:
        env = dict(os.environ, META_GRAPH_URL=graph.url, META_PAGE_ACCESS_TOKEN="measure-token")
        command = [sys.executable, "manage.py", "run_worker", "--burst", "--queues", "ingestion"]
        started = time.perf_counter()
        worker = subprocess.Popen([*command, "--concurrency", str(options.concurrency)], env=env)
        _, status, usage = os.wait4(worker.pid, 0)
        wall = time.perf_counter() - started
    pending = InboxChange.objects.filter(status=InboxChangeStatus.PENDING, ad_id=route.ad_id).count()
    worker_cpu = usage.ru_utime + usage.ru_stime
    sys.stdout.write(
        f"{options.events} events x {per} change(s), worker concurrency {options.concurrency}: "
        f"{leads / wall:.0f} leads/s; CPU per lead: worker {worker_cpu / leads * 1000:.2f} ms, "
        f"PostgreSQL {backends.seconds / leads * 1000:.2f} ms; still pending: {pending}\n"
    )
    return 0 if status == 0 and pending == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
