"""Measure a running server against TARGETS.md: read latency, user sessions, mixed read throughput,
the ops write, the Meta webhook's ack and ingestion end to end.

    manage.py bench --url http://127.0.0.1:8000              # every scenario
    manage.py bench --scenario 'stats.*' --requests 1000     # some scenarios, more samples
    manage.py bench --json > bench.json
    manage.py bench --scenario 'webhook.*' --worker-running --graph-port 8765   # your own worker

The server must use the same database as this command (and, for the webhook scenarios, the same
META_APP_SECRET): the command picks the tenants to measure (the whale and a ~10k-lead tenant, plus
owners of the largest tenants as session users), issues throw-away API tokens (revoked at the end),
and times the SQL of each read on its own for the API / raw SQL ratio and the framework overhead
(API p50 − raw SQL p50), judged in multiples of `GET /api/health/live`'s p50: `health.live` runs first,
even when --scenario leaves it out, and again after the other reads (reported, not used). It writes:
ingested leads land on the `measure-ingestion` tenant; the ops scenario moves some of the whale's
lead_offers to a partner status and back (converzia/bench/writes.py). Every run writes
reports/bench/<UTC timestamp>/ (report.json, report.md, latency.png) unless --no-report. See
docs/performance.md.
"""

from __future__ import annotations

import contextlib
import fnmatch
import http.client
import importlib.util
import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

from django.conf import settings
from django.core.management.base import CommandError, CommandParser
from django.utils import timezone

from converzia.bench.fixture import BenchDataError, BenchFixture, bench_fixture
from converzia.bench.http import LoadResult, run_closed_loop
from converzia.bench.ingestion import (
    ACK_TARGETS,
    LEADS_PER_S_TARGET,
    IngestionError,
    IngestionRig,
    RigOptions,
    webhook_ack,
    webhook_end_to_end,
)
from converzia.bench.report import (
    ScenarioResult,
    json_text,
    judge_overhead,
    liveness_p50_ms,
    measured_result,
    overhead_summary_line,
    scenario_result,
    table,
    with_overhead,
    write_report,
)
from converzia.bench.scenarios import (
    LIVENESS_SCENARIO,
    NO_TARGET,
    OVERHEAD_X_ACK,
    OVERHEAD_X_WRITE,
    WRITE_TARGETS,
    Flow,
    OverheadBasis,
    Scenario,
    read_scenarios,
)
from converzia.bench.sessions import (
    MIXED_READ_TARGET_PER_S,
    SESSION_LOOP_REQUESTS,
    mixed_reads,
    run_mixed_reads,
    run_user_sessions,
)
from converzia.bench.sql import capture_request_sql, median_ms, time_statements
from converzia.bench.writes import (
    ROWS_PER_CLIENT,
    TransitionRow,
    reversible_partners,
    run_transitions,
    transition_rows,
)
from converzia.management.base import ConverziaCommand

# --quick: every scenario runs, each briefly (CI smoke on a small dataset, well under a minute).
QUICK = {
    "requests": 20,
    "warmup": 2,
    "raw_repeat": 2,
    "max_seconds": 3.0,
    "session_loops": 1,
    "mixed_concurrency": [4, 8],
    "mixed_seconds": 1.5,
    "e2e_events": 50,
    "ingest_timeout": 60.0,
    "worker_processes": 1,  # one Django start-up less
}
DEFAULT_REPORT_DIR = Path(settings.BASE_DIR) / "reports" / "bench"
# Events sent through the whole ingestion path before the end-to-end timing, when the ack scenario
# has not already warmed the worker.
E2E_WARMUP_EVENTS = 10
Named = TypeVar("Named", Scenario, Flow)


def _positive(value: str) -> int:
    number = int(value)
    if number < 1:
        raise ValueError(value)
    return number


def _levels(value: str) -> list[int]:
    return [_positive(part) for part in value.split(",") if part.strip()]


