"""The processes the chaos suite runs against its private servers: gunicorn under production settings,
two `run_worker`s, the Graph stand-in and a tenant's webhook receiver; and the handles that stop, start
and freeze the private PostgreSQL and Valkey."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from django.conf import settings

from converzia.bench.nginx import LocalNginx, NginxError, nginx_binary
from converzia.devstack_servers import (
    EmbeddedPostgres,
    EmbeddedValkey,
    die_with_parent,
    find_free_port,
    stop_process,
)
from leads.measure.graph_stub import GraphStub

MANAGE_PY = Path(settings.BASE_DIR) / "manage.py"
GRAPH_PAGE_TOKEN = "chaos-page-token"
# Short, so a killed worker's job is recovered within seconds (each worker beats 4× per window).
WORKER_STALLED_AFTER_S = 4.0
PROCESS_START_TIMEOUT_S = 90.0


class ChaosSetupError(RuntimeError):
    pass


@dataclass
class AppProcess:
    name: str
    argv: list[str]
    env: dict[str, str]
    log_path: Path
    process: subprocess.Popen[bytes] | None = None

    def start(self) -> AppProcess:
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            self.argv, env=self.env, cwd=MANAGE_PY.parent, stdout=log, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, start_new_session=True,
            # However the suite ends, nothing it started outlives it.
            preexec_fn=die_with_parent(signal.SIGTERM),
        )  # fmt: skip
        log.close()
        return self

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)

    def stop(self, timeout_s: float = 20.0) -> None:
        if self.process is not None and self.process.poll() is None:
            stop_process(
                self.pid, popen=self.process, first=signal.SIGTERM, then=signal.SIGKILL, timeout=timeout_s
            )

    def log_tail(self, chars: int = 2000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:]


@dataclass
class ChaosStack:
    data: Path
    postgres: EmbeddedPostgres
    valkey: EmbeddedValkey
    graph: GraphStub = field(default_factory=GraphStub)
    web: AppProcess | None = None
    workers: list[AppProcess] = field(default_factory=list)
    receivers: list[AppProcess] = field(default_factory=list)
    # Clients reach the app as in production: through nginx (deploy/nginx) when it is installed.
    web_url: str = ""
    app_url: str = ""
    nginx: LocalNginx | None = None
    _worker_count: int = 0

    @classmethod
    def adopt(cls, data: Path) -> ChaosStack:
        """The servers `python -m converzia.chaos` started in `data`; refuses anything else."""
        postgres, valkey = EmbeddedPostgres(data), EmbeddedValkey(data)
        if not (postgres.adopt_running() and valkey.adopt_running()):
            raise ChaosSetupError(f"No private PostgreSQL and Valkey run in {data}.")
        database = settings.DATABASES["default"]
        if str(database.get("PORT")) != str(postgres.port) or database.get("HOST") not in (
            "127.0.0.1",
            "localhost",
        ):
            raise ChaosSetupError("DATABASE_URL is not the private cluster's: refusing to inject faults.")
        # Restarts must come back on the same ports (the app's URLs name them).
        postgres.first_port, valkey.first_port = postgres.port, valkey.port
        return cls(data=data, postgres=postgres, valkey=valkey)

    # --- the app --------------------------------------------------------------------------------------
    def app_environment(self) -> dict[str, str]:
        return {
            **os.environ,
            "META_GRAPH_URL": self.graph.url,
            "META_PAGE_ACCESS_TOKEN": GRAPH_PAGE_TOKEN,
            "WORKER_STALLED_AFTER_S": str(WORKER_STALLED_AFTER_S),
            # A send cut off by a killed worker is retried when its lease ends: seconds, not a minute.
            "DELIVERY_TIMEOUT_S": "5",
            "DELIVERY_LEASE_S": "10",
            "PROMETHEUS_MULTIPROC_DIR": str(self.data / "prometheus"),
        }

    def start(self) -> None:
        (self.data / "prometheus").mkdir(exist_ok=True)
        self.graph.start()
        web_port = find_free_port(38000)
        gunicorn = [sys.executable, "-m", "gunicorn", "converzia.wsgi", "--config"]
        gunicorn += ["python:converzia.gunicorn_conf", "--bind", f"127.0.0.1:{web_port}"]
        gunicorn += ["--workers", "2", "--no-control-socket"]
        # Behind nginx, the client is the one address nginx forwards (deploy/README.md).
        environment = {**self.app_environment(), "NUM_PROXIES": "1" if nginx_binary() else "0"}
        self.web = AppProcess("gunicorn", gunicorn, environment, self.data / "gunicorn.log").start()
        self.app_url = self.web_url = f"http://127.0.0.1:{web_port}"
        for _ in range(2):
            self.start_worker()
        self._wait_http(f"{self.app_url}/api/health/live", self.web)
        if nginx_binary():
            try:
                self.nginx = LocalNginx(upstream=f"127.0.0.1:{web_port}").start()
                self.nginx.wait_upstream()
            except NginxError as exc:
                raise ChaosSetupError(str(exc)) from None
            self.web_url = self.nginx.url

    def start_receiver(self, *, delay_ms: int) -> str:
        """A tenant's webhook receiver answering after `delay_ms`; returns its URL."""
        port = find_free_port(38766)
        receiver = AppProcess(
            f"receiver-{port}",
            [
                sys.executable,
                "-m",
                "deliveries.measure.receiver",
                "--port",
                str(port),
                "--delay-ms",
                str(delay_ms),
            ],
            dict(os.environ),
            self.data / f"receiver-{port}.log",
        ).start()
        self.receivers.append(receiver)
        url = f"http://127.0.0.1:{port}"
        self._wait_http(f"{url}/stats", receiver)
        return url

    def start_worker(self) -> AppProcess:
        index = self._worker_count
        self._worker_count += 1
        worker = AppProcess(
            f"worker-{index}",
            [sys.executable, str(MANAGE_PY), "run_worker", "--concurrency", "4", "--name", f"chaos-{index}"],
            {**self.app_environment(), "PGAPPNAME": f"chaos-worker-{index}"},
            self.data / f"worker-{index}.log",
        ).start()
        self.workers.append(worker)
        return worker

    def live_workers(self) -> list[AppProcess]:
        return [worker for worker in self.workers if worker.alive()]

    def stop(self) -> None:
        if self.nginx is not None:
            self.nginx.stop()
        for process in [*self.workers, self.web, *self.receivers]:
            if process is not None:
                process.stop()
        self.graph.stop()

    @staticmethod
    def _wait_http(url: str, process: AppProcess | None) -> None:
        deadline = time.monotonic() + PROCESS_START_TIMEOUT_S
        while time.monotonic() < deadline:
            if process is not None and not process.alive():
                raise ChaosSetupError(f"{process.name} exited during start:\n{process.log_tail()}")
            try:
                with urllib.request.urlopen(url, timeout=2):
                    return
            except urllib.error.HTTPError:
                return
            except OSError:
                time.sleep(0.2)
        raise ChaosSetupError(f"{url} did not answer within {PROCESS_START_TIMEOUT_S:.0f} s.")

    # --- the faults -------------------------------------------------------------------------------------
    def postgres_stop(self) -> None:
        self.postgres.stop()

    def postgres_start(self) -> None:
        self.postgres.start()
        if self.postgres.port != self.postgres.first_port:
            raise ChaosSetupError(
                f"PostgreSQL came back on {self.postgres.port}, not {self.postgres.first_port}."
            )

    def valkey_stop(self) -> None:
        self.valkey.stop()

    def valkey_start(self) -> None:
        self.valkey.start()
        if self.valkey.port != self.valkey.first_port:
            raise ChaosSetupError(f"Valkey came back on {self.valkey.port}, not {self.valkey.first_port}.")

    def valkey_freeze(self) -> None:
        assert self.valkey.pid is not None
        os.kill(self.valkey.pid, signal.SIGSTOP)

    def valkey_thaw(self) -> None:
        assert self.valkey.pid is not None
        os.kill(self.valkey.pid, signal.SIGCONT)
