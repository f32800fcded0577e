"""Database health: index problems, bloat, cache hit rates, locks, connections, limits, maintenance.

    manage.py dbhealth                          # every check, as a table
    manage.py dbhealth --check blocked_queries --check connections
    manage.py dbhealth --json                   # every check with its detail rows
    manage.py dbhealth --fail-on warn           # for CI: exit 1 when any check is warn or fail

Each check reports ok / warn / fail, a value and a short message (`-v 2` adds the detail rows). The
checks and their thresholds are described in docs/database.md ("Database health"); the logic lives in
`converzia.db.health`.
"""

from __future__ import annotations

import json
from typing import Any

from django.core.management.base import CommandError, CommandParser

from converzia.db.health import DEFAULT_LONG_SECONDS, Status, available_checks, run_checks, worst_status
from converzia.management.base import ConverziaCommand
from converzia.management.tables import format_table


class Command(ConverziaCommand):
    help = __doc__

    def add_arguments(self, parser: CommandParser) -> None:
        names = [check.name for check in available_checks()]
        parser.add_argument(
            "--check",
            action="append",
            default=[],
            metavar="NAME",
            help=f"Run only this check (repeatable, or comma-separated): {', '.join(names)}.",
        )
        parser.add_argument("--json", action="store_true", help="Machine-readable output with details.")
        parser.add_argument(
            "--fail-on",
            choices=["warn", "fail", "never"],
            default="never",
            help="Exit with status 1 when any check reaches this level (default: never).",
        )
        parser.add_argument(
            "--long-seconds",
            type=float,
            default=DEFAULT_LONG_SECONDS,
            help=f"A query running longer than this is long-running (default {DEFAULT_LONG_SECONDS:g}).",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        names = [name.strip() for value in options["check"] for name in value.split(",") if name.strip()]
        try:
            results = run_checks(names, long_seconds=options["long_seconds"])
        except KeyError as exc:
            known = ", ".join(check.name for check in available_checks())
            raise CommandError(f"Unknown check {exc.args[0]!r}. Known checks: {known}.") from None
        worst = worst_status(results)
        if options["json"]:
            payload = {"status": worst.value, "checks": [r.as_dict() for r in results]}
            self.stdout.write(json.dumps(payload, indent=2, default=str))
        else:
            rows = [[r.name, r.status.value.upper(), r.value, r.message] for r in results]
            self.stdout.write(format_table(["check", "status", "value", "message"], rows))
            if options["verbosity"] >= 2:
                for r in results:
                    for detail in r.details:
                        self.stdout.write(f"  {r.name}: {json.dumps(detail, default=str)}")
            counts = {s: sum(1 for r in results if r.status is s) for s in Status}
            self.stdout.write(
                f"\n{counts[Status.OK]} ok, {counts[Status.WARN]} warn, {counts[Status.FAIL]} fail."
            )
        fail_on = options["fail_on"]
        if fail_on != "never" and worst.rank >= Status(fail_on).rank:
            failing = [r.name for r in results if r.status.rank >= Status(fail_on).rank]
            raise CommandError(f"dbhealth: {', '.join(failing)} at {fail_on} or worse.", returncode=1)
