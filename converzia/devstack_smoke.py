"""CI smoke test of `make run` on the embedded path: it serves, stops on a signal, leaves nothing behind.

    python -m converzia.devstack_smoke [--path /api/health/live] [--timeout 180]

Two runs with DATABASE_URL and REDIS_URL unset, on a fresh data directory (.data/ci-smoke):
1. initialises PostgreSQL, migrates, seeds (when seed_demo exists), must answer 200 on `--path`,
   and is stopped by SIGINT to its whole process group, which is what Ctrl-C in a terminal does;
2. must reuse that data (no initdb, no seeding, no migrate), answer 200 again, take a signed Meta
   test lead (`make test-lead`) through the worker and the Graph stand-in into the demo tenant's
   portal list, and is stopped by SIGTERM to make alone (make forwards it).
After each run every process it started (snapshotted while it served) must be gone and its ports
closed. Exits non-zero, with the run's log, on the first failure.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import psutil

from converzia.devstack import HEALTH_PATH, REPO_ROOT, SEED_ARGUMENTS, STATE_FILE, read_state
from converzia.devstack_servers import log_tail, say

SMOKE_DATA_DIR = REPO_ROOT / ".data" / "ci-smoke"
STOP_TIMEOUT_S = 90.0
TEST_LEAD_TIMEOUT_S = 60.0
SERVING_GRACE_S = 30.0


class SmokeFailure(RuntimeError):
    pass


@dataclass
class RunResult:
    output: str
    seconds_to_ready: float
    seconds_to_stop: float


def smoke_environment(data: Path) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if key not in {"DATABASE_URL", "REDIS_URL"}}
    env.pop("DJANGO_SETTINGS_MODULE", None)
    env["CONVERZIA_DATA_DIR"] = str(data)
    return env


def http_status(url: str) -> int | None:
    try:
        with urllib.request.urlopen(url, timeout=3) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code
    except (urllib.error.URLError, OSError):
        return None


def port_accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def snapshot(root_pid: int, extra_pids: list[int]) -> dict[int, tuple[str, float]]:
    """pid -> (name, start time) for the run's whole process tree; the start time guards pid reuse."""
    processes: dict[int, tuple[str, float]] = {}
    candidates = []
    try:
        root = psutil.Process(root_pid)
        candidates = [root, *root.children(recursive=True)]
    except psutil.Error:
        pass
    for pid in extra_pids:
        try:
            candidates.append(psutil.Process(pid))
        except psutil.Error:
            continue
    for process in candidates:
        try:
            processes[process.pid] = (
                " ".join(process.cmdline()[:3]) or process.name(),
                process.create_time(),
            )
        except psutil.Error:
            continue
    return processes


def survivors(processes: dict[int, tuple[str, float]]) -> list[str]:
    alive = []
    for pid, (name, started) in processes.items():
        try:
            process = psutil.Process(pid)
            if process.create_time() == started and process.status() != psutil.STATUS_ZOMBIE:
                alive.append(f"{pid} {name}")
        except psutil.Error:
            continue
    return alive


def send_test_lead(label: str, data: Path) -> None:
    """`make test-lead` against the serving stack: a signed Meta lead must be fetched from the Graph
    stand-in, routed, and listed by the demo tenant's GET /api/portal/leads within its 10 s wait."""
    started = time.monotonic()
    result = subprocess.run(
        ["make", "--no-print-directory", "test-lead"],
        cwd=REPO_ROOT,
        env=smoke_environment(data),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=TEST_LEAD_TIMEOUT_S,
        check=False,
    )
    if result.returncode != 0 or "the portal lists them" not in result.stdout:
        raise SmokeFailure(
            f"{label}: make test-lead failed (exit {result.returncode}):\n{result.stdout}{result.stderr}"
        )
    say(f"{label}: make test-lead: the lead is in GET /api/portal/leads ({time.monotonic() - started:.1f} s)")


