"""Slow clients against the web tier (TARGETS.md "Reliability and security" 12, issue 15).

`slow_clients_measure(url=..., slow=50, seconds=20, secret=...)` runs three phases against a server
on this machine and returns a `SlowClientsResult`:

1. **baseline**: no slow clients; `GET /api/health/live` every 50 ms and a signed Meta POST to
   `/api/webhooks/meta-leads` every 100 ms, each on a fresh connection, each timed to the last byte.
2. **slow body**: `slow` connections each send a webhook POST's headers at once (a declared
   1,000-byte body), then the body one byte a second, while the same probes run.
3. **slow headers**: `slow` connections each send a request one byte a second from its first byte
   (a header that never ends), while the same probes run.

A slow connection the server closes (a timeout, a killed worker) is reopened at the next tick, as an
attacker would, so `slow` stay open all along. Everything is bounded: at most `MAX_SLOW_CLIENTS`
connections, `MAX_SECONDS` per phase, a probe gives up after `probe_timeout_s` (that counts as a
failure timed at the timeout), the driver threads stop by themselves at their deadline, and only
loopback addresses are accepted (this is a denial-of-service tool; it is not pointed at others).

Each figure passes when it is at most `threshold_ms` (100 ms in TARGETS.md) with no failed probe; the
webhook ack under slow clients must also stay within `tolerance_ms` of the baseline ("unchanged").
`manage.py slow_clients` prints the figures; the chaos suite calls the function. docs/performance.md
"Slow clients" has the measured table.
"""

from __future__ import annotations

import contextlib
import http.client
import ipaddress
import itertools
import select
import socket
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from converzia.bench.report import percentile_ms
from leads.measure.payloads import leadgen_body
from leads.meta import signature_header

HEALTH_PATH = "/api/health/live"
WEBHOOK_PATH = "/api/webhooks/meta-leads"
KINDS = ("body", "headers")
MAX_SLOW_CLIENTS = 500
MAX_SECONDS = 300.0
# The reproduction: a declared 1,000-byte body, one byte a second.
SLOW_BODY_DECLARED_BYTES = 1000
SLOW_BYTE_INTERVAL_S = 1.0
HEALTH_INTERVAL_S = 0.05
WEBHOOK_INTERVAL_S = 0.1
# Meta's ack budget (D3): an answer later than this is as good as none.
DEFAULT_PROBE_TIMEOUT_S = 5.0
DEFAULT_THRESHOLD_MS = 100.0
DEFAULT_TOLERANCE_MS = 20.0
# How long a phase waits for its slow connections to open, and the server to recover after it.
OPEN_TIMEOUT_S = 10.0
RECOVERY_TIMEOUT_S = 60.0
# The ad, page and form of the probe POSTs: mapped to no tenant, so a worker (if one runs) settles
# their changes as `unrouted` and creates no lead.
PROBE_AD_ID = "990000000000901"
PROBE_PAGE_ID = "990000000000902"
PROBE_FORM_ID = "990000000000903"


class SlowClientsError(ValueError):
    """The arguments are out of bounds, or the URL is not on this machine."""


@dataclass(frozen=True)
class LatencySummary:
    requests: int
    failures: int
    p50_ms: float
    p99_ms: float
    max_ms: float
    first_failure: str | None = None


@dataclass(frozen=True)
class PhaseResult:
    name: str  # "baseline", "slow body", "slow headers"
    slow_clients: int
    # The fewest slow connections open at any tick of the phase (the server may close some; they are
    # reopened at the next tick), and how many were reopened.
    slow_open_min: int
    slow_reopened: int
    health: LatencySummary
    webhook: LatencySummary | None


