"""Closed-loop HTTP load: `concurrency` clients, each sending its next request as soon as the previous
one is answered. At concurrency 2 on 2 cores this measures service time rather than queueing
(TARGETS.md "Latency").

`run_closed_loop` cycles through a fixed list of requests; `run_sessions` runs one script per client,
a generator that decides its next request from the previous answer (a cursor to follow, an id to open).
"""

from __future__ import annotations

import http.client
import itertools
import threading
import time
from collections import Counter
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass, field
from urllib.parse import urlsplit


@dataclass(frozen=True)
class HttpRequest:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes | None = None


# A session script: yields its requests, receives each answer as (status, body); status 0 means the
# request failed in transport. Returning ends the session.
SessionScript = Generator[HttpRequest, tuple[int, bytes], None]


@dataclass
class LoadResult:
    latencies_s: list[float] = field(default_factory=list)
    statuses: Counter[int] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)  # transport failures by exception type
    wall_s: float = 0.0
    # The first unexpected answer, to explain a failed run.
    first_failure: str | None = None

    @property
    def ok(self) -> int:
        return sum(count for status, count in self.statuses.items() if 200 <= status < 400)

    @property
    def failed(self) -> int:
        return sum(self.errors.values()) + sum(
            count for status, count in self.statuses.items() if not 200 <= status < 400
        )

    @property
    def requests_per_s(self) -> float:
        return len(self.latencies_s) / self.wall_s if self.wall_s else 0.0


class _Client:
    """One keep-alive connection; http.client reconnects by itself when the server closes it."""

    def __init__(self, base_url: str, timeout_s: float) -> None:
        parts = urlsplit(base_url)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"Only plain http:// servers can be benchmarked, not {base_url!r}.")
        self.prefix = parts.path.rstrip("/")
        self.connection = http.client.HTTPConnection(parts.hostname, parts.port or 80, timeout=timeout_s)

    def send(self, request: HttpRequest) -> tuple[int, bytes]:
        try:
            self.connection.request(
                request.method, self.prefix + request.path, body=request.body, headers=request.headers
            )
            response = self.connection.getresponse()
            body = response.read()
        except (OSError, http.client.HTTPException):
            self.connection.close()
            raise
        if response.getheader("Connection", "").lower() == "close":
            self.connection.close()
        return response.status, body

    def close(self) -> None:
        self.connection.close()


def run_closed_loop(
    base_url: str,
    requests: Sequence[HttpRequest],
    *,
    total: int,
    concurrency: int,
    warmup: int = 0,
    timeout_s: float = 30.0,
    max_seconds: float | None = None,
) -> LoadResult:
    """Send `warmup` untimed requests, then `total` timed ones, cycling through `requests`; stop
    early once `max_seconds` have passed (a slow scenario then reports fewer samples)."""
    if not requests:
        raise ValueError("No requests to send.")
    warm_client = _Client(base_url, timeout_s)
    try:
        for request in itertools.islice(itertools.cycle(requests), warmup):
            try:
                warm_client.send(request)
            except (OSError, http.client.HTTPException):
                pass
    finally:
        warm_client.close()

    result = LoadResult()
    lock = threading.Lock()
    counter = itertools.count()

    def worker() -> None:
        client = _Client(base_url, timeout_s)
        latencies: list[float] = []
        try:
            while (index := next(counter)) < total and (deadline is None or time.perf_counter() < deadline):
                request = requests[index % len(requests)]
                started = time.perf_counter()
                try:
                    status, body = client.send(request)
                except (OSError, http.client.HTTPException) as exc:
                    with lock:
                        result.errors[type(exc).__name__] += 1
                        result.first_failure = result.first_failure or f"{request.path}: {exc!r}"
                    continue
                latencies.append(time.perf_counter() - started)
                with lock:
                    result.statuses[status] += 1
                    if not 200 <= status < 400 and result.first_failure is None:
                        result.first_failure = f"{request.path}: {status} {body[:300]!r}"
        finally:
            client.close()
            with lock:
                result.latencies_s.extend(latencies)

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(concurrency)]
    started = time.perf_counter()
    deadline = started + max_seconds if max_seconds else None
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    result.wall_s = time.perf_counter() - started
    return result


def run_sessions(
    base_url: str,
    scripts: Sequence[Callable[[], SessionScript]],
    *,
    total: int | None = None,
    timeout_s: float = 30.0,
    max_seconds: float | None = None,
) -> LoadResult:
    """One client thread per script, each on its own keep-alive connection, all timed; stop when every
    script has returned, `total` requests have been sent in all, or `max_seconds` have passed."""
    if not scripts:
        raise ValueError("No sessions to run.")
    result = LoadResult()
    lock = threading.Lock()
    counter = itertools.count()

    def worker(script: Callable[[], SessionScript]) -> None:
        client = _Client(base_url, timeout_s)
        session = script()
        latencies: list[float] = []
        try:
            request = next(session, None)
            while request is not None:
                if (total is not None and next(counter) >= total) or (
                    deadline is not None and time.perf_counter() >= deadline
                ):
                    break
                started = time.perf_counter()
                try:
                    status, body = client.send(request)
                except (OSError, http.client.HTTPException) as exc:
                    with lock:
                        result.errors[type(exc).__name__] += 1
                        result.first_failure = result.first_failure or f"{request.path}: {exc!r}"
                    status, body = 0, b""
                else:
                    latencies.append(time.perf_counter() - started)
                    with lock:
                        result.statuses[status] += 1
                        if not 200 <= status < 400 and result.first_failure is None:
                            result.first_failure = f"{request.method} {request.path}: {status} {body[:300]!r}"
                try:
                    request = session.send((status, body))
                except StopIteration:
                    request = None
        finally:
            session.close()
            client.close()
            with lock:
                result.latencies_s.extend(latencies)

    threads = [threading.Thread(target=worker, args=(script,), daemon=True) for script in scripts]
    started = time.perf_counter()
    deadline = started + max_seconds if max_seconds else None
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    result.wall_s = time.perf_counter() - started
    return result
