"""Measure deliveries against RUNNING workers and a local receiver that answers in `--delay-ms`
(TARGETS.md: ≥ 300 deliveries/s against a loopback receiver answering in 50 ms, each charged once).

The command starts the receiver (`deliveries.measure.receiver`, a gevent process on `--port`), makes
sure `--tenants` measurement tenants exist with a destination pointing at it and enough credits, then:

1. throughput: creates `--deliveries` ready leads with their deliveries parked, makes them all due at
   once, wakes a dispatcher and waits until every one is DELIVERED. Reports deliveries/s (due → last
   delivered), and checks each was charged exactly once and the receiver saw each webhook-id once.
2. latency (`--rate R --seconds S`): qualifies leads to LEAD_READY at R per second through the
   qualification service (as the ops API does) and reports the time from each lead's LEAD_READY
   commit to its first arrival at the receiver, p50/p95/p99.

Reproduce (two shells, same DATABASE_URL):

    export DATABASE_URL=postgres://postgres@127.0.0.1:5432/cvz_measure
    .venv/bin/python manage.py migrate
    # 1. two workers (one per core), deliveries and maintenance queues
    for i in 1 2; do DJANGO_SETTINGS_MODULE=converzia.settings.local DEBUG=false \\
        .venv/bin/python manage.py run_worker --queues deliveries,maintenance --concurrency 4 & done
    # 2. the measurement
    DJANGO_SETTINGS_MODULE=converzia.settings.local .venv/bin/python manage.py measure_deliveries \\
        --deliveries 6000 --rate 50 --seconds 20
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
import urllib.request
from typing import Any

from django.core.management.base import CommandError, CommandParser, DjangoHelpFormatter
from django.db import transaction

from converzia.management.base import ConverziaCommand
from deliveries.measure.load import (
    deliveries_create,
    lead_offers_create,
    measure_tenants_ensure,
    wait_delivered,
)
from deliveries.models import Delivery
from deliveries.services import dispatcher_wake, lead_offer_qualify
from leads.measure.load import percentile
from leads.models import LeadOfferStatus

TARGET_DELIVERIES_PER_S = 300.0


class _HelpFormatter(DjangoHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Keep the docstring's layout: its commands must stay copy-pasteable."""


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 1)


