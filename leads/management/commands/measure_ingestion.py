"""Measure Meta ingestion end to end against a RUNNING web server and worker (TARGETS.md: webhook ack
p99 ≤ 20 ms, ≥ 500 leads/s).

The command starts a local Graph API stub (a thread in this process, on `--graph-port`), makes sure
the `measure-ingestion` tenant, offer and ad mapping exist, POSTs `--events` signed Meta events of
`--changes-per-event` leadgen changes each over real HTTP with `--concurrency` client threads,
measuring each POST's ack, then waits until the running worker has processed every change. Every
leadgen id is new (a new person), so each change creates a lead, a lead_source and a lead_offer.

It reports ack p50/p95/p99/max, POSTs/s, end-to-end leads/s (first POST sent → last change
processed), the per-change ingest latency (stored → processed) and failures, and checks the targets.
TARGETS.md judges latency at concurrency 2 and throughput at the concurrency that maximizes it, so run
it both ways. Exit status 1 when a target is missed or anything failed.

Reproduce (three shells, same DATABASE_URL; the worker must use the stub's port):

    export DATABASE_URL=postgres://postgres@127.0.0.1:5432/cvz_measure
    .venv/bin/python manage.py migrate
    # 1. web: 2 gunicorn workers (add `--threads 4` for gthread workers)
    DJANGO_SETTINGS_MODULE=converzia.settings.local DEBUG=false META_APP_SECRET=measure-secret \\
        .venv/bin/gunicorn converzia.wsgi -w 2 -b 127.0.0.1:8000 --access-logfile /dev/null
    # 2. worker, pointed at the stub the command will start on port 8765
    DJANGO_SETTINGS_MODULE=converzia.settings.local DEBUG=false META_GRAPH_URL=http://127.0.0.1:8765 \\
        META_PAGE_ACCESS_TOKEN=measure-token .venv/bin/python manage.py run_worker --concurrency 8
    # 3. the load
    DJANGO_SETTINGS_MODULE=converzia.settings.local META_APP_SECRET=measure-secret \\
        .venv/bin/python manage.py measure_ingestion --events 2000 --concurrency 8 --graph-port 8765
    … --events 200 --changes-per-event 10 …      # batched events
    … --events 1000 --concurrency 2 …            # the ack latency target (one request per core)
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

from django.conf import settings
from django.core.management.base import CommandError, CommandParser, DjangoHelpFormatter

from converzia.management.base import ConverziaCommand
from leads.measure.graph_stub import GraphStub
from leads.measure.load import (
    MeasureRoute,
    measure_route_ensure,
    next_leadgen_number,
    percentile,
    post_all,
    signed_posts,
    wait_processed,
)
from leads.models import InboxChangeStatus

TARGET_ACK_P99_MS = 20.0
TARGET_LEADS_PER_S = 500.0
DEFAULT_GRAPH_PORT = 8765


def _positive_int(value: str) -> int:
    number = int(value)
    if number < 1:
        raise ValueError(value)
    return number


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 2)


class _HelpFormatter(DjangoHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Keep the docstring's layout: its commands must stay copy-pasteable."""


