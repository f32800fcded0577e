"""Measure the read API against a running server (TARGETS.md "Latency").

    manage.py bench --url http://127.0.0.1:8000              # every scenario, 300 requests each
    manage.py bench --scenario 'stats.*' --requests 1000     # some scenarios, more samples
    manage.py bench --json > bench.json

The server must use the same database as this command: the command picks the tenants to measure
(the whale and a ~10k-lead tenant), issues throw-away API tokens (revoked at the end), and times the
SQL of each request on its own for the API / raw SQL ratio. See docs/performance.md.
"""

from __future__ import annotations

import fnmatch
import http.client
import json
import logging
from typing import Any
from urllib.parse import urlsplit

from django.core.management.base import CommandError, CommandParser

from converzia.bench.fixture import BenchDataError, bench_fixture
from converzia.bench.http import run_closed_loop
from converzia.bench.report import ScenarioResult, scenario_result, table
from converzia.bench.scenarios import Scenario, read_scenarios
from converzia.bench.sql import capture_request_sql, median_ms, time_statements
from converzia.management.base import ConverziaCommand

# --quick: every scenario runs, each briefly (CI smoke on a small dataset, well under a minute).
QUICK = {"requests": 20, "warmup": 2, "raw_repeat": 2, "max_seconds": 3.0}


def _positive(value: str) -> int:
    number = int(value)
    if number < 1:
        raise ValueError(value)
    return number


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

    def handle(self, *args: Any, **options: Any) -> None:
        if options["quick"]:
            options |= QUICK
        self._check_server(options["url"])
        # The requests replayed in-process to capture their SQL log like any request; their lines
        # would drown the report.
        logging.disable(logging.INFO)
        try:
            self._bench(options)
        finally:
            logging.disable(logging.NOTSET)

    def _bench(self, options: dict[str, Any]) -> None:
        try:
            with bench_fixture() as fixture:
                scenarios, skipped = read_scenarios(fixture)
                scenarios = self._selected(scenarios, options["scenario"])
                if options["list"]:
                    for scenario in scenarios:
                        self.stdout.write(f"{scenario.name:28} {scenario.description}")
                    return
                self.stderr.write(
                    f"whale: {fixture.whale.tenant.slug} ({fixture.whale.lead_offers:,} lead_offers); "
                    f"small: {fixture.small.tenant.slug} ({fixture.small.lead_offers:,}); "
                    f"{len(scenarios)} scenarios × {options['requests']} requests at concurrency "
                    f"{options['concurrency']}"
                    + (f"; no route for {', '.join(sorted(set(skipped)))}" if skipped else "")
                )
                results = [self._run(scenario, options) for scenario in scenarios]
        except BenchDataError as exc:
            raise CommandError(str(exc)) from None

        if options["json"]:
            self.stdout.write(json.dumps([result.as_dict() for result in results], indent=2))
        else:
            self.stdout.write(table(results))
            self.stdout.write(
                "pass/FAIL compare timings with the targets; the command itself fails only when a request"
                " fails." + (" A --quick run's timings are indicative only." if options["quick"] else "")
            )
        failed = [result for result in results if result.failed]
        if failed:
            details = "; ".join(
                f"{result.name}: {result.failed} failed ({result.first_failure})" for result in failed
            )
            raise CommandError(f"Requests failed: {details}")

    def _selected(self, scenarios: list[Scenario], patterns: list[str]) -> list[Scenario]:
        if not patterns:
            return scenarios
        chosen = [s for s in scenarios if any(fnmatch.fnmatchcase(s.name, pattern) for pattern in patterns)]
        if not chosen:
            names = ", ".join(s.name for s in scenarios)
            raise CommandError(f"No scenario matches {patterns}; the scenarios are: {names}.")
        return chosen

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

    def _run(self, scenario: Scenario, options: dict[str, Any]) -> ScenarioResult:
        self.stderr.write(f"  {scenario.name} …", ending="")
        self.stderr.flush()
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
        self.stderr.write(f" p50 {result.p50_ms:.1f} ms")
        return result
