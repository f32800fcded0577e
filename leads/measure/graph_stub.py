"""A local stand-in for Meta's Graph API lead endpoint (`GET /{leadgen_id}?access_token=…`).

A threaded HTTP/1.1 server (keep-alive, so the worker's pooled client reuses connections as it would
with Meta) that answers every leadgen id with a realistic lead object whose phone is derived from the
id: one id is always the same person, different ids are different people. Tests can hold the answer
for an id until they release it, and wait until a request for an id has arrived.

    with GraphStub() as graph:          # port 0: any free port; GraphStub(port=8765) for a fixed one
        env["META_GRAPH_URL"] = graph.url
"""

from __future__ import annotations

import sys
import threading
import zlib
from collections import Counter
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any
from urllib.parse import parse_qs, urlsplit

import orjson

LOOPBACK = "127.0.0.1"
# Subscriber numbers 2000-0000 … 7999-9999 after +54 9 11 are all valid Buenos Aires mobiles.
_PHONE_FIRST = 20_000_000
_PHONE_SPAN = 60_000_000


def phone_for_leadgen(leadgen_id: str) -> str:
    """A valid Argentine mobile number (E.164) that depends only on the leadgen id."""
    number = int(leadgen_id) if leadgen_id.isdigit() else zlib.crc32(leadgen_id.encode())
    return f"+54911{_PHONE_FIRST + number % _PHONE_SPAN}"


def graph_lead(leadgen_id: str) -> dict[str, Any]:
    """What Graph answers for a lead-ad submission (`fields` default set), including a DNI question
    so the redaction path runs as it would in production."""
    return {
        "id": leadgen_id,
        "created_time": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S+0000"),
        "field_data": [
            {"name": "full_name", "values": [f"Lead {leadgen_id}"]},
            {"name": "email", "values": [f"lead{leadgen_id}@example.com"]},
            {"name": "phone_number", "values": [phone_for_leadgen(leadgen_id)]},
            {"name": "¿cuál_es_el_propósito_de_tu_compra?", "values": ["Inversión"]},
            {"name": "dni", "values": ["30123456"]},
        ],
    }


class _GraphHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _GraphServer

    def do_GET(self) -> None:  # noqa: N802 — the name http.server dispatches to
        url = urlsplit(self.path)
        leadgen_id = url.path.rstrip("/").rsplit("/", 1)[-1]
        stub = self.server.stub
        stub._request_arrived(leadgen_id)
        hold = stub._holds.get(leadgen_id)
        if hold is not None:
            hold.wait(stub.hold_timeout_s)
        elif stub.delay_s:
            threading.Event().wait(stub.delay_s)
        if not parse_qs(url.query).get("access_token"):
            body = {
                "error": {"message": "An access token is required.", "type": "OAuthException", "code": 104}
            }
            self._answer(400, body)
            return
        self._answer(200, graph_lead(leadgen_id))

    def _answer(self, status: int, body: dict[str, Any]) -> None:
        raw = orjson.dumps(body)
        reason = "OK" if status == 200 else "Bad Request"
        head = (
            f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/json; charset=UTF-8\r\n"
            f"Content-Length: {len(raw)}\r\n\r\n"
        ).encode()
        try:
            self.wfile.write(head + raw)
        except (BrokenPipeError, ConnectionResetError):
            # The caller gave up (a killed worker, a client timeout): nothing to answer.
            self.close_connection = True

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 — http.server's signature
        """Silent: a load run makes thousands of requests."""


class _GraphServer(ThreadingHTTPServer):
    daemon_threads = True
    # Many keep-alive clients connect at once under load; the default backlog of 5 drops some.
    request_queue_size = 1024

    def __init__(self, address: tuple[str, int], stub: GraphStub) -> None:
        self.stub = stub
        super().__init__(address, _GraphHandler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that hangs up mid-request (a killed or restarting worker) is no stub error."""
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


class GraphStub:
    """Start with `start()` (or `with`), read `url`, stop with `stop()`."""

    def __init__(
        self, *, host: str = LOOPBACK, port: int = 0, delay_s: float = 0.0, hold_timeout_s: float = 60.0
    ) -> None:
        self.delay_s = delay_s
        self.hold_timeout_s = hold_timeout_s
        self._server = _GraphServer((host, port), self)
        self._thread = threading.Thread(target=self._server.serve_forever, name="graph-stub", daemon=True)
        self._lock = threading.Lock()
        self._arrivals = threading.Condition(self._lock)
        self._hits: Counter[str] = Counter()
        self._holds: dict[str, threading.Event] = {}

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def start(self) -> GraphStub:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.release_all()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> GraphStub:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # --- what tests steer and observe --------------------------------------------------------------
    def hold(self, leadgen_id: str) -> threading.Event:
        """Requests for `leadgen_id` wait (at most `hold_timeout_s`) until the returned event is set."""
        event = threading.Event()
        self._holds[leadgen_id] = event
        return event

    def release_all(self) -> None:
        for event in list(self._holds.values()):
            event.set()

    def hits(self, leadgen_id: str) -> int:
        with self._lock:
            return self._hits[leadgen_id]

    def total_hits(self) -> int:
        with self._lock:
            return sum(self._hits.values())

    def wait_for_request(self, leadgen_id: str, *, timeout_s: float) -> bool:
        """True once a request for `leadgen_id` has arrived (it may still be held)."""
        with self._arrivals:
            return self._arrivals.wait_for(lambda: self._hits[leadgen_id] > 0, timeout=timeout_s)

    def _request_arrived(self, leadgen_id: str) -> None:
        with self._arrivals:
            self._hits[leadgen_id] += 1
            self._arrivals.notify_all()


def main(argv: list[str] | None = None) -> int:
    """`python -m leads.measure.graph_stub --port N`: serve until SIGTERM or SIGINT (`make run` starts
    it so a laptop's test leads are fetched without reaching Meta)."""
    import argparse
    import signal

    parser = argparse.ArgumentParser(prog="python -m leads.measure.graph_stub", description=main.__doc__)
    parser.add_argument("--host", default=LOOPBACK)
    parser.add_argument("--port", type=int, default=0, help="0: any free port (printed)")
    arguments = parser.parse_args(argv)
    stub = GraphStub(host=arguments.host, port=arguments.port).start()
    stopped = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda _signum, _frame: stopped.set())
    sys.stdout.write(f"Graph API stand-in listening on {stub.url}\n")
    sys.stdout.flush()
    while not stopped.wait(0.5):
        pass
    stub.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
