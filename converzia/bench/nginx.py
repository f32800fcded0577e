"""Run deploy/nginx/converzia.conf on local ports, in front of a server on this machine.

`LocalNginx(upstream="127.0.0.1:8000", port=8080).start()` renders the production file with the
lines marked `# render: NAME` replaced (the upstream server, the listen address, the access log),
wraps it in a minimal main configuration, and starts `nginx -g 'daemon off;'` as a child process
with everything private to a temporary directory: the configuration, pid file, temp paths and logs.
It never reads or writes /etc/nginx and never touches a system nginx. Tests and the slow-client
measurement use it; by hand:

    python -m converzia.bench.nginx --upstream 127.0.0.1:8000 --port 8080   # Ctrl-C stops it
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
TEMPLATE = REPO_ROOT / "deploy" / "nginx" / "converzia.conf"
RENDER_MARKER = re.compile(r"^(?P<indent>\s*).*#\s*render:\s*(?P<name>[a-z_]+)\s*$")
TEMP_PATHS = ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
START_TIMEOUT_S = 15.0


class NginxError(RuntimeError):
    pass


def nginx_binary() -> str | None:
    """The nginx executable (PATH, then Debian's /usr/sbin, which a non-root PATH may lack), or None."""
    return shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin:/usr/local/sbin:/sbin")


def render_server_config(template: str, replacements: dict[str, str]) -> str:
    """The template with every `# render: NAME` line replaced by `replacements[NAME]` (same indent).

    Every marker must have a replacement and every replacement a marker, so the template and this
    renderer cannot drift apart unnoticed.
    """
    seen: set[str] = set()
    lines = []
    for line in template.splitlines():
        match = RENDER_MARKER.match(line)
        if match is None:
            lines.append(line)
            continue
        name = match["name"]
        if name not in replacements:
            raise NginxError(f"{TEMPLATE.name}: no replacement for the `render: {name}` line.")
        seen.add(name)
        lines.append(f"{match['indent']}{replacements[name]}")
    missing = set(replacements) - seen
    if missing:
        raise NginxError(f"{TEMPLATE.name} has no `render:` line for {', '.join(sorted(missing))}.")
    return "\n".join(lines) + "\n"


def main_config(directory: Path, server_config: Path, *, worker_processes: int) -> str:
    """The minimal main file around the server block; every path inside `directory`."""
    temp_paths = "\n".join(f"    {name}_temp_path {directory / 'temp' / name};" for name in TEMP_PATHS)
    return f"""# Rendered by converzia/bench/nginx.py for a local run; not for production.
worker_processes {worker_processes};
pid {directory / "nginx.pid"};
error_log {directory / "error.log"} warn;

events {{
    worker_connections 4096;
}}

http {{
{temp_paths}
    default_type application/octet-stream;
    include {server_config};
}}
"""


def port_is_free(port: int) -> bool:
    """Whether nginx could listen there (it sets SO_REUSEADDR: a port in TIME_WAIT is free)."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class LocalNginx:
    """deploy/nginx/converzia.conf on 127.0.0.1:`port`, proxying to `upstream` (host:port or unix:path)."""

    def __init__(
        self,
        *,
        upstream: str,
        port: int | None = None,
        worker_processes: int = 1,
    ) -> None:
        self.binary = nginx_binary()
        if self.binary is None:
            raise NginxError("nginx is not installed (Debian: apt-get install -y nginx).")
        self.upstream = upstream
        self.port = port or free_port()
        # Its own directory under the system temp dir: when run as root, nginx's workers run as
        # `nobody` and must be able to reach it (a pytest tmp_path sits under a 0700 directory).
        self.directory = Path(tempfile.mkdtemp(prefix="converzia-nginx-"))
        self.worker_processes = worker_processes
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def error_log(self) -> Path:
        return self.directory / "error.log"

    @property
    def access_log(self) -> Path:
        return self.directory / "access.log"

    def render(self) -> Path:
        """Write the configuration; return the main file."""
        (self.directory / "temp").mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            self.directory.chmod(0o755)
        server = render_server_config(
            TEMPLATE.read_text(),
            {
                "upstream": f"server {self.upstream} max_fails=0;",
                "listen": f"listen 127.0.0.1:{self.port};",
                "access_log": f"access_log {self.access_log} converzia;",
            },
        )
        server_path = self.directory / "converzia.conf"
        server_path.write_text(server)
        main = self.directory / "nginx.conf"
        main.write_text(main_config(self.directory, server_path, worker_processes=self.worker_processes))
        return main

    def _argv(self, main: Path, *extra: str) -> list[str]:
        assert self.binary is not None
        return [self.binary, "-p", str(self.directory), "-c", str(main), "-e", str(self.error_log), *extra]

    def check(self) -> None:
        """`nginx -t` on the rendered files."""
        main = self.render()
        result = subprocess.run(self._argv(main, "-t"), capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise NginxError(f"nginx -t failed:\n{result.stderr}")

    def start(self) -> LocalNginx:
        try:
            if not port_is_free(self.port):
                raise NginxError(f"Port {self.port} on 127.0.0.1 is taken; pick another.")
            main = self.render()
            with (self.directory / "nginx.out").open("wb") as log:
                self.process = subprocess.Popen(
                    self._argv(main, "-g", "daemon off;"),
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    start_new_session=True,
                )
            self._wait_listening()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_listening(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise NginxError(f"nginx exited during start:\n{self.log_tail()}")
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), 0.5):
                return
            time.sleep(0.05)
        raise NginxError(f"nginx did not listen on {self.port} within {START_TIMEOUT_S:g} s.")

    def wait_upstream(self, path: str = "/api/health/live", timeout_s: float = 60.0) -> None:
        """Until the app behind answers through nginx (nginx answers 503 while it is down)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"{self.url}{path}", timeout=2):
                    return
            except (urllib.error.URLError, OSError):
                time.sleep(0.2)
        raise NginxError(f"{self.url}{path} did not answer through nginx within {timeout_s:g} s.")

    def log_tail(self, chars: int = 2000) -> str:
        texts = []
        for path in (self.directory / "nginx.out", self.error_log):
            with contextlib.suppress(OSError):
                texts.append(path.read_text(errors="replace")[-chars:])
        return "\n".join(texts)

    def stop(self) -> None:
        """Fast shutdown (SIGTERM to our master only), then the temporary directory goes."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)
        shutil.rmtree(self.directory, ignore_errors=True)

    def __enter__(self) -> LocalNginx:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--upstream", required=True, help="The app: 127.0.0.1:8000 or unix:/path/to.sock")
    parser.add_argument("--port", type=int, default=8080, help="Where nginx listens on 127.0.0.1.")
    parser.add_argument("--workers", type=int, default=1, help="nginx worker processes.")
    options = parser.parse_args(argv)
    # SIGTERM stops it like Ctrl-C does: nginx runs in its own session and would outlive us otherwise.
    signal.signal(signal.SIGTERM, lambda _signum, _frame: sys.exit(0))
    try:
        nginx = LocalNginx(upstream=options.upstream, port=options.port, worker_processes=options.workers)
        nginx.start()
    except NginxError as exc:
        sys.stderr.write(f"{exc}\n")
        return 1
    sys.stdout.write(
        f"nginx on {nginx.url} → {options.upstream} (files in {nginx.directory}); Ctrl-C stops\n"
    )
    sys.stdout.flush()
    try:
        assert nginx.process is not None
        nginx.process.wait()
    except (KeyboardInterrupt, SystemExit):
        pass
    finally:
        nginx.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