@dataclass(frozen=True)
class Figure:
    phase: str
    probe: str  # "health" or "webhook ack"
    statistic: str  # "p50", "p99", "p99 vs baseline"
    value_ms: float
    limit_ms: float
    ok: bool
    note: str = ""

    def line(self) -> str:
        mark = "PASS" if self.ok else "FAIL"
        value = f"{self.value_ms:+8.1f}" if self.statistic.endswith("baseline") else f"{self.value_ms:8.1f}"
        text = f"{self.phase:<13} {self.probe:<11} {self.statistic:<16} {value} ms"
        text += f"  {mark} (≤ {self.limit_ms:g} ms)"
        return f"{text}  {self.note}" if self.note else text


@dataclass(frozen=True)
class SlowClientsResult:
    url: str
    slow_clients: int
    seconds: float
    threshold_ms: float
    tolerance_ms: float
    phases: tuple[PhaseResult, ...]

    def phase(self, name: str) -> PhaseResult:
        return next(phase for phase in self.phases if phase.name == name)

    def figures(self) -> list[Figure]:
        """Every printed figure with its verdict: p50/p99 of each probe in each phase, and the webhook
        ack p99 of each loaded phase against the baseline's."""
        figures: list[Figure] = []
        baseline = self.phases[0] if self.phases and self.phases[0].name == "baseline" else None
        for phase in self.phases:
            probes = [("health", phase.health), ("webhook ack", phase.webhook)]
            for probe, summary in probes:
                if summary is None:
                    continue
                note = _failure_note(summary)
                if phase.name != "baseline":
                    held = f"{phase.slow_open_min}/{phase.slow_clients} slow open at worst"
                    note = f"{held}, {phase.slow_reopened} reopened. {note}"
                for statistic, value in (("p50", summary.p50_ms), ("p99", summary.p99_ms)):
                    ok = value <= self.threshold_ms and summary.failures == 0
                    figures.append(Figure(phase.name, probe, statistic, value, self.threshold_ms, ok, note))
            if baseline is not None and phase is not baseline and phase.webhook and baseline.webhook:
                change = phase.webhook.p99_ms - baseline.webhook.p99_ms
                figures.append(
                    Figure(
                        phase.name,
                        "webhook ack",
                        "p99 vs baseline",
                        change,
                        self.tolerance_ms,
                        change <= self.tolerance_ms,
                    )
                )
        return figures

    @property
    def ok(self) -> bool:
        return all(figure.ok for figure in self.figures())


def _failure_note(summary: LatencySummary) -> str:
    if not summary.failures:
        return f"({summary.requests} requests)"
    return f"({summary.failures} of {summary.requests} failed; first: {summary.first_failure})"


# --- Probes ------------------------------------------------------------------------------------------


@dataclass
class _Samples:
    latencies_s: list[float] = field(default_factory=list)
    failures: int = 0
    first_failure: str | None = None

    def fail(self, reason: str) -> None:
        self.failures += 1
        if self.first_failure is None:
            self.first_failure = reason

    def summary(self) -> LatencySummary:
        return LatencySummary(
            requests=len(self.latencies_s),
            failures=self.failures,
            p50_ms=percentile_ms(self.latencies_s, 50),
            p99_ms=percentile_ms(self.latencies_s, 99),
            max_ms=max(self.latencies_s, default=0.0) * 1000,
            first_failure=self.first_failure,
        )


@dataclass(frozen=True)
class _Request:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes | None = None


def _timed_request(host: str, port: int, request: _Request, timeout_s: float) -> tuple[float, str | None]:
    """(seconds to the last byte of the answer, None or why it failed). A new connection each time,
    as Meta opens one per POST; a timeout counts as `timeout_s`."""
    started = time.perf_counter()
    connection = http.client.HTTPConnection(host, port, timeout=timeout_s)
    try:
        connection.request(request.method, request.path, body=request.body, headers=request.headers)
        response = connection.getresponse()
        response.read()
        status = response.status
    except TimeoutError:
        return timeout_s, f"no answer within {timeout_s:g} s"
    except (OSError, http.client.HTTPException) as exc:
        return time.perf_counter() - started, f"{type(exc).__name__}: {exc}"
    finally:
        connection.close()
    elapsed = time.perf_counter() - started
    return elapsed, None if 200 <= status < 300 else f"HTTP {status}"


