"""gunicorn hooks for Prometheus multiprocess mode (`gunicorn --config python:converzia.gunicorn_conf`).

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
