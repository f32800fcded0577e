"""gunicorn settings and hooks (`gunicorn --config python:converzia.gunicorn_conf`).

Request limits. Production runs behind nginx (deploy/nginx/converzia.conf, docs/performance.md "Slow
clients"), which refuses oversized requests itself in the API's JSON error shape; gunicorn's limits
are set wider than nginx's so that nginx is always the one to refuse, and gunicorn alone (tests,
`make run`) still refuses anything larger, with its own HTML 400/414/431 (not changeable):
- `limit_request_line` 8190 (gunicorn's maximum) > nginx's 4 KiB request line;
- `limit_request_field_size` 8190 > nginx's 4 KiB header line;
- `limit_request_fields` 1024 > the 1,000 header lines nginx accepts, plus the few it adds.

Prometheus multiprocess mode.

With `PROMETHEUS_MULTIPROC_DIR` set (in the environment, before any process imports prometheus_client),
every worker writes its metrics to files there and `/metrics` sums them, whichever worker answers:
- `on_starting` (master, once): empty the directory, so a restart does not add the last run's counts;
- `child_exit` (master, per dead worker): mark the worker dead, which drops its live-gauge files (its
  counters and histograms stay: totals must not go down when a worker is replaced).

Without the variable both hooks do nothing and each worker keeps its own in-memory registry.
`make run` (converzia/devstack.py) sets the directory to `.data/prometheus`. This module runs in the
gunicorn master before Django is configured and must not import it.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

limit_request_line = 8190
limit_request_field_size = 8190
limit_request_fields = 1024


def multiprocess_directory_reset(directory: str) -> None:
    """Empty (or create) the directory the workers will write their metric files to."""
    path = Path(directory)
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)


def on_starting(server: Any) -> None:
    directory = os.environ.get(MULTIPROC_ENV)
    if directory:
        multiprocess_directory_reset(directory)


def child_exit(server: Any, worker: Any) -> None:
    if os.environ.get(MULTIPROC_ENV):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.pid)
