"""The statements the database spends its time on, from pg_stat_statements.

    manage.py slow_queries                      # top 20 by total time, this database
    manage.py slow_queries --order mean --limit 10 --min-calls 5
    manage.py slow_queries --all-databases --full
    manage.py slow_queries --json               # every field, full query text
    manage.py slow_queries --reset              # zero this database's counters (--all-databases: all)

Columns: calls, total/mean/max/stddev execution time in ms, rows returned, the statement's share of the
total execution time in scope, its shared-buffer hit rate, and the normalised query (constants are $1, $2…).
Exits non-zero with the steps to enable the extension when it is not loaded or not created.
"""

from __future__ import annotations

import json
from typing import Any

from django.core.management.base import CommandError, CommandParser

from converzia.db.stat_statements import (
    ORDER_COLUMNS,
    StatStatementsUnavailable,
    slow_queries,
    stat_statements_reset,
)
from converzia.management.base import ConverziaCommand
from converzia.management.tables import format_table

QUERY_WIDTH = 100


class Command(ConverziaCommand):
    help = __doc__

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--limit", type=int, default=20, help="How many statements (default 20).")
        parser.add_argument(
            "--order",
            choices=sorted(ORDER_COLUMNS),
            default="total",
            help="Sort by total (default), mean or calls.",
        )
        parser.add_argument("--min-calls", type=int, default=1, help="Skip statements called fewer times.")
        scope = parser.add_mutually_exclusive_group()
        scope.add_argument(
            "--database", default="", help="Database name (default: the one we are connected to)."
        )
        scope.add_argument("--all-databases", action="store_true", help="Every database on the server.")
        parser.add_argument(
            "--full", action="store_true", help="Print each query in full, not cut at 100 characters."
        )
        parser.add_argument("--json", action="store_true", help="Machine-readable output (full query text).")
        parser.add_argument(
            "--reset",
            action="store_true",
            help="Zero this database's pg_stat_statements counters (with --all-databases: all of them).",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        if options["limit"] < 1 or options["min_calls"] < 0:
            raise CommandError("--limit must be at least 1 and --min-calls at least 0.")
        try:
            if options["reset"]:
                scope = stat_statements_reset(all_databases=options["all_databases"])
                self.stdout.write(f"pg_stat_statements reset: statement counters of {scope} are zero.")
                return
            report = slow_queries(
                order=options["order"],
                limit=options["limit"],
                min_calls=options["min_calls"],
                database=None if options["all_databases"] else options["database"],
            )
        except StatStatementsUnavailable as exc:
            raise CommandError(str(exc)) from None
        if options["json"]:
            self.stdout.write(json.dumps(report.as_dict(), indent=2, default=str))
            return
        scope = f"database {report.database}" if report.database else "all databases"
        since = f"since {report.stats_reset:%Y-%m-%d %H:%M:%S %Z}" if report.stats_reset else ""
        self.stdout.write(
            f"Top {len(report.statements)} statements by {options['order']} time in {scope} {since}"
            f" (total {report.total_ms:,.0f} ms).".replace("by calls time", "by calls")
        )
        if not report.statements:
            self.stdout.write("No statements recorded yet.")
            return
        rows = []
        for s in report.statements:
            rows.append(
                [
                    f"{s.calls:,}",
                    f"{s.total_ms:,.1f}",
                    f"{s.mean_ms:,.2f}",
                    f"{s.max_ms:,.2f}",
                    f"{s.stddev_ms:,.2f}",
                    f"{s.rows:,}",
                    f"{s.share_pct:.1f}",
                    "-" if s.cache_hit_pct is None else f"{s.cache_hit_pct:.1f}",
                    " ".join(s.query.split()) if options["full"] else s.short_query(QUERY_WIDTH),
                ]
            )
        headers = ["calls", "total ms", "mean ms", "max ms", "stddev ms", "rows", "share %", "hit %", "query"]
        self.stdout.write(format_table(headers, rows, right=range(8)))
        if report.deallocated:
            self.stdout.write(
                f"Note: {report.deallocated:,} statements were evicted since the reset "
                "(pg_stat_statements.max is too small for this workload)."
            )