def smoke_run(
    *,
    label: str,
    data: Path,
    path: str,
    timeout_s: float,
    stop_signal: signal.Signals,
    to_group: bool,
    test_lead: bool = False,
) -> RunResult:
    log_path = data.parent / f"ci-smoke-{label}.log"
    say(f"{label}: make run (log {log_path})")
    started = time.monotonic()
    with log_path.open("wb") as log:
        make = subprocess.Popen(
            ["make", "--no-print-directory", "run"],
            cwd=REPO_ROOT,
            env=smoke_environment(data),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = started + timeout_s
        state = None
        status = None
        while time.monotonic() < deadline:
            if make.poll() is not None:
                raise SmokeFailure(f"make run exited early with status {make.returncode}")
            if state is None:
                state = read_state(data / STATE_FILE)
                if state is not None:
                    # The state file appears once the stack serves: a wrong answer is not a slow start.
                    deadline = min(deadline, time.monotonic() + SERVING_GRACE_S)
            if state is not None:
                status = http_status(f"{state['web_url']}{path}")
                if status == 200:
                    break
            time.sleep(0.5)
        else:
            raise SmokeFailure(
                f"no 200 from GET {path} (last status {status}, waited {time.monotonic() - started:.0f} s)"
            )
        ready = time.monotonic() - started
        say(f"{label}: GET {state['web_url']}{path} -> 200 after {ready:.1f} s")
        if test_lead:
            send_test_lead(label, data)

        processes = snapshot(make.pid, list(state["processes"].values()))
        urls = [state.get(key) for key in ("web_url", "database_url", "redis_url", "graph_url")]
        ports = [urlsplit(url).port for url in urls if url]
        say(f"{label}: {len(processes)} processes running; sending {stop_signal.name}")
        stop_started = time.monotonic()
        if to_group:
            os.killpg(make.pid, stop_signal)
        else:
            make.send_signal(stop_signal)
        try:
            make.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired as error:
            raise SmokeFailure(
                f"make run still running {STOP_TIMEOUT_S:.0f} s after {stop_signal.name}"
            ) from error
        stopped = time.monotonic() - stop_started
    except BaseException:
        _kill_group(make)
        output = log_path.read_text(errors="replace").splitlines()
        sys.stdout.write(f"--- devstack lines of {log_path} ---\n")
        sys.stdout.write("".join(f"{line}\n" for line in output if line.startswith("[devstack]")))
        sys.stdout.write(f"--- last lines of {log_path} ---\n{log_tail(log_path, 20)}\n")
        raise

    output = log_path.read_text(errors="replace")
    if "[devstack] all processes stopped" not in output:
        raise SmokeFailure(f"{label}: the supervisor did not report a clean stop:\n{log_tail(log_path, 40)}")
    left = survivors(processes)
    if left:
        raise SmokeFailure(f"{label}: still running after the stop: {left}")
    open_ports = [port for port in ports if port and port_accepts(port)]
    if open_ports:
        raise SmokeFailure(f"{label}: ports still accepting connections: {open_ports}")
    say(f"{label}: stopped in {stopped:.1f} s; all {len(processes)} processes gone, ports {ports} closed")
    return RunResult(output=output, seconds_to_ready=ready, seconds_to_stop=stopped)


def _kill_group(make: subprocess.Popen) -> None:
    """After a failure: do not leave the run behind (its servers follow through their parent-death signal)."""
    if make.poll() is None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(make.pid, signal.SIGKILL)
        make.wait(timeout=10)


def check_reuse(first: RunResult, second: RunResult) -> None:
    if "PostgreSQL: initialising a new cluster" not in first.output:
        raise SmokeFailure("first run: expected a fresh initdb in the empty data directory")
    if "PostgreSQL: initialising a new cluster" in second.output:
        raise SmokeFailure("second run: ran initdb again instead of reusing the cluster")
    if "PostgreSQL: reusing the cluster" not in second.output:
        raise SmokeFailure("second run: did not report reusing the cluster")
    if "migrate: nothing to apply" not in second.output:
        raise SmokeFailure("second run: ran migrate although no migration changed")
    seeding = f"[devstack] demo data: manage.py {' '.join(SEED_ARGUMENTS)}"
    if seeding in first.output:
        if seeding in second.output:
            raise SmokeFailure("second run: seeded the demo data again")
        if "demo data: already loaded" not in second.output:
            raise SmokeFailure("second run: did not report the demo data as already loaded")
        say("reuse: cluster and demo data reused, no initdb, no second seed")
    else:
        say("reuse: cluster reused, no initdb (seed_demo does not exist yet, so no seeding to check)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m converzia.devstack_smoke", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--path", default=HEALTH_PATH, help="path that must answer 200 (default %(default)s)")
    parser.add_argument("--timeout", type=float, default=180.0, help="seconds to wait for it (first run)")
    arguments = parser.parse_args(argv)

    if SMOKE_DATA_DIR.exists():
        shutil.rmtree(SMOKE_DATA_DIR)
    SMOKE_DATA_DIR.parent.mkdir(exist_ok=True)
    try:
        first = smoke_run(
            label="first",
            data=SMOKE_DATA_DIR,
            path=arguments.path,
            timeout_s=arguments.timeout,
            stop_signal=signal.SIGINT,
            to_group=True,
        )
        second = smoke_run(
            label="second",
            data=SMOKE_DATA_DIR,
            path=arguments.path,
            timeout_s=arguments.timeout,
            stop_signal=signal.SIGTERM,
            to_group=False,
            test_lead=True,
        )
        check_reuse(first, second)
    except SmokeFailure as failure:
        say(f"SMOKE FAILED: {failure} (data kept in {SMOKE_DATA_DIR})")
        return 1
    shutil.rmtree(SMOKE_DATA_DIR, ignore_errors=True)
    for label, result in (("first", first), ("second", second)):
        ready, stop = result.seconds_to_ready, result.seconds_to_stop
        say(f"{label} run: ready after {ready:.1f} s, stopped in {stop:.1f} s")
    say("smoke passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
