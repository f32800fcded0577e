"""A tenant's webhook receiver for measurements: answers every POST after a fixed delay (TARGETS.md:
"a loopback receiver that answers in 50 ms"), recording when each `webhook-id` first arrived.

gevent's WSGI server (gevent comes with locust) keeps thousands of slow answers in flight in one
process with little CPU, so the receiver does not steal the cores it is meant to measure. Run it in
its own process:

    .venv/bin/python -m deliveries.measure.receiver --port 8766 --delay-ms 50

`GET /stats` answers `{"requests", "unique", "repeats", "arrivals": {webhook_id: unix_time}}`;
`POST /reset` forgets everything.
"""

from __future__ import annotations

from gevent import monkey

monkey.patch_all()

import argparse  # noqa: E402 — after monkey-patching, as gevent requires
import json  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable, Iterable  # noqa: E402
from typing import Any  # noqa: E402

import gevent  # noqa: E402
from gevent.pywsgi import WSGIServer  # noqa: E402


class Receiver:
    def __init__(self, delay_s: float, status: int = 200) -> None:
        self.delay_s = delay_s
        self.status = status
        self.requests = 0
        self.arrivals: dict[str, float] = {}

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        method, path = environ["REQUEST_METHOD"], environ.get("PATH_INFO", "/")
        if method == "GET" and path == "/stats":
            body = json.dumps(
                {
                    "requests": self.requests,
                    "unique": len(self.arrivals),
                    "repeats": self.requests - len(self.arrivals),
                    "arrivals": self.arrivals,
                }
            ).encode()
            start_response("200 OK", [("Content-Type", "application/json")])
            return [body]
        if method == "POST" and path == "/reset":
            self.requests, self.arrivals = 0, {}
            start_response("204 No Content", [])
            return [b""]
        arrived = time.time()
        environ["wsgi.input"].read()
        self.requests += 1
        self.arrivals.setdefault(environ.get("HTTP_WEBHOOK_ID", ""), arrived)
        gevent.sleep(self.delay_s)
        start_response(f"{self.status} OK", [("Content-Type", "text/plain"), ("Content-Length", "2")])
        return [b"ok"]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8766)
    parser.add_argument("--delay-ms", type=float, default=50.0)
    args = parser.parse_args()
    server = WSGIServer((args.host, args.port), Receiver(args.delay_ms / 1000), log=None, backlog=2048)
    server.serve_forever()


if __name__ == "__main__":
    main()
