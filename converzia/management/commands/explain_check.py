"""EXPLAIN ANALYZE the app's named query patterns and check each plan uses its index.

    manage.py explain_check                          # every pattern, as a table
    manage.py explain_check --pattern 'portal.leads.*' --pattern deliveries.claim
    manage.py explain_check --json > plans.json      # results with SQL, params and full plans
    manage.py explain_check --list                   # the patterns and their expected indexes

Read-only: every statement runs inside a transaction that is rolled back. Exits 1 when any pattern
FAILs (or errors); WARN and SKIP do not fail. See docs/database.md "Checking query plans".
"""

from __future__ import annotations

import json
import logging
from typing import Any

from django.core.management.base import CommandError, CommandParser

from converzia.db.explain import (
    FAILING,
    STATUSES,
    PatternResult,
    QueryPattern,
    Thresholds,
    patterns,
    patterns_check,
    patterns_select,
    plan_lines,
)
from converzia.management.base import ConverziaCommand


class Command(ConverziaCommand):
    help = (
        "EXPLAIN (ANALYZE, BUFFERS) the app's query patterns and check their plans use the expected indexes."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        defaults = Thresholds()
        parser.add_argument(
            "--pattern",
            action="append",
            default=[],
            metavar="NAME",
            help="Only patterns matching NAME (exact or glob, e.g. 'portal.leads.*'); repeatable.",
        )
        parser.add_argument("--json", action="store_true", help="Print the results (with plans) as JSON.")
        parser.add_argument("--list", action="store_true", help="List the patterns and exit.")
        parser.add_argument(
            "--show-plans", action="store_true", help="Print the plan tree of each pattern that is not OK."
        )
        parser.add_argument(
            "--timeout-ms",
            type=int,
            default=defaults.timeout_ms,
            help=f"statement_timeout per statement (default {defaults.timeout_ms}).",
        )
        parser.add_argument(
            "--large-rows",
            type=int,
            default=defaults.large_rows,
            help="A Seq Scan on a table the pattern expects an index on fails above this many rows; "
            "below it a missed index is SKIP "
            f"(default {defaults.large_rows:,}).",
        )
        parser.add_argument(
            "--seq-scan-fail-rows",
            type=int,
            default=defaults.seq_scan_fail_rows,
            help="A Seq Scan on any other table (a join partner) fails above this many rows and warns "
            f"between --large-rows and it (default {defaults.seq_scan_fail_rows:,}).",
        )
        parser.add_argument(
            "--estimate-factor",
            type=float,
            default=defaults.estimate_factor,
            help="Warn when estimated and actual rows differ by more than this factor "
            f"(default {defaults.estimate_factor:g}).",
        )
        parser.add_argument(
            "--estimate-min-rows",
            type=int,
            default=defaults.estimate_min_rows,
            help=f"...only on nodes with at least this many rows (default {defaults.estimate_min_rows}).",
        )
        parser.add_argument(
            "--nested-loop-rows",
            type=int,
            default=defaults.nested_loop_rows,
            help="Warn on a Nested Loop with more outer rows than this "
            f"(default {defaults.nested_loop_rows:,}).",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            selected = patterns_select(options["pattern"])
        except LookupError as exc:
            names = "\n  ".join(patterns())
            raise CommandError(
                f"No query pattern matches {', '.join(map(repr, exc.args[0]))}. Known patterns:\n  {names}"
            ) from None
        if options["list"]:
            for pattern in selected:
                wanted = "; ".join(
                    f"{e.table}: {' or '.join(e.indexes)}{' (index-only)' if e.index_only else ''}"
                    for e in pattern.expect
                )
                self.stdout.write(f"{pattern.name:<36} {wanted}\n{'':<36} {pattern.description}")
            return
        if options["timeout_ms"] < 1:
            raise CommandError("--timeout-ms must be at least 1.")
        thresholds = Thresholds(
            large_rows=options["large_rows"],
            seq_scan_fail_rows=options["seq_scan_fail_rows"],
            estimate_factor=options["estimate_factor"],
            estimate_min_rows=options["estimate_min_rows"],
            nested_loop_rows=options["nested_loop_rows"],
            timeout_ms=options["timeout_ms"],
        )
        # `guarded` logs a line per attempt; below -v 2 that is noise next to the table.
        db_logger = logging.getLogger("converzia.db")
        previous_level = db_logger.level
        if options["verbosity"] < 2:
            db_logger.setLevel(logging.WARNING)
        try:
            results = patterns_check(selected, thresholds=thresholds)
        finally:
            db_logger.setLevel(previous_level)
        counts = {status: sum(1 for r in results if r.status == status) for status in STATUSES}
        if options["json"]:
            self.stdout.write(
                json.dumps(
                    {
                        "summary": counts,
                        "thresholds": vars(thresholds),
                        "results": [r.as_dict() for r in results],
                    },
                    indent=2,
                    default=str,
                )
            )
        else:
            self._table(results, {p.name: p for p in selected})
            if options["show_plans"]:
                for result in results:
                    if result.status != "OK" and result.plan:
                        self.stdout.write(f"\n{result.name} ({result.status}):")
                        self.stdout.write("\n".join(plan_lines(result.plan["Plan"])))
            self.stdout.write("\n" + ", ".join(f"{n} {s}" for s, n in counts.items()))
        failing = [r.name for r in results if r.status in FAILING]
        if failing:
            raise CommandError(f"{len(failing)} pattern(s) failed: {', '.join(failing)}", returncode=1)

    def _table(self, results: list[PatternResult], known: dict[str, QueryPattern]) -> None:
        header = ("pattern", "status", "time ms", "index used", "rows", "notes")
        rows = []
        for r in results:
            notes = [f.message for f in r.findings if f.level != "OK"]
            rows.append(
                (
                    r.name,
                    r.status,
                    "-" if r.time_ms is None else f"{r.time_ms:.2f}",
                    _access_paths(r, known[r.name]),
                    "-" if r.rows is None else str(r.rows),
                    notes[0] if notes else "",
                )
            )
            rows.extend(("", "", "", "", "", note) for note in notes[1:])
        widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(5)]
        for row in [header, *rows]:
            cells = [
                str(row[i]).rjust(widths[i]) if i in (2, 4) else str(row[i]).ljust(widths[i])
                for i in range(5)
            ]
            self.stdout.write("  ".join([*cells, row[5]]).rstrip())


def _access_paths(result: PatternResult, pattern: QueryPattern) -> str:
    """How the plan reads the pattern's expected tables (index, or Seq Scan); the rest as "+N"."""
    tables = list(dict.fromkeys(expect.table for expect in pattern.expect))
    paths = [
        *(index for index, table in sorted(result.index_tables.items()) if table in tables),
        *(f"Seq Scan {table}" for table in dict.fromkeys(result.seq_scans) if table in tables),
    ]
    others = len({i for i, t in result.index_tables.items() if t not in tables}) + len(
        {t for t in result.seq_scans if t not in tables}
    )
    if others:
        paths.append(f"+{others} more")
    return ", ".join(paths) or "-"