def _probe_loop(
    *,
    host: str,
    port: int,
    next_request: Callable[[], _Request],
    interval_s: float,
    until: float,
    timeout_s: float,
    samples: _Samples,
) -> None:
    """One request at a time, one every `interval_s` (sooner after a slow one), until `until`."""
    next_at = time.monotonic()
    while time.monotonic() < until:
        request = next_request()
        elapsed, failure = _timed_request(host, port, request, timeout_s)
        samples.latencies_s.append(elapsed)
        if failure is not None:
            samples.fail(failure)
        next_at = max(next_at + interval_s, time.monotonic())
        time.sleep(max(0.0, min(next_at, until) - time.monotonic()))


def _health_requests(host_header: str) -> Callable[[], _Request]:
    request = _Request("GET", HEALTH_PATH, {"Host": host_header, "Connection": "close"})
    return lambda: request


def _webhook_requests(host_header: str, secret: str) -> Callable[[], _Request]:
    """Signed Meta POSTs, each with a leadgen id never sent before (7 + 14 digits from the clock)."""
    numbers = itertools.count(700_000_000_000_000 + time.time_ns() // 1000 % 10**14)
    lock = threading.Lock()

    def build() -> _Request:
        with lock:
            number = next(numbers)
        body = leadgen_body(
            page_id=PROBE_PAGE_ID,
            ad_id=PROBE_AD_ID,
            form_id=PROBE_FORM_ID,
            leadgen_ids=[str(number)],
            created_time=int(time.time()),
        )
        headers = {
            "Host": host_header,
            "Connection": "close",
            "Content-Type": "application/json",
            "X-Hub-Signature-256": signature_header(body, secret),
        }
        return _Request("POST", WEBHOOK_PATH, headers, body)

    return build


# --- Slow connections --------------------------------------------------------------------------------


def _slow_body_stream(host_header: str) -> tuple[bytes, Iterator[bytes]]:
    """A webhook POST's headers at once, then its declared body one byte per tick."""
    head = (
        f"POST {WEBHOOK_PATH} HTTP/1.1\r\nHost: {host_header}\r\nContent-Type: application/json\r\n"
        f"X-Hub-Signature-256: sha256=00\r\nContent-Length: {SLOW_BODY_DECLARED_BYTES}\r\n\r\n"
    ).encode()
    return head, itertools.repeat(b" ")


def _slow_headers_stream(host_header: str) -> tuple[bytes, Iterator[bytes]]:
    """A request sent one byte per tick from its first byte; its last header never ends."""
    start = f"GET {HEALTH_PATH} HTTP/1.1\r\nHost: {host_header}\r\nX-Slow: ".encode()
    stream = itertools.chain(
        (start[index : index + 1] for index in range(len(start))), itertools.repeat(b"a")
    )
    return b"", stream


_STREAMS = {"body": _slow_body_stream, "headers": _slow_headers_stream}


class _SlowConnection:
    def __init__(self, address: tuple[str, int], kind: str, host_header: str) -> None:
        self.address, self.kind, self.host_header = address, kind, host_header
        self.sock: socket.socket | None = None
        self.stream: Iterator[bytes] = iter(())

    def open(self) -> bool:
        head, self.stream = _STREAMS[self.kind](self.host_header)
        try:
            self.sock = socket.create_connection(self.address, timeout=2.0)
            self.sock.settimeout(0.5)
            if head:
                self.sock.sendall(head)
            else:
                self.sock.sendall(next(self.stream))
        except OSError:
            self.close()
            return False
        return True

    def tick(self) -> bool:
        """Send the next byte; False when the connection is gone (closed or answered by the server)."""
        if self.sock is None:
            return False
        try:
            readable, _, _ = select.select([self.sock], [], [], 0)
            if readable:  # an answer (408, 400, …) or a close: either way the server let go
                self.close()
                return False
            self.sock.sendall(next(self.stream))
        except OSError:
            self.close()
            return False
        return True

    def close(self) -> None:
        if self.sock is not None:
            with contextlib.suppress(OSError):
                self.sock.close()
            self.sock = None


class _SlowDriver(threading.Thread):
    """`count` slow connections of one kind, one byte each per tick, reopened when the server lets go.
    Stops at `stop()` or by itself at `hard_deadline`, closing every socket."""

    def __init__(
        self, *, address: tuple[str, int], host_header: str, kind: str, count: int, hard_deadline: float
    ):
        super().__init__(name=f"slow-{kind}", daemon=True)
        self.connections = [_SlowConnection(address, kind, host_header) for _ in range(count)]
        self.hard_deadline = hard_deadline
        self.stopping = threading.Event()
        self.all_open = threading.Event()
        self.open_min: int | None = None
        self.reopened = 0
        self.measuring = False

    def run(self) -> None:
        try:
            opened = 0
            for connection in self.connections:
                if self.stopping.is_set() or time.monotonic() >= self.hard_deadline:
                    return
                opened += connection.open()
            if opened == len(self.connections):
                self.all_open.set()
            while not self.stopping.wait(SLOW_BYTE_INTERVAL_S) and time.monotonic() < self.hard_deadline:
                open_now = 0
                for connection in self.connections:
                    if connection.tick():
                        open_now += 1
                    elif time.monotonic() < self.hard_deadline and connection.open():
                        self.reopened += 1
                        open_now += 1
                if self.measuring:
                    self.open_min = open_now if self.open_min is None else min(self.open_min, open_now)
                if open_now == len(self.connections):
                    self.all_open.set()
        finally:
            for connection in self.connections:
                connection.close()

    def stop(self) -> None:
        self.stopping.set()
        self.join(timeout=SLOW_BYTE_INTERVAL_S * 3)


# --- The measurement ---------------------------------------------------------------------------------


def loopback_address(url: str) -> tuple[str, int, str]:
    """(host, port, Host header) of an http:// URL whose host is this machine; SlowClientsError if not."""
    parts = urlsplit(url)
    if parts.scheme != "http" or not parts.hostname:
        raise SlowClientsError(f"{url!r}: an http:// URL with a host is needed (the server on this machine).")
    port = parts.port or 80
    try:
        infos = socket.getaddrinfo(parts.hostname, port, type=socket.SOCK_STREAM)
    except OSError as exc:
        raise SlowClientsError(f"{parts.hostname!r} does not resolve: {exc}") from None
    for info in infos:
        if not ipaddress.ip_address(info[4][0]).is_loopback:
            raise SlowClientsError(
                f"{parts.hostname} resolves to {info[4][0]}: slow clients only go to loopback addresses."
            )
    return parts.hostname, port, parts.netloc


def _measure_phase(
    *,
    name: str,
    host: str,
    port: int,
    host_header: str,
    secret: str | None,
    seconds: float,
    probe_timeout_s: float,
    driver: _SlowDriver | None,
) -> PhaseResult:
    if driver is not None:
        driver.start()
        driver.all_open.wait(OPEN_TIMEOUT_S)
        # One tick so every slow connection has been accepted and is mid-request when timing starts.
        time.sleep(SLOW_BYTE_INTERVAL_S)
        driver.measuring = True
    until = time.monotonic() + seconds
    health, webhook = _Samples(), _Samples()
    loops = [
        threading.Thread(
            target=_probe_loop,
            kwargs={
                "host": host,
                "port": port,
                "next_request": _health_requests(host_header),
                "interval_s": HEALTH_INTERVAL_S,
                "until": until,
                "timeout_s": probe_timeout_s,
                "samples": health,
            },
            daemon=True,
        )
    ]
    if secret is not None:
        loops.append(
            threading.Thread(
                target=_probe_loop,
                kwargs={
                    "host": host,
                    "port": port,
                    "next_request": _webhook_requests(host_header, secret),
                    "interval_s": WEBHOOK_INTERVAL_S,
                    "until": until,
                    "timeout_s": probe_timeout_s,
                    "samples": webhook,
                },
                daemon=True,
            )
        )
    try:
        for loop in loops:
            loop.start()
        for loop in loops:
            loop.join(timeout=seconds + probe_timeout_s + 5)
    finally:
        if driver is not None:
            driver.stop()
    count = len(driver.connections) if driver is not None else 0
    return PhaseResult(
        name=name,
        slow_clients=count,
        slow_open_min=(driver.open_min or 0) if driver is not None else 0,
        slow_reopened=driver.reopened if driver is not None else 0,
        health=health.summary(),
        webhook=webhook.summary() if secret is not None else None,
    )


def _await_recovery(host: str, port: int, host_header: str, timeout_s: float) -> None:
    """After a loaded phase, wait (bounded) until health answers again, so a server whose workers
    were killed does not spill that phase's damage into the next one."""
    deadline = time.monotonic() + timeout_s
    request = _health_requests(host_header)()
    while time.monotonic() < deadline:
        _elapsed, failure = _timed_request(host, port, request, timeout_s=2.0)
        if failure is None:
            return
        time.sleep(0.2)


def slow_clients_measure(
    *,
    url: str,
    slow: int = 50,
    seconds: float = 20.0,
    secret: str | None = None,
    kinds: Sequence[str] = KINDS,
    threshold_ms: float = DEFAULT_THRESHOLD_MS,
    tolerance_ms: float = DEFAULT_TOLERANCE_MS,
    probe_timeout_s: float = DEFAULT_PROBE_TIMEOUT_S,
    progress: Callable[[str], None] | None = None,
) -> SlowClientsResult:
    """The baseline, then one phase per kind of slow client (`body`, `headers`), against `url`.

    `secret` is the server's META_APP_SECRET; without it only health is probed. Returns when every
    phase is over: about (1 + len(kinds)) × `seconds`, plus a few seconds per phase.
    """
    host, port, host_header = loopback_address(url)
    if not 1 <= slow <= MAX_SLOW_CLIENTS:
        raise SlowClientsError(f"--slow must be 1–{MAX_SLOW_CLIENTS}, not {slow}.")
    if not 0 < seconds <= MAX_SECONDS:
        raise SlowClientsError(f"--seconds must be more than 0 and at most {MAX_SECONDS:g}, not {seconds:g}.")
    unknown = set(kinds) - set(KINDS)
    if unknown or not kinds:
        raise SlowClientsError(f"Kinds are {', '.join(KINDS)}; got {', '.join(kinds) or 'none'}.")
    say = progress or (lambda _message: None)

    phases = []
    say(f"baseline: {seconds:g} s without slow clients")
    phases.append(
        _measure_phase(
            name="baseline",
            host=host,
            port=port,
            host_header=host_header,
            secret=secret,
            seconds=seconds,
            probe_timeout_s=probe_timeout_s,
            driver=None,
        )
    )
    for kind in dict.fromkeys(kinds):
        say(f"slow {kind}: {slow} connections, one byte a second, for {seconds:g} s")
        driver = _SlowDriver(
            address=(host, port),
            host_header=host_header,
            kind=kind,
            count=slow,
            hard_deadline=time.monotonic() + OPEN_TIMEOUT_S + seconds + probe_timeout_s + 10,
        )
        phases.append(
            _measure_phase(
                name=f"slow {kind}",
                host=host,
                port=port,
                host_header=host_header,
                secret=secret,
                seconds=seconds,
                probe_timeout_s=probe_timeout_s,
                driver=driver,
            )
        )
        _await_recovery(host, port, host_header, RECOVERY_TIMEOUT_S)
    return SlowClientsResult(
        url=url,
        slow_clients=slow,
        seconds=seconds,
        threshold_ms=threshold_ms,
        tolerance_ms=tolerance_ms,
        phases=tuple(phases),
    )