class Command(ConverziaCommand):
    help = __doc__

    def create_parser(self, prog_name: str, subcommand: str, **kwargs: Any) -> CommandParser:
        return super().create_parser(prog_name, subcommand, formatter_class=_HelpFormatter, **kwargs)

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--url", default="http://127.0.0.1:8000", help="The running web server.")
        parser.add_argument("--events", type=_positive_int, default=2000, help="Signed POSTs to send.")
        parser.add_argument(
            "--changes-per-event", type=_positive_int, default=1, help="Leadgen changes per POST."
        )
        parser.add_argument(
            "--concurrency", type=_positive_int, default=8, help="Client threads POSTing at once."
        )
        parser.add_argument(
            "--graph-port",
            type=int,
            default=DEFAULT_GRAPH_PORT,
            help="Graph stub port; start the worker with META_GRAPH_URL=http://127.0.0.1:PORT (0: any).",
        )
        parser.add_argument(
            "--graph-delay-ms", type=float, default=0.0, help="Latency the Graph stub adds to each answer."
        )
        parser.add_argument(
            "--secret", default=None, help="Meta app secret to sign with (default: META_APP_SECRET)."
        )
        parser.add_argument(
            "--warmup",
            type=int,
            default=20,
            help="Untimed events sent (and processed) first, to warm both sides.",
        )
        parser.add_argument(
            "--timeout",
            type=float,
            default=300.0,
            help="Seconds to wait for the worker to process everything.",
        )
        parser.add_argument("--json", action="store_true", help="Print the report as JSON.")

    def handle(self, *args: Any, **options: Any) -> None:
        secret = options["secret"] or settings.META_APP_SECRET
        if not secret:
            raise CommandError("No app secret: set META_APP_SECRET (the server's) or pass --secret.")
        try:
            route = measure_route_ensure()
        except ValueError as exc:
            raise CommandError(str(exc)) from None
        try:
            graph = GraphStub(port=options["graph_port"], delay_s=options["graph_delay_ms"] / 1000)
        except OSError as exc:
            raise CommandError(
                f"Cannot start the Graph stub on port {options['graph_port']}: {exc}"
            ) from None
        with graph:
            self._note(
                options, f"Graph stub at {graph.url}: the worker must run with META_GRAPH_URL={graph.url}"
            )
            if options["warmup"]:
                self._warm_up(options, route, graph, secret)
            report = self._measure(options, route, secret)
            report["graph"] = {"url": graph.url, "requests": graph.total_hits()}
        if options["json"]:
            self.stdout.write(json.dumps(report, indent=2))
        else:
            self._print(report)
        if not report["passed"]["all"]:
            raise SystemExit(1)

    def _note(self, options: dict[str, Any], text: str) -> None:
        # With --json, stdout carries only the report.
        (self.stderr if options["json"] else self.stdout).write(text)

    def _warm_up(self, options: dict[str, Any], route: MeasureRoute, graph: GraphStub, secret: str) -> None:
        first = next_leadgen_number(route)
        posts = signed_posts(
            route=route, first_number=first, events=options["warmup"], changes_per_event=1, secret=secret
        )
        sent = post_all(url=options["url"], posts=posts, concurrency=min(options["concurrency"], len(posts)))
        if not sent.accepted_changes:
            raise CommandError(
                f"The server at {options['url']} accepted none of the warm-up POSTs "
                f"({dict(sent.failures)}): is it running, with the same META_APP_SECRET and database?"
            )
        done = wait_processed(
            route=route,
            first_id=posts[0].leadgen_ids[0],
            last_id=posts[-1].leadgen_ids[-1],
            expected=sent.accepted_changes,
            timeout_s=min(60.0, options["timeout"]),
        )
        if done.timed_out or graph.total_hits() == 0:
            raise CommandError(
                f"The warm-up events were not processed ({done.statuses}, "
                f"{graph.total_hits()} Graph requests): is a worker running with "
                f"META_GRAPH_URL={graph.url} on the same database?"
            )
        self._note(options, f"warm-up: {sent.accepted_changes} events processed")

    def _measure(self, options: dict[str, Any], route: MeasureRoute, secret: str) -> dict[str, Any]:
        events, per_event = options["events"], options["changes_per_event"]
        first = next_leadgen_number(route)
        posts = signed_posts(
            route=route, first_number=first, events=events, changes_per_event=per_event, secret=secret
        )
        self._note(
            options, f"posting {events} events × {per_event} change(s), {options['concurrency']} threads …"
        )
        sent = post_all(url=options["url"], posts=posts, concurrency=options["concurrency"])
        waiting_since = time.monotonic()
        done = wait_processed(
            route=route,
            first_id=posts[0].leadgen_ids[0],
            last_id=posts[-1].leadgen_ids[-1],
            expected=sent.accepted_changes,
            timeout_s=options["timeout"],
        )
        post_window_s = max(sent.finished_at - sent.started_at, 1e-9)
        end_to_end_s = (
            max(done.last_processed_at.timestamp() - sent.started_at, 1e-9)
            if done.last_processed_at
            else None
        )
        processed = done.statuses.get(InboxChangeStatus.PROCESSED, 0)
        not_processed = {
            status: n for status, n in done.statuses.items() if status != InboxChangeStatus.PROCESSED
        }
        latencies = sent.latencies_s
        ack_p99_ms = _ms(percentile(latencies, 0.99)) if latencies else None
        leads_per_s = round(processed / end_to_end_s, 1) if end_to_end_s else 0.0
        failures = sum(sent.failures.values()) + sum(not_processed.values())
        passed = {
            "ack_p99": ack_p99_ms is not None and ack_p99_ms <= TARGET_ACK_P99_MS,
            "throughput": leads_per_s >= TARGET_LEADS_PER_S,
            "no_failures": failures == 0 and processed == events * per_event,
        }
        passed["all"] = all(passed.values())
        return {
            "config": {
                "url": options["url"],
                "events": events,
                "changes_per_event": per_event,
                "concurrency": options["concurrency"],
                "graph_delay_ms": options["graph_delay_ms"],
            },
            "ack_ms": {
                "p50": _ms(percentile(latencies, 0.50)),
                "p95": _ms(percentile(latencies, 0.95)),
                "p99": ack_p99_ms,
                "max": _ms(max(latencies)) if latencies else None,
            },
            "posts_per_s": round(len(latencies) / post_window_s, 1),
            "post_window_s": round(post_window_s, 3),
            "leads": processed,
            "end_to_end_s": round(end_to_end_s, 3) if end_to_end_s else None,
            "leads_per_s": leads_per_s,
            "drain_after_last_ack_s": round(time.monotonic() - waiting_since, 3),
            "ingest_latency_ms": {
                "p50": _ms(percentile(done.ingest_latencies_s, 0.50)),
                "p95": _ms(percentile(done.ingest_latencies_s, 0.95)),
                "p99": _ms(percentile(done.ingest_latencies_s, 0.99)),
                "max": _ms(max(done.ingest_latencies_s, default=0.0)),
            },
            "failures": {
                "posts": dict(sent.failures),
                "changes_not_processed": not_processed,
                "timed_out": done.timed_out,
                "total": failures,
            },
            "targets": {"ack_p99_ms": TARGET_ACK_P99_MS, "leads_per_s": TARGET_LEADS_PER_S},
            "passed": passed,
        }

    def _print(self, report: dict[str, Any]) -> None:
        config, ack, latency = report["config"], report["ack_ms"], report["ingest_latency_ms"]
        verdict = {True: "PASS", False: "FAIL"}
        lines = [
            f"{config['events']} events × {config['changes_per_event']} change(s), "
            f"{config['concurrency']} client threads → {config['url']}",
            f"ack ms        p50 {ack['p50']}  p95 {ack['p95']}  p99 {ack['p99']}  max {ack['max']}"
            f"   [{verdict[report['passed']['ack_p99']]} p99 ≤ {report['targets']['ack_p99_ms']:g}]",
            f"POSTs/s       {report['posts_per_s']} ({report['post_window_s']} s)",
            f"leads/s       {report['leads_per_s']} ({report['leads']} leads in {report['end_to_end_s']} s)"
            f"   [{verdict[report['passed']['throughput']]} ≥ {report['targets']['leads_per_s']:g}]",
            f"ingest ms     p50 {latency['p50']}  p95 {latency['p95']}  p99 {latency['p99']}"
            f"  max {latency['max']}   (stored → processed)",
            f"failures      {report['failures']['total']} {report['failures']['posts'] or ''}"
            f"{report['failures']['changes_not_processed'] or ''}"
            f"{' (timed out waiting for the worker)' if report['failures']['timed_out'] else ''}"
            f"   [{verdict[report['passed']['no_failures']]}]",
            f"graph         {report['graph']['requests']} requests to {report['graph']['url']}",
        ]
        for line in lines:
            self.stdout.write(line)
