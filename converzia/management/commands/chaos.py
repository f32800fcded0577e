"""`manage.py chaos`: the chaos suite's faults against the private servers `make chaos` started.

Run it through `make chaos` (`python -m converzia.chaos`): on its own it refuses, since it stops and
starts the PostgreSQL and Valkey it runs against. Prints one line per TARGETS.md figure; exit status 1
when any misses its target.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from django.core.management import call_command
from django.core.management.base import CommandError, CommandParser

from converzia.chaos.scenarios import FULL, SCENARIOS, SHORT, Figure
from converzia.chaos.stack import ChaosSetupError, ChaosStack
from converzia.management.base import ConverziaCommand

DATA_DIR_VARIABLE = "CONVERZIA_CHAOS_DATA_DIR"


class Command(ConverziaCommand):
    help = __doc__.split("\n\n")[0]

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--short", action="store_true", help="The same faults, smaller (CI: minutes).")
        parser.add_argument(
            "--only", nargs="+", choices=sorted(SCENARIOS), help="Run these scenarios only (default: all)."
        )

    def handle(self, *args: Any, **options: Any) -> None:
        data = os.environ.get(DATA_DIR_VARIABLE)
        if not data:
            raise CommandError("manage.py chaos runs only under `make chaos` (python -m converzia.chaos).")
        try:
            stack = ChaosStack.adopt(Path(data))
        except ChaosSetupError as exc:
            raise CommandError(str(exc)) from None
        sizes = SHORT if options["short"] else FULL
        names = options["only"] or list(SCENARIOS)
        self.stdout.write(f"chaos: {'short' if options['short'] else 'full'} run of {', '.join(names)}")
        call_command("migrate", verbosity=0)
        figures: list[Figure] = []
        started = time.monotonic()
        try:
            stack.start()
            front = f"nginx at {stack.web_url} in front of " if stack.nginx else "no nginx: "
            self.stdout.write(
                f"chaos: {front}gunicorn at {stack.app_url}, 2 workers, Graph stand-in at {stack.graph.url}"
            )
            for name in names:
                scenario_started = time.monotonic()
                try:
                    produced = SCENARIOS[name](stack, sizes)
                except ChaosSetupError as exc:
                    produced = [Figure("-", name, f"could not run: {exc}", "runs", False)]
                for figure in produced:
                    self.stdout.write(figure.line())
                self.stdout.write(f"chaos: {name} took {time.monotonic() - scenario_started:.0f} s")
                figures += produced
        finally:
            stack.stop()
        failed = [figure for figure in figures if not figure.ok]
        self.stdout.write(
            f"chaos: {len(figures) - len(failed)} of {len(figures)} figures within target "
            f"in {time.monotonic() - started:.0f} s"
        )
        if failed:
            for process in stack.workers + ([stack.web] if stack.web else []):
                self.stdout.write(f"--- {process.name} (last lines) ---\n{process.log_tail(1500)}")
            raise CommandError(f"{len(failed)} figure(s) missed their target.")
