"""Hold slow clients open against a server on this machine and time health and the webhook ack
(TARGETS.md "Reliability and security" 12). Prints one line per figure with PASS/FAIL against the
threshold; exits non-zero when any fails.

    manage.py slow_clients --url http://127.0.0.1:8080 --slow 50 --seconds 20 --secret "$META_APP_SECRET"
    manage.py slow_clients --url http://127.0.0.1:8000 --kind headers --seconds 10   # one kind only

Three phases of `--seconds` each: no slow clients (the baseline), `--slow` connections sending a
webhook body one byte a second, `--slow` connections sending their headers one byte a second. The
webhook probe needs the server's META_APP_SECRET (`--secret`, default: this process's setting); it
stores one inbox event per POST, for an ad mapped to no tenant. Loopback URLs only. See
docs/performance.md "Slow clients" (and python -m converzia.bench.nginx for nginx in front).
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.management.base import CommandError, CommandParser

from converzia.bench.slow_clients import (
    DEFAULT_PROBE_TIMEOUT_S,
    DEFAULT_THRESHOLD_MS,
    DEFAULT_TOLERANCE_MS,
    KINDS,
    SlowClientsError,
    slow_clients_measure,
)
from converzia.management.base import ConverziaCommand


class Command(ConverziaCommand):
    help = __doc__

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--url", required=True, help="The server, e.g. http://127.0.0.1:8080.")
        parser.add_argument("--slow", type=int, default=50, help="Slow connections per phase (50).")
        parser.add_argument("--seconds", type=float, default=20.0, help="Length of each phase (20).")
        parser.add_argument(
            "--kind",
            action="append",
            choices=KINDS,
            help="Slow-client kind to run (repeatable; default: body and headers).",
        )
        parser.add_argument(
            "--secret", help="The server's META_APP_SECRET for signed webhook POSTs (default: the setting)."
        )
        parser.add_argument("--no-webhook", action="store_true", help="Probe health only.")
        parser.add_argument("--threshold-ms", type=float, default=DEFAULT_THRESHOLD_MS)
        parser.add_argument(
            "--tolerance-ms",
            type=float,
            default=DEFAULT_TOLERANCE_MS,
            help="How far the loaded webhook p99 may rise over the baseline's and count as unchanged.",
        )
        parser.add_argument("--probe-timeout", type=float, default=DEFAULT_PROBE_TIMEOUT_S)

    def handle(self, *args: Any, **options: Any) -> None:
        secret = None if options["no_webhook"] else (options["secret"] or settings.META_APP_SECRET)
        if not options["no_webhook"] and not secret:
            raise CommandError("No --secret and META_APP_SECRET is unset: pass one, or --no-webhook.")
        try:
            result = slow_clients_measure(
                url=options["url"],
                slow=options["slow"],
                seconds=options["seconds"],
                secret=secret,
                kinds=options["kind"] or KINDS,
                threshold_ms=options["threshold_ms"],
                tolerance_ms=options["tolerance_ms"],
                probe_timeout_s=options["probe_timeout"],
                progress=lambda message: self.stderr.write(message),
            )
        except SlowClientsError as exc:
            raise CommandError(str(exc)) from None
        for figure in result.figures():
            self.stdout.write(figure.line())
        if not result.ok:
            raise CommandError("Slow clients: some figures missed their limit (FAIL above).")
        self.stdout.write(f"Slow clients: every figure within its limit ({result.url}).")