class Command(ConverziaCommand):
    help = __doc__

    def create_parser(self, prog_name: str, subcommand: str, **kwargs: Any) -> CommandParser:
        return super().create_parser(prog_name, subcommand, formatter_class=_HelpFormatter, **kwargs)

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--deliveries", type=int, default=6000, help="Backlog size for throughput (0: skip)."
        )
        parser.add_argument("--tenants", type=int, default=20)
        parser.add_argument("--rate", type=float, default=50.0, help="LEAD_READY per second for latency.")
        parser.add_argument("--seconds", type=float, default=0.0, help="Latency run length (0: skip).")
        parser.add_argument("--port", type=int, default=8766, help="Receiver port.")
        parser.add_argument("--delay-ms", type=float, default=50.0, help="Receiver answer delay.")
        parser.add_argument("--timeout", type=float, default=300.0)
        parser.add_argument("--json", action="store_true")

    def handle(self, *args: Any, **options: Any) -> None:
        if options["deliveries"] < 0 or options["tenants"] < 1 or options["rate"] <= 0:
            raise CommandError("--deliveries ≥ 0, --tenants ≥ 1 and --rate > 0, please.")
        receiver = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "deliveries.measure.receiver",
                "--port",
                str(options["port"]),
                "--delay-ms",
                str(options["delay_ms"]),
            ]
        )
        base = f"http://127.0.0.1:{options['port']}"
        try:
            self._wait_receiver(base)
            tenants = measure_tenants_ensure(
                count=options["tenants"],
                receiver_url=f"{base}/hook",
                credits=options["deliveries"] + int(options["rate"] * options["seconds"]) + 100,
            )
            report: dict[str, Any] = {
                "config": {k: options[k] for k in ("deliveries", "tenants", "rate", "seconds", "delay_ms")}
            }
            if options["deliveries"]:
                report["throughput"] = self._throughput(options, tenants, base)
            if options["seconds"]:
                report["latency"] = self._latency(options, tenants, base)
        finally:
            receiver.terminate()
            receiver.wait(10)
        if options["json"]:
            self.stdout.write(json.dumps(report, indent=2))
        else:
            for section in ("throughput", "latency"):
                if section in report:
                    self.stdout.write(f"{section}: " + json.dumps(report[section]))
        failed = report.get("throughput", {}).get("passed") is False
        if failed:
            raise SystemExit(1)

    def _wait_receiver(self, base: str) -> None:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                urllib.request.urlopen(f"{base}/stats", timeout=1).read()
                return
            except OSError:
                time.sleep(0.1)
        raise CommandError(f"The receiver did not start at {base}.")

    def _stats(self, base: str, *, reset: bool = False) -> dict[str, Any]:
        if reset:
            urllib.request.urlopen(urllib.request.Request(f"{base}/reset", method="POST"), timeout=5).read()
            return {}
        return json.loads(urllib.request.urlopen(f"{base}/stats", timeout=30).read())

    def _throughput(self, options: dict[str, Any], tenants: list, base: str) -> dict[str, Any]:
        count = options["deliveries"]
        lead_offers = lead_offers_create(tenants=tenants, count=count, status=LeadOfferStatus.LEAD_READY)
        ids = deliveries_create(lead_offers=lead_offers, due=False)
        self._stats(base, reset=True)
        started = time.time()
        with transaction.atomic():
            Delivery.objects.filter(pk__in=ids).update(
                next_attempt_at=Delivery._meta.get_field("created_at").default()
            )
            dispatcher_wake()
        result = wait_delivered(delivery_ids=ids, timeout_s=options["timeout"])
        stats = self._stats(base)
        elapsed = (result.last_delivered_at or time.time()) - started
        rate = round(result.delivered / elapsed, 1) if elapsed > 0 else 0.0
        passed = (
            rate >= TARGET_DELIVERIES_PER_S
            and result.delivered == count
            and result.consumptions == count
            and result.double_charges == 0
        )
        return {
            "deliveries": count,
            "delivered": result.delivered,
            "statuses": result.statuses,
            "seconds": round(elapsed, 2),
            "deliveries_per_s": rate,
            "consumptions": result.consumptions,
            "double_charges": result.double_charges,
            "receiver_requests": stats["requests"],
            "receiver_repeats": stats["repeats"],
            "target_per_s": TARGET_DELIVERIES_PER_S,
            "passed": passed,
        }

    def _latency(self, options: dict[str, Any], tenants: list, base: str) -> dict[str, Any]:
        total = int(options["rate"] * options["seconds"])
        lead_offers = lead_offers_create(tenants=tenants, count=total, status=LeadOfferStatus.QUALIFYING)
        self._stats(base, reset=True)
        ready_at: dict[str, float] = {}
        interval = 1 / options["rate"]
        started = time.monotonic()
        for n, lead_offer in enumerate(lead_offers):
            pause = started + n * interval - time.monotonic()
            if pause > 0:
                time.sleep(pause)
            lead_offer_qualify(lead_offer=lead_offer, score_total=95)
            ready_at[str(lead_offer.pk)] = time.time()
        delivery_ids = list(
            Delivery.objects.filter(lead_offer__in=lead_offers).values_list("pk", "lead_offer_id")
        )
        result = wait_delivered(delivery_ids=[pk for pk, _ in delivery_ids], timeout_s=options["timeout"])
        arrivals = self._stats(base)["arrivals"]
        latencies = [
            arrivals[f"msg_{pk.hex}"] - ready_at[str(lead_offer_id)]
            for pk, lead_offer_id in delivery_ids
            if f"msg_{pk.hex}" in arrivals
        ]
        return {
            "leads": total,
            "delivered": result.delivered,
            "rate_per_s": options["rate"],
            "ready_to_receipt_ms": {
                "p50": _ms(percentile(latencies, 0.50)),
                "p95": _ms(percentile(latencies, 0.95)),
                "p99": _ms(percentile(latencies, 0.99)),
                "max": _ms(max(latencies, default=0.0)),
            },
        }
