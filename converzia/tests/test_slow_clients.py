"""`manage.py slow_clients` and `converzia.bench.slow_clients`: the bounds, the loopback rule, the
verdicts it prints, and a short run against a tiny local server (test_nginx_front.py runs it against
gunicorn with and without nginx)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from django.core.management import CommandError, call_command

from converzia.bench.slow_clients import (
    MAX_SLOW_CLIENTS,
    LatencySummary,
    PhaseResult,
    SlowClientsError,
    SlowClientsResult,
    loopback_address,
    slow_clients_measure,
)


def summary(p99_ms: float, *, failures: int = 0) -> LatencySummary:
    return LatencySummary(requests=100, failures=failures, p50_ms=p99_ms / 2, p99_ms=p99_ms, max_ms=p99_ms)


def result(*phases: PhaseResult) -> SlowClientsResult:
    return SlowClientsResult(
        url="http://127.0.0.1:1",
        slow_clients=50,
        seconds=20,
        threshold_ms=100,
        tolerance_ms=20,
        phases=phases,
    )


def phase(name: str, health_p99: float, webhook_p99: float, *, failures: int = 0) -> PhaseResult:
    return PhaseResult(
        name=name,
        slow_clients=0 if name == "baseline" else 50,
        slow_open_min=0 if name == "baseline" else 50,
        slow_reopened=0,
        health=summary(health_p99, failures=failures),
        webhook=summary(webhook_p99),
    )


@pytest.mark.parametrize(
    "url",
    [
        pytest.param("http://192.0.2.10:8000", id="_case_another_machine"),
        pytest.param("https://127.0.0.1:8443", id="_case_https"),
        pytest.param("127.0.0.1:8000", id="_case_no_scheme"),
    ],
)
def test_only_plain_http_on_loopback_is_accepted(url):
    with pytest.raises(SlowClientsError):
        loopback_address(url)


def test_a_loopback_url_gives_host_port_and_host_header():
    assert loopback_address("http://localhost:8080/anything") == ("localhost", 8080, "localhost:8080")
    assert loopback_address("http://127.0.0.1") == ("127.0.0.1", 80, "127.0.0.1")


@pytest.mark.parametrize(
    "arguments",
    [
        pytest.param({"slow": 0}, id="_case_no_slow_clients"),
        pytest.param({"slow": MAX_SLOW_CLIENTS + 1}, id="_case_too_many"),
        pytest.param({"seconds": 0}, id="_case_no_time"),
        pytest.param({"seconds": 301}, id="_case_too_long"),
        pytest.param({"kinds": ["trickle"]}, id="_case_unknown_kind"),
    ],
)
def test_out_of_bounds_runs_are_refused_before_any_connection(arguments):
    with pytest.raises(SlowClientsError):
        slow_clients_measure(url="http://127.0.0.1:9", **arguments)


def test_every_figure_passes_within_the_threshold_and_an_unchanged_webhook():
    verdict = result(phase("baseline", 8, 20), phase("slow body", 9, 25), phase("slow headers", 7, 21))

    assert verdict.ok
    assert [(f.phase, f.probe, f.statistic) for f in verdict.figures() if f.phase == "slow body"] == [
        ("slow body", "health", "p50"),
        ("slow body", "health", "p99"),
        ("slow body", "webhook ack", "p50"),
        ("slow body", "webhook ack", "p99"),
        ("slow body", "webhook ack", "p99 vs baseline"),
    ]


@pytest.mark.parametrize(
    ("loaded", "failing"),
    [
        pytest.param(phase("slow body", 140, 25), ("health", "p99"), id="_case_slow_health"),
        pytest.param(
            phase("slow body", 9, 60), ("webhook ack", "p99 vs baseline"), id="_case_webhook_changed"
        ),
        pytest.param(phase("slow body", 9, 25, failures=1), ("health", "p99"), id="_case_a_failed_probe"),
    ],
)
def test_a_figure_over_its_limit_fails_the_run(loaded, failing):
    verdict = result(phase("baseline", 8, 20), loaded)

    assert not verdict.ok
    assert failing in [(f.probe, f.statistic) for f in verdict.figures() if not f.ok]


def test_the_printed_line_names_the_figure_and_its_verdict():
    figures = result(phase("baseline", 8, 20), phase("slow body", 140, 45)).figures()

    lines = [figure.line() for figure in figures]

    assert lines[1].startswith("baseline      health      p99")
    assert "8.0 ms  PASS (≤ 100 ms)" in lines[1]
    assert "140.0 ms  FAIL (≤ 100 ms)  50/50 slow open at worst, 0 reopened." in lines[5]
    assert "+25.0 ms  FAIL (≤ 20 ms)" in lines[-1]


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def do_POST(self) -> None:  # noqa: N802
        self.rfile.read(int(self.headers["Content-Length"]))
        self.do_GET()

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def threaded_server() -> Iterator[str]:
    """A thread-per-connection server: slow clients each hold a thread, never the others'."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    server.daemon_threads = True
    # Slow-header clients would otherwise hold their threads past the test.
    _Handler.timeout = 5
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_a_short_run_holds_the_slow_clients_and_times_health(threaded_server):
    measured = slow_clients_measure(url=threaded_server, slow=5, seconds=1.5, secret=None)

    assert [p.name for p in measured.phases] == ["baseline", "slow body", "slow headers"]
    for loaded in measured.phases[1:]:
        assert loaded.slow_open_min == 5
        assert loaded.health.failures == 0 and loaded.health.requests >= 5
    assert all(p.webhook is None for p in measured.phases)


def test_the_command_refuses_another_machine():
    with pytest.raises(CommandError, match="loopback"):
        call_command("slow_clients", url="http://192.0.2.10:8000", no_webhook=True)


def test_the_command_needs_a_secret_for_the_webhook(settings):
    settings.META_APP_SECRET = ""

    with pytest.raises(CommandError, match="--secret"):
        call_command("slow_clients", url="http://127.0.0.1:9")


def test_the_command_prints_one_line_per_figure(threaded_server, capsys):
    call_command("slow_clients", url=threaded_server, slow=3, seconds=1, kind=["body"], no_webhook=True)

    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[:3] for line in lines[:2]] == [
        ["baseline", "health", "p50"],
        ["baseline", "health", "p99"],
    ]
    assert [line.split()[:4] for line in lines[2:4]] == [
        ["slow", "body", "health", "p50"],
        ["slow", "body", "health", "p99"],
    ]
    assert all("PASS (≤ 100 ms)" in line for line in lines[:4])
    assert lines[-1].startswith("Slow clients: every figure within its limit")
