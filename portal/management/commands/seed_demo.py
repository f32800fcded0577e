"""Fill an empty database with realistic demo data of any size (see docs/seed_demo.md).

Tenants with offers, ad mappings, members and API tokens; leads and lead_offers in realistic status
proportions over the last --months months, with their sources, events, deliveries and a consistent
credit ledger. Loads with binary COPY in one transaction, then runs ANALYZE and refreshes the stats
view. Reproducible: the same --seed gives the same ids, people and phones.

`--json` prints the logins it created on stdout. With `--if-empty` on a database that already has
data nothing is seeded; with `--json` too, fresh passwords and API tokens are issued for the demo
staff user and the first demo tenants' owners, so the printed logins always work.
"""

from __future__ import annotations

import io
import json
import sys
import time
from collections.abc import Callable
from typing import Any

from django.core.management import call_command, get_commands
from django.core.management.base import CommandError, CommandParser
from tqdm import tqdm

from converzia.management.base import ConverziaCommand
from portal.seeding import (
    SeedError,
    analyze,
    database_is_empty,
    demo_credentials_reissue,
    seed_config,
    seed_demo,
)


class Command(ConverziaCommand):
    help = __doc__

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--tenants", type=int, default=20, help="Number of tenants (default 20).")
        parser.add_argument(
            "--leads",
            type=int,
            default=20_000,
            help="Number of lead_offers, all tenants together (default 20000).",
        )
        parser.add_argument(
            "--whale",
            type=int,
            default=0,
            help="Lead_offers of the first tenant, out of --leads; the rest is spread over the others.",
        )
        parser.add_argument("--seed", type=int, default=42, help="Random seed (default 42).")
        parser.add_argument("--months", type=int, default=18, help="History length in months (default 18).")
        parser.add_argument(
            "--if-empty", action="store_true", help="Do nothing when the database already has data."
        )
        parser.add_argument("--json", action="store_true", help="Print the created logins as JSON on stdout.")
        parser.add_argument("--no-progress", action="store_true", help="No progress bar.")

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            config = seed_config(
                tenants=options["tenants"],
                leads=options["leads"],
                whale=options["whale"],
                seed=options["seed"],
                months=options["months"],
            )
        except SeedError as exc:
            raise CommandError(str(exc)) from None
        as_json = options["json"]
        # Human-readable lines never go to stdout when stdout carries the JSON.
        say = self.stderr.write if as_json else self.stdout.write
        quiet = options["verbosity"] == 0

        if options["if_empty"] and not database_is_empty():
            if not quiet:
                say("seed_demo: the database already has data; nothing seeded.")
            if as_json:
                credentials = demo_credentials_reissue()
                if credentials is None:
                    self.stderr.write("seed_demo: no demo staff user found, so no logins to print.")
                    return
                if not quiet:
                    self.stderr.write("seed_demo: issued fresh passwords and API tokens for the demo logins.")
                self.stdout.write(json.dumps(credentials, indent=2))
            return

        show_bar = not (options["no_progress"] or as_json or quiet) and sys.stderr.isatty()
        bar = tqdm(
            total=config.leads, unit=" lead_offers", unit_scale=True, file=sys.stderr, disable=not show_bar
        )
        try:
            report = seed_demo(
                config,
                progress=bar.update,
                log=self._log_writer(quiet=quiet, bar_shown=show_bar),
            )
        except SeedError as exc:
            raise CommandError(str(exc)) from None
        finally:
            bar.close()

        analyze_s = analyze()
        refresh_s = None
        if "refresh_stats" in get_commands():
            started = time.monotonic()
            call_command("refresh_stats", stdout=io.StringIO())
            refresh_s = time.monotonic() - started

        if not quiet:
            lead_offers = report.rows.get("lead_offers", 0)
            seconds = report.seconds_total
            say(
                f"seed_demo: {config.tenants} tenants, {lead_offers:,} lead_offers, "
                f"{report.total_rows:,} rows "
                f"in {seconds:.1f} s ({lead_offers / seconds:,.0f} lead_offers/s, "
                f"{report.total_rows / seconds:,.0f} rows/s); "
                + ", ".join(f"{name} {value:.1f} s" for name, value in report.timings.items())
                + f"; ANALYZE {analyze_s:.1f} s"
                + ("" if refresh_s is None else f"; stats refresh {refresh_s:.1f} s")
                + ("" if report.fk_checks_skipped else "; foreign keys checked row by row (not superuser)")
            )
            if options["verbosity"] > 1:
                say(
                    "rows: " + ", ".join(f"{table} {count:,}" for table, count in sorted(report.rows.items()))
                )
                say("statuses: " + ", ".join(f"{s} {n:,}" for s, n in report.status_counts.items()))
        if as_json:
            self.stdout.write(json.dumps(report.credentials, indent=2))

    def _log_writer(self, *, quiet: bool, bar_shown: bool) -> Callable[[str], None]:
        """Progress lines go to stderr (stdout may carry the JSON); above a live bar, through tqdm so
        the bar is redrawn below them."""
        if quiet:
            return lambda message: None
        if bar_shown:
            return lambda message: tqdm.write(message, file=sys.stderr)
        return self.stderr.write