def _liveness_first(selected: list[Scenario], every: Sequence[Scenario]) -> list[Scenario]:
    """The selected read scenarios with liveness first: it is the unit of overhead, so it runs even
    when --scenario leaves it out."""
    liveness = [scenario for scenario in every if scenario.name == LIVENESS_SCENARIO]
    return liveness + [scenario for scenario in selected if scenario.name != LIVENESS_SCENARIO]


def _failed(name: str, description: str, message: str) -> ScenarioResult:
    """A scenario that could not run (its worker died): one failure that says why."""
    load = LoadResult(first_failure=message)
    load.errors["could not run"] += 1
    return measured_result(name=name, description=description, load=load, targets=NO_TARGET)


class Command(ConverziaCommand):
    help = "Benchmark the read API of a running server: p50/p95/p99, requests/s, targets, API/SQL ratio."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--url", default="http://127.0.0.1:8000", help="The running server.")
        parser.add_argument("--requests", type=_positive, default=300, help="Timed requests per scenario.")
        parser.add_argument("--warmup", type=int, default=20, help="Untimed requests first (fill caches).")
        parser.add_argument("--concurrency", type=_positive, default=2, help="Requests in flight.")
        parser.add_argument(
            "--max-seconds",
            type=float,
            default=30.0,
            help="Stop a scenario after this long even if it has fewer samples (default 30).",
        )
        parser.add_argument(
            "--raw-repeat", type=_positive, default=30, help="Runs of each request's SQL for its raw p50."
        )
        parser.add_argument(
            "--scenario", action="append", default=[], help="Glob of scenario names (repeatable)."
        )
        parser.add_argument(
            "--quick",
            action="store_true",
            help="A smoke run for CI: few requests per scenario; fails on errors, never on timings.",
        )
        parser.add_argument("--list", action="store_true", help="List the scenarios and exit.")
        parser.add_argument("--json", action="store_true", help="Print the results as JSON.")
        sessions = parser.add_argument_group("sessions and throughput")
        sessions.add_argument(
            "--users", type=_positive, default=20, help="Simulated portal users in sessions.users."
        )
        sessions.add_argument(
            "--session-loops",
            type=_positive,
            default=5,
            help=f"Loops per user ({SESSION_LOOP_REQUESTS} requests each; --max-seconds still applies).",
        )
        sessions.add_argument(
            "--mixed-concurrency",
            type=_levels,
            default=[4, 8, 16],
            help="Concurrencies reads.mixed tries in turn, keeping the best (default 4,8,16).",
        )
        sessions.add_argument(
            "--mixed-seconds", type=float, default=10.0, help="Seconds reads.mixed runs at each."
        )
        ingestion = parser.add_argument_group("webhook scenarios")
        ingestion.add_argument(
            "--e2e-events", type=_positive, default=2000, help="Signed POSTs in webhook.end_to_end."
        )
        ingestion.add_argument(
            "--e2e-changes-per-event", type=_positive, default=1, help="Leadgen changes per POST there."
        )
        ingestion.add_argument(
            "--e2e-concurrency", type=_positive, default=8, help="Client threads POSTing there."
        )
        ingestion.add_argument(
            "--worker-running",
            action="store_true",
            help="Use a worker already running with META_GRAPH_URL=http://127.0.0.1:<--graph-port> "
            "instead of starting one.",
        )
        ingestion.add_argument(
            "--graph-port",
            type=int,
            default=0,
            help="Port of the Graph stub (0: any; fixed with --worker-running).",
        )
        ingestion.add_argument(
            "--worker-processes", type=_positive, default=2, help="run_worker processes the bench starts."
        )
        ingestion.add_argument(
            "--worker-concurrency", type=_positive, default=4, help="--concurrency of each of them."
        )
        ingestion.add_argument(
            "--ingest-timeout",
            type=float,
            default=300.0,
            help="Seconds to wait for the worker to process what a webhook scenario posted.",
        )
        output = parser.add_argument_group("report folder")
        output.add_argument(
            "--report-dir",
            type=Path,
            default=DEFAULT_REPORT_DIR,
            help="Where each run's <UTC timestamp>/ folder goes (default reports/bench/).",
        )
        output.add_argument("--no-report", action="store_true", help="Write no report folder.")

    def handle(self, *args: Any, **options: Any) -> None:
        if options["quick"]:
            # Quick sizes replace the defaults, not what was asked for on the command line.
            defaults = vars(self.create_parser("manage.py", "bench").parse_args([]))
            options |= {key: value for key, value in QUICK.items() if options[key] == defaults[key]}
        if options["worker_running"] and not options["graph_port"]:
            raise CommandError("--worker-running needs --graph-port: the port its META_GRAPH_URL names.")
        if not options["no_report"] and importlib.util.find_spec("matplotlib") is None:
            # Said before the run, not after minutes of measuring.
            raise CommandError(
                "The report's latency chart needs matplotlib, a development requirement: "
                "`make install-dev` (or pip install -r requirements-dev.txt), or pass --no-report."
            )
        self._check_server(options["url"])
        # The requests replayed in-process to capture their SQL log like any request; their lines
        # would drown the report.
        logging.disable(logging.INFO)
        try:
            self._bench(options)
        finally:
            logging.disable(logging.NOTSET)

    def _bench(self, options: dict[str, Any]) -> None:
        started_at = timezone.now()
        try:
            with bench_fixture(session_users=options["users"]) as fixture, contextlib.ExitStack() as stack:
                scenarios, skipped = read_scenarios(fixture)
                flows, flows_skipped = self._flows(fixture, options, stack)
                skipped += flows_skipped
                everything = scenarios
                scenarios = self._selected(scenarios, options["scenario"], also=flows)
                flows = self._selected(flows, options["scenario"], also=everything)
                scenarios = _liveness_first(scenarios, everything)
                if options["list"]:
                    for item in [*scenarios, *flows]:
                        self.stdout.write(f"{item.name:28} {item.description}")
                    return
                self.stderr.write(
                    f"whale: {fixture.whale.tenant.slug} ({fixture.whale.lead_offers:,} lead_offers); "
                    f"small: {fixture.small.tenant.slug} ({fixture.small.lead_offers:,}); "
                    f"{len(scenarios)} read scenarios × {options['requests']} requests at concurrency "
                    f"{options['concurrency']}, then {len(flows)} more"
                    + (f"; skipped: {', '.join(sorted(set(skipped)))}" if skipped else "")
                )
                results = [self._run(scenario, options) for scenario in scenarios]
                results = self._liveness_after_reads(results, scenarios, options)
                results += [self._run_flow(flow) for flow in flows]
        except BenchDataError as exc:
            raise CommandError(str(exc)) from None

        results = judge_overhead(results, liveness_p50_ms(results))
        if options["json"]:
            self.stdout.write(json_text(results))
        else:
            self.stdout.write(table(results))
            self.stdout.write(
                "pass/FAIL compare timings with the targets; the command itself fails only when a request"
                " fails." + (" A --quick run's timings are indicative only." if options["quick"] else "")
            )
        if not options["no_report"]:
            about = {
                "started_at": started_at.isoformat(timespec="seconds"),
                "url": options["url"],
                "quick": options["quick"],
                "whale": f"{fixture.whale.tenant.slug} ({fixture.whale.lead_offers:,} lead_offers)",
                "small": f"{fixture.small.tenant.slug} ({fixture.small.lead_offers:,} lead_offers)",
                "reads": f"{options['requests']} requests each, concurrency {options['concurrency']}",
                "skipped": ", ".join(sorted(set(skipped))) or "none",
            }
            folder = write_report(options["report_dir"], results, about, started_at)
            (self.stderr if options["json"] else self.stdout).write(f"report: {folder}")
        # The summary ends the human output; with --json it goes beside the progress lines.
        (self.stderr if options["json"] else self.stdout).write(overhead_summary_line(results))
        failed = [result for result in results if result.failed]
        if failed:
            details = "; ".join(
                f"{result.name}: {result.failed} failed ({result.first_failure})" for result in failed
            )
            raise CommandError(f"Requests failed: {details}")

    def _flows(
        self, fixture: BenchFixture, options: dict[str, Any], stack: contextlib.ExitStack
    ) -> tuple[list[Flow], list[str]]:
        """The scenarios beyond the read list, in the order they run: reads first (they need the
        caches the write invalidates), the ingestion last (it loads the machine the most)."""
        skipped: list[str] = []
        flows = [
            Flow(
                "sessions.users",
                f"{len(fixture.session_users)} portal users at once, each looping list → next page → "
                "detail → stats → funnel → balance",
                lambda: self._sessions(fixture, options),
                overhead_basis=OverheadBasis.UPPER_BOUND,
            ),
            Flow(
                "reads.mixed",
                "portal reads of the whale and the small tenant, shuffled; best requests/s of "
                + "/".join(str(level) for level in options["mixed_concurrency"])
                + " in flight",
                lambda: self._mixed(fixture, options),
                overhead_basis=OverheadBasis.UPPER_BOUND,
            ),
        ]
        rows = transition_rows(fixture.whale, options["concurrency"] * ROWS_PER_CLIENT)
        pairs = ", ".join(f"{a}⇄{b}" for a, b in reversible_partners().items())
        if rows:
            flows.append(
                Flow(
                    "ops.transition",
                    f"staff transition of {len(rows)} whale lead_offers there and back ({pairs})",
                    lambda: self._transitions(rows, fixture, options),
                    overhead_basis=OverheadBasis.WHOLE_P50,
                    overhead_target_x=OVERHEAD_X_WRITE,
                )
            )
        else:
            skipped.append(f"ops.transition (the whale has no lead_offer to move: {pairs})")
        if not settings.META_APP_SECRET:
            skipped.append("webhook.* (no META_APP_SECRET: set the server's)")
            return flows, skipped
        rig: list[IngestionRig] = []  # started when a webhook scenario first runs

        def ingestion() -> IngestionRig:
            if not rig:
                try:
                    rig.append(stack.enter_context(IngestionRig(self._rig_options(options))))
                except (OSError, ValueError) as exc:  # the stub's port is taken; the ad is mapped elsewhere
                    raise IngestionError(
                        f"Cannot set up ingestion (Graph stub, measurement route): {exc}"
                    ) from None
            return rig[0]

        flows += [
            Flow(
                "webhook.ack",
                f"signed Meta POST, 1 change, concurrency {options['concurrency']}, "
                + ("the worker running too" if options["worker_running"] else "web alone")
                + "; then the worker must process them all",
                lambda: self._ack(ingestion, options),
                overhead_basis=OverheadBasis.WHOLE_P50,
                overhead_target_x=OVERHEAD_X_ACK,
            ),
            Flow(
                "webhook.end_to_end",
                f"{options['e2e_events']} signed POSTs × {options['e2e_changes_per_event']} change(s) at "
                f"concurrency {options['e2e_concurrency']}, first POST → last lead processed",
                lambda: self._end_to_end(ingestion, options),
                # No overhead: its latency columns are per change, stored → processed, not requests.
            ),
        ]
        return flows, skipped

    def _rig_options(self, options: dict[str, Any]) -> RigOptions:
        return RigOptions(
            secret=settings.META_APP_SECRET,
            worker_running=options["worker_running"],
            graph_port=options["graph_port"],
            worker_processes=options["worker_processes"],
            worker_concurrency=options["worker_concurrency"],
            timeout_s=options["ingest_timeout"],
        )

    def _run_flow(self, flow: Flow) -> ScenarioResult:
        self.stderr.write(f"  {flow.name} …", ending="")
        self.stderr.flush()
        started = time.monotonic()
        try:
            result: ScenarioResult = flow.run()
        except IngestionError as exc:
            result = _failed(flow.name, flow.description, str(exc))
        result = ScenarioResult(**{**result.as_dict(), "description": flow.description})
        result = with_overhead(result, basis=flow.overhead_basis, target_x=flow.overhead_target_x)
        summary = f" p50 {result.p50_ms:.1f} ms"
        if result.throughput_per_s is not None:
            summary += f", {result.throughput_per_s:g} {result.throughput_unit}"
        self.stderr.write(f"{summary} ({time.monotonic() - started:.1f} s)")
        return result

    def _sessions(self, fixture: BenchFixture, options: dict[str, Any]) -> ScenarioResult:
        load = run_user_sessions(
            options["url"], fixture, loops=options["session_loops"], max_seconds=options["max_seconds"]
        )
        return measured_result(
            name="sessions.users",
            description=f"{len(fixture.session_users)} portal users, session loops",
            load=load,
            targets=NO_TARGET,
            throughput_per_s=load.requests_per_s,
            throughput_unit="requests/s",
            extra={"users": len(fixture.session_users), "loops_per_user": options["session_loops"]},
        )

    def _mixed(self, fixture: BenchFixture, options: dict[str, Any]) -> ScenarioResult:
        mixed = run_mixed_reads(
            options["url"],
            mixed_reads(fixture),
            levels=options["mixed_concurrency"],
            seconds=options["mixed_seconds"],
            warmup=options["warmup"],
        )
        result = measured_result(
            name="reads.mixed",
            description=f"portal reads, mixed, at concurrency {mixed.concurrency} (the best tried)",
            load=mixed.best,
            targets=NO_TARGET,
            throughput_per_s=mixed.best.requests_per_s,
            throughput_unit="requests/s",
            throughput_target=MIXED_READ_TARGET_PER_S,
            extra={"concurrency": mixed.concurrency, "requests_per_s_by_concurrency": mixed.requests_per_s},
        )
        if mixed.failed != result.failed:
            # Failures at a concurrency that was not the best still fail the scenario (0 errors).
            return ScenarioResult(**{**result.as_dict(), "failed": mixed.failed, "meets_throughput": False})
        return result

    def _transitions(
        self, rows: list[TransitionRow], fixture: BenchFixture, options: dict[str, Any]
    ) -> ScenarioResult:
        run = run_transitions(
            options["url"],
            rows,
            fixture.staff_token,
            total=options["requests"],
            concurrency=options["concurrency"],
            max_seconds=options["max_seconds"],
        )
        return measured_result(
            name="ops.transition",
            description="staff transition of whale lead_offers there and back",
            load=run.load,
            targets=WRITE_TARGETS,
            extra={"lead_offers": len(rows), "moved_back_after_the_run": run.restored},
        )

    def _ack(self, ingestion: Callable[[], IngestionRig], options: dict[str, Any]) -> ScenarioResult:
        rig = ingestion()
        load = webhook_ack(
            rig,
            options["url"],
            posts=options["requests"],
            warmup=options["warmup"],
            concurrency=options["concurrency"],
        )
        return measured_result(
            name="webhook.ack",
            description="signed Meta POST, 1 change",
            load=load,
            targets=ACK_TARGETS,
            extra={"worker": rig.worker_description},
        )

    def _end_to_end(self, ingestion: Callable[[], IngestionRig], options: dict[str, Any]) -> ScenarioResult:
        run = webhook_end_to_end(
            ingestion(),
            options["url"],
            events=options["e2e_events"],
            changes_per_event=options["e2e_changes_per_event"],
            concurrency=options["e2e_concurrency"],
            warmup=E2E_WARMUP_EVENTS,
        )
        return measured_result(
            name="webhook.end_to_end",
            description="ack + worker + Graph stub; latency columns: per change, stored → processed",
            load=run.load,
            targets=NO_TARGET,
            throughput_per_s=run.leads_per_s,
            throughput_unit="leads/s",
            throughput_target=LEADS_PER_S_TARGET,
            extra=run.extra,
        )

    def _selected(
        self, items: list[Named], patterns: list[str], *, also: Sequence[Scenario | Flow]
    ) -> list[Named]:
        """The items matching any glob; a glob that matches nothing among `items` or `also` is an error."""
        if not patterns:
            return items
        chosen = [
            item for item in items if any(fnmatch.fnmatchcase(item.name, pattern) for pattern in patterns)
        ]
        everything = [*items, *also]
        if not any(fnmatch.fnmatchcase(item.name, pattern) for item in everything for pattern in patterns):
            names = ", ".join(item.name for item in everything)
            raise CommandError(f"No scenario matches {patterns}; the scenarios are: {names}.")
        return chosen

    def _liveness_after_reads(
        self, results: list[ScenarioResult], scenarios: Sequence[Scenario], options: dict[str, Any]
    ) -> list[ScenarioResult]:
        """Measure liveness again once the other reads have run, into its row's extra: a drift check
        (the first measurement stays the reference)."""
        if len(scenarios) < 2 or scenarios[0].name != LIVENESS_SCENARIO:
            return results
        again = self._run(scenarios[0], options, label=" (again, after the reads)")
        first = results[0]
        extra = {
            **(first.extra or {}),
            "p50_ms_after_reads": again.p50_ms,
            "requests_after_reads": again.requests,
        }
        # Its failures count like any others (the command fails on them).
        counted = {
            "extra": extra,
            "failed": first.failed + again.failed,
            "first_failure": first.first_failure or again.first_failure,
        }
        return [ScenarioResult(**{**first.as_dict(), **counted}), *results[1:]]

    def _check_server(self, url: str) -> None:
        parts = urlsplit(url)
        try:
            connection = http.client.HTTPConnection(parts.hostname or "", parts.port or 80, timeout=5)
            connection.request("GET", "/api/health/live")
            status = connection.getresponse().status
            connection.close()
        except (OSError, http.client.HTTPException, ValueError) as exc:
            raise CommandError(
                f"No server answers at {url} ({exc}); start one first (docs/performance.md)."
            ) from None
        if status != 200:
            raise CommandError(f"{url}/api/health/live answered {status}, not 200.")

    def _run(self, scenario: Scenario, options: dict[str, Any], *, label: str = "") -> ScenarioResult:
        self.stderr.write(f"  {scenario.name}{label} …", ending="")
        self.stderr.flush()
        started = time.monotonic()
        load = run_closed_loop(
            options["url"],
            scenario.requests,
            total=options["requests"],
            concurrency=options["concurrency"],
            warmup=options["warmup"],
            max_seconds=options["max_seconds"],
        )
        raw_p50 = statements = None
        if scenario.raw_sql_request is not None:
            captured = capture_request_sql(scenario.raw_sql_request.path, scenario.raw_sql_request.headers)
            if captured.status != 200:
                # The in-process replay must answer like the server did, or its SQL is not the same.
                load.statuses[captured.status] += 1
                load.first_failure = load.first_failure or (
                    f"{scenario.raw_sql_request.path}: {captured.status} when replayed in-process"
                )
            elif captured.reads:
                durations = time_statements(
                    captured.reads, repeat=options["raw_repeat"], concurrency=options["concurrency"]
                )
                raw_p50 = median_ms(durations)
                statements = len(captured.reads)
        result = scenario_result(scenario, load, raw_sql_p50_ms=raw_p50, raw_sql_statements=statements)
        self.stderr.write(f" p50 {result.p50_ms:.1f} ms ({time.monotonic() - started:.1f} s)")
        return result
