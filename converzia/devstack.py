"""Developer and CI commands behind the Makefile: start what is missing, run, stop what was started.

    python -m converzia.devstack run                 # make run: servers, migrate, demo data, web, worker
    python -m converzia.devstack test [PYTEST ARGS]  # make test: the suite against PostgreSQL and Redis
    python -m converzia.devstack exec -- CMD ...     # CMD with the same servers as the tests
    python -m converzia.devstack test-env            # which servers the tests would use, as exports
    python -m converzia.devstack url                 # the running `make run`'s address (make load)
    python -m converzia.devstack test-lead [ARGS]    # make test-lead: a signed Meta lead into `make run`
    python -m converzia.devstack reset               # stop leftovers and delete the data directory

`run` uses DATABASE_URL / REDIS_URL when set and embedded servers (data in .data/) otherwise. The
tests use DATABASE_URL / REDIS_URL when set, else the local servers on their default ports when they
answer, else embedded servers started for the run and stopped after it. See docs/development.md.

This module runs before Django is configured and must not import it.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from converzia.devstack_servers import (
    LOOPBACK,
    PRELOADED_LIBRARY,
    EmbeddedPostgres,
    EmbeddedValkey,
    ServerError,
    die_with_parent,
    ensure_database,
    find_free_port,
    postgres_preloads,
    process_is_alive,
    redis_ping,
    say,
    stop_process,
)
from converzia.settings.dev_defaults import DEV_META_APP_SECRET, DEV_META_WEBHOOK_VERIFY_TOKEN

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DATA_DIR = REPO_ROOT / ".data"
STATE_FILE = "devstack.json"

LOCAL_DATABASE_URL = "postgres://postgres@127.0.0.1:5432/converzia"
LOCAL_REDIS_URL = "redis://127.0.0.1:6379/0"
APP_DATABASE = "converzia"
RUN_SETTINGS = "converzia.settings.local"
# Serves /static/ (admin, drf-spectacular-sidecar) from the app directories, as runserver does.
WSGI_APPLICATION = "converzia.devstack_wsgi:application"
DEFAULT_WEB_PORT = 8000
DEFAULT_GRAPH_PORT = 18765
# The running stack's manage.py environment (`make test-lead`), beside STATE_FILE; owner-only.
RUN_ENVIRONMENT_FILE = "devstack-env.json"
HEALTH_PATH = "/api/health/live"
# gunicorn hooks for Prometheus multiprocess mode; the directory the web and worker processes share.
GUNICORN_CONFIG = "python:converzia.gunicorn_conf"
PROMETHEUS_DIR = "prometheus"
SEED_ARGUMENTS = ["seed_demo", "--if-empty", "--tenants", "5", "--leads", "2000", "--json"]
CHILD_STOP_TIMEOUT_S = 15.0
# `make run` starts the job worker again when it exits (a crash, a kill, WORKER_GIVE_UP_AFTER_S), as
# systemd does in production: after 1 s, doubling up to 30 s while it keeps exiting within a minute.
RESTART_FIRST_WAIT_S = 1.0
RESTART_MAX_WAIT_S = 30.0
RESTART_HEALTHY_AFTER_S = 60.0
# The Meta settings `make run` gives the app when the environment has none: the app secret and verify
# token also live in converzia/settings/local.py, so `manage.py send_test_lead` signs with the same
# one; the page token is what the local Graph stand-in expects to see.
DEV_META_PAGE_ACCESS_TOKEN = "converzia-dev-page-token"
GRAPH_STUB_MODULE = "leads.measure.graph_stub"
# Packages whose migrations the app applies besides its own (INSTALLED_APPS).
MIGRATING_PACKAGES = ("django", "procrastinate")

ENVIRONMENT = "environment"
LOCAL = "local server"
EMBEDDED = "embedded"


class StackError(RuntimeError):
    """A step of the stack failed; the message says which and why."""


class StopRequested(Exception):
    """SIGINT or SIGTERM arrived: stop everything that was started, then exit."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


# --- where things live and which servers to use (pure) ----------------------------------------


def data_directory(environ: Mapping[str, str]) -> Path:
    """`.data/` in the checkout, or CONVERZIA_DATA_DIR (the CI smoke test uses its own)."""
    configured = environ.get("CONVERZIA_DATA_DIR", "")
    return Path(configured).resolve() if configured else DEFAULT_DATA_DIR


@dataclass(frozen=True)
class Service:
    """Where one server comes from: a URL to use as is, or None for "start the embedded one".

    `note` says why, when the choice is not the obvious one (a local server passed over, say).
    """

    url: str | None
    source: str
    note: str = ""


@dataclass(frozen=True)
class ServicePlan:
    database: Service
    redis: Service


def _from_environment(environ: Mapping[str, str], name: str) -> Service:
    # An empty variable counts as unset: `DATABASE_URL= make run` is how one forces the embedded path.
    value = environ.get(name, "").strip()
    return Service(url=value, source=ENVIRONMENT) if value else Service(url=None, source=EMBEDDED)


def plan_for_run(environ: Mapping[str, str]) -> ServicePlan:
    """`make run`: the environment's servers, embedded ones for whatever is unset."""
    return ServicePlan(
        database=_from_environment(environ, "DATABASE_URL"), redis=_from_environment(environ, "REDIS_URL")
    )


def plan_for_tests(
    environ: Mapping[str, str],
    *,
    local_database_url: str | None = None,
    local_redis_url: str | None = None,
    require_preload: bool = True,
) -> ServicePlan:
    """`make test`: the environment's servers, else the local ones when they answer, else embedded.

    "Local" is 127.0.0.1:5432 / :6379 unless CONVERZIA_LOCAL_DATABASE_URL / CONVERZIA_LOCAL_REDIS_URL
    say otherwise (a machine whose servers use other ports, or a check of the embedded fallback).
    With `require_preload` (the test suite), a local PostgreSQL that does not preload
    pg_stat_statements is passed over for the embedded one, which does: a stock server must not fail
    or skip the tests of `slow_queries` and the admin's Database page.
    """
    local_database_url = (
        local_database_url or environ.get("CONVERZIA_LOCAL_DATABASE_URL") or LOCAL_DATABASE_URL
    )
    local_redis_url = local_redis_url or environ.get("CONVERZIA_LOCAL_REDIS_URL") or LOCAL_REDIS_URL
    database = _from_environment(environ, "DATABASE_URL")
    if database.url is None and postgres_answers(local_database_url):
        database = Service(url=local_database_url, source=LOCAL)
        if require_preload and not _preloads(local_database_url):
            database = Service(
                url=None,
                source=EMBEDDED,
                note=(
                    f"{_server_address(local_database_url)} answers but does not preload {PRELOADED_LIBRARY} "
                    f"(shared_preload_libraries), which the slow-query tests need; using the embedded "
                    f"PostgreSQL, which preloads it"
                ),
            )
    elif database.url is not None and require_preload and postgres_answers(database.url):
        if not _preloads(database.url):
            database = Service(
                url=database.url,
                source=ENVIRONMENT,
                note=(
                    f"DATABASE_URL's server does not preload {PRELOADED_LIBRARY}: the tests that read it "
                    f"are skipped (unset DATABASE_URL to run them on the embedded PostgreSQL)"
                ),
            )
    redis = _from_environment(environ, "REDIS_URL")
    if redis.url is None and redis_answers(local_redis_url):
        redis = Service(url=local_redis_url, source=LOCAL)
    return ServicePlan(database=database, redis=redis)


def _preloads(url: str) -> bool:
    import psycopg

    try:
        return postgres_preloads(with_database(url, "postgres"))
    except psycopg.Error:
        return False


def _server_address(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.hostname or LOOPBACK}:{parts.port or 5432}"


def with_database(url: str, name: str) -> str:
    """The same server URL pointing at database `name` (query string kept)."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{name}"))


def database_name(url: str) -> str:
    return urlsplit(url).path.lstrip("/")


def postgres_answers(url: str, *, timeout_s: int = 2) -> bool:
    """True when the PostgreSQL server behind `url` accepts a connection (to its `postgres` database)."""
    import psycopg

    try:
        with psycopg.connect(with_database(url, "postgres"), connect_timeout=timeout_s) as connection:
            connection.execute("SELECT 1")
    except psycopg.Error:
        return False
    return True


def redis_answers(url: str) -> bool:
    parts = urlsplit(url)
    return redis_ping(parts.hostname or LOOPBACK, parts.port or 6379)


def redact(url: str) -> str:
    """The URL without its password, for printing."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


def demo_marker_name(database: Service) -> str:
    """One "already seeded" marker per database: the embedded one has a single name whatever its port."""
    if database.source == EMBEDDED or database.url is None:
        return "demo-embedded.json"
    return f"demo-{hashlib.sha256(database.url.encode()).hexdigest()[:12]}.json"


def parse_seed_output(stdout: str) -> dict[str, Any] | None:
    """The credentials object `seed_demo --json` prints, even after log lines; None when there is none."""
    lines = stdout.splitlines()
    candidates = [stdout]
    candidates += [
        "\n".join(lines[index:]) for index, line in enumerate(lines) if line.lstrip().startswith("{")
    ]
    candidates += [line for line in reversed(lines) if line.lstrip().startswith("{")]
    for candidate in candidates:
        try:
            parsed = json.loads(candidate)
        except ValueError:
            continue
        if isinstance(parsed, dict) and ("staff" in parsed or "tenants" in parsed):
            return parsed
    return None


def service_environment(
    base: Mapping[str, str], *, database_url: str, redis_url: str, settings_module: str | None
) -> dict[str, str]:
    """The environment for the app's processes: the chosen servers, unbuffered output."""
    environment = dict(base)
    environment["DATABASE_URL"] = database_url
    environment["REDIS_URL"] = redis_url
    environment["PYTHONUNBUFFERED"] = "1"
    if settings_module:
        environment.setdefault("DJANGO_SETTINGS_MODULE", settings_module)
    return environment


def banner(
    *,
    web_url: str,
    demo: dict[str, Any] | None,
    demo_file: Path | None,
    database: str,
    redis: str,
    worker: str,
    graph: str | None = None,
    meta_secret: str = "",
    meta_verify_token: str = "",
) -> list[str]:
    """What `make run` prints once everything answers."""
    lines = [
        "",
        "=" * 78,
        f"Converzia is running at {web_url}",
        f"  API docs      {web_url}/api/docs/",
        f"  Admin         {web_url}/admin/",
        f"  Health        {web_url}{HEALTH_PATH}",
        f"  Readiness     {web_url}/api/health",
        f"  Metrics       {web_url}/metrics",
        f"  Database      {database}",
        f"  Redis         {redis}",
        f"  Worker        {worker}",
        f"  Graph API     {f'{graph} (local stand-in for Meta)' if graph else 'META_GRAPH_URL (env)'}",
        f"  Meta webhook  POST {web_url}/api/webhooks/meta-leads",
        f"                app secret {meta_secret!r}, verify token {meta_verify_token!r}",
        "  Test lead     make test-lead   (a signed Meta lead: fetched, routed, listed in the portal)",
    ]
    staff = (demo or {}).get("staff") or {}
    tenants = (demo or {}).get("tenants") or []
    if staff:
        lines.append(f"  Admin login   {staff.get('email')} / {staff.get('password')}")
    else:
        lines.append("  Admin login   (no demo data) create one: .venv/bin/python manage.py createsuperuser")
    if tenants:
        tenant = tenants[0]
        owner = tenant.get("owner") or {}
        lines.append(
            f"  Tenant        {tenant.get('name')} (slug {tenant.get('slug')}, id {tenant.get('id')})"
        )
        lines.append(f"  Owner login   {owner.get('email')} / {owner.get('password')}")
        lines.append(f"  Tenant token  {owner.get('api_token')}")
        lines.append(
            f"  Try           curl -H 'Authorization: Bearer {owner.get('api_token')}' "
            f"-H 'X-Tenant-ID: {tenant.get('id')}' {web_url}/api/portal/offers"
        )
        lines.append(
            f"                curl -H 'Authorization: Bearer {owner.get('api_token')}' "
            f"-H 'X-Tenant-ID: {tenant.get('id')}' {web_url}/api/portal/leads"
        )
    if demo_file is not None and demo:
        lines.append(f"  All demo credentials: {demo_file}")
    lines += ["Press Ctrl-C to stop everything.", "=" * 78, ""]
    return lines


# --- the process stack ------------------------------------------------------------------------


@dataclass
class RestartPolicy:
    """How `Stack.check_children` brings back a child that exited: the same command, after a wait
    that doubles while the child keeps dying within `healthy_after_s` of its start."""

    argv: list[str]
    env: dict[str, str]
    own_session: bool
    first_wait_s: float = RESTART_FIRST_WAIT_S
    max_wait_s: float = RESTART_MAX_WAIT_S
    healthy_after_s: float = RESTART_HEALTHY_AFTER_S
    started_at: float = field(default_factory=time.monotonic)
    restart_at: float | None = None
    wait_s: float = 0.0
    count: int = 0

    def next_wait(self, *, ran_s: float) -> float:
        if self.wait_s == 0.0 or ran_s >= self.healthy_after_s:
            return self.first_wait_s
        return min(self.wait_s * 2, self.max_wait_s)


class Stack:
    """The servers and app processes one devstack command started (or adopted), stopped in reverse."""

    def __init__(self, data: Path, *, stop_adopted: bool) -> None:
        self.data = data
        # `run` owns leftovers of a killed run; `test` borrows a running `make run`'s servers.
        self.stop_adopted = stop_adopted
        self.postgres: EmbeddedPostgres | None = None
        self.valkey: EmbeddedValkey | None = None
        self.children: dict[str, subprocess.Popen] = {}
        self.restarts: dict[str, RestartPolicy] = {}

    def database_url(self, service: Service, *, database: str) -> str:
        if service.note:
            say(f"PostgreSQL: {service.note}")
        if service.url is not None:
            say(f"PostgreSQL: {redact(service.url)} ({service.source})")
            return service.url
        self.postgres = EmbeddedPostgres(self.data)
        self.postgres.start()
        return self.postgres.url(database)

    def redis_url(self, service: Service) -> str:
        if service.url is not None:
            say(f"Redis: {redact(service.url)} ({service.source})")
            return service.url
        self.valkey = EmbeddedValkey(self.data)
        self.valkey.start()
        return self.valkey.url()

    def spawn(
        self, name: str, argv: Sequence[str], env: Mapping[str, str], *, own_session: bool
    ) -> subprocess.Popen:
        """Start an app process; `own_session` keeps a terminal Ctrl-C away from it (we stop it in order)."""
        process = subprocess.Popen(
            list(argv),
            env=dict(env),
            cwd=REPO_ROOT,
            stdin=subprocess.DEVNULL,
            start_new_session=own_session,
            preexec_fn=die_with_parent(signal.SIGTERM),
        )
        self.children[name] = process
        return process

    def restart_when_exits(
        self,
        name: str,
        argv: Sequence[str],
        env: Mapping[str, str],
        *,
        own_session: bool,
        first_wait_s: float = RESTART_FIRST_WAIT_S,
        max_wait_s: float = RESTART_MAX_WAIT_S,
        healthy_after_s: float = RESTART_HEALTHY_AFTER_S,
    ) -> None:
        """Have `check_children` start the child `name` again (same command) whenever it exits."""
        self.restarts[name] = RestartPolicy(
            argv=list(argv),
            env=dict(env),
            own_session=own_session,
            first_wait_s=first_wait_s,
            max_wait_s=max_wait_s,
            healthy_after_s=healthy_after_s,
        )

    def check_children(self, *, now: float | None = None) -> bool:
        """Raise StackError when a child exited, except one registered with `restart_when_exits` (the
        job worker): that one is started again after a wait, RESTART_FIRST_WAIT_S doubling up to
        RESTART_MAX_WAIT_S while it keeps dying young. True when a child was started again (the
        caller records the new pid)."""
        now = time.monotonic() if now is None else now
        restarted = False
        for name, process in list(self.children.items()):
            code = process.poll()
            if code is None:
                continue
            policy = self.restarts.get(name)
            if policy is None:
                raise StackError(f"{name} exited unexpectedly (exit status {code}).")
            if policy.restart_at is None:
                ran_s = now - policy.started_at
                policy.wait_s = policy.next_wait(ran_s=ran_s)
                policy.restart_at = now + policy.wait_s
                say(
                    f"{name} exited (exit status {code}) after {ran_s:.1f} s; "
                    f"restarting it in {policy.wait_s:.1f} s"
                )
            if now >= policy.restart_at:
                started = self.spawn(name, policy.argv, policy.env, own_session=policy.own_session)
                policy.started_at, policy.restart_at = now, None
                policy.count += 1
                say(f"{name} restarted (pid {started.pid}; restart {policy.count})")
                restarted = True
        return restarted

    def pids(self) -> dict[str, int]:
        pids = {name: process.pid for name, process in self.children.items()}
        for server, key in ((self.postgres, "postgres"), (self.valkey, "valkey")):
            if server is not None and server.pid is not None:
                pids[key] = server.pid
        return pids

    def shutdown(self) -> list[str]:
        """Stop app processes (SIGTERM, graceful), then Valkey, then PostgreSQL; returns any problems."""
        problems: list[str] = []
        for name, process in reversed(list(self.children.items())):
            if process.poll() is None:
                say(f"stopping {name} (pid {process.pid})")
            try:
                stop_process(
                    process.pid,
                    popen=process,
                    first=signal.SIGTERM,
                    then=signal.SIGKILL,
                    timeout=CHILD_STOP_TIMEOUT_S,
                )
            except ServerError as error:
                problems.append(f"{name}: {error}")
        self.children.clear()
        for server in (self.valkey, self.postgres):
            if server is None or server.pid is None:
                continue
            if not (server.launched or self.stop_adopted):
                say(f"leaving {server.name} running (pid {server.pid}): this command did not start it")
                continue
            say(f"stopping {server.name} (pid {server.pid})")
            try:
                server.stop()
            except ServerError as error:
                problems.append(f"{server.name}: {error}")
        return problems


def _raise_stop(signum: int, _frame: object) -> None:
    # Shutdown itself must not be interrupted: later signals are ignored (every wait has a timeout).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise StopRequested(signum)


def install_stop_handlers() -> None:
    signal.signal(signal.SIGINT, _raise_stop)
    signal.signal(signal.SIGTERM, _raise_stop)


def manage(*arguments: str) -> list[str]:
    return [sys.executable, str(REPO_ROOT / "manage.py"), *arguments]


def run_step(title: str, argv: Sequence[str], env: Mapping[str, str]) -> None:
    say(f"{title} ...")
    started = time.monotonic()
    result = subprocess.run(list(argv), env=dict(env), cwd=REPO_ROOT, stdin=subprocess.DEVNULL, check=False)
    if result.returncode != 0:
        raise StackError(f"{title} failed (exit status {result.returncode}).")
    say(f"{title}: done in {time.monotonic() - started:.1f} s")


def migrations_fingerprint() -> str:
    """A digest of every migration the app would apply: its own files and the versions of the packages
    that ship the others. Equal digests mean `migrate` has nothing new to read."""
    from importlib import metadata

    digest = hashlib.sha256()
    for path in sorted(REPO_ROOT.glob("*/migrations/*.py")):
        digest.update(str(path.relative_to(REPO_ROOT)).encode())
        digest.update(path.read_bytes())
    for package in MIGRATING_PACKAGES:
        digest.update(f"{package}=={metadata.version(package)}".encode())
    return digest.hexdigest()


def applied_migrations(url: str) -> str | None:
    """What django_migrations holds, in brief (rows and the newest id); None without the table."""
    import psycopg

    try:
        with psycopg.connect(url, connect_timeout=5) as connection:
            row = connection.execute(
                "SELECT count(*), coalesce(max(id), 0) FROM django_migrations"
            ).fetchone()
    except psycopg.Error:
        return None
    return f"{row[0]}:{row[1]}" if row else None


def migrate_when_needed(data: Path, database_url: str, env: Mapping[str, str]) -> None:
    """`migrate` unless nothing changed since the last one this data directory saw on this database.

    A warm start must answer in seconds, and `migrate` with nothing to apply still costs a Django start
    and a read of every migration. The check is the migration code's digest plus django_migrations in
    brief: a new migration file, a package upgrade, or anyone else migrating the database re-runs it.
    """
    marker = data / f"migrated-{hashlib.sha256(database_url.encode()).hexdigest()[:12]}.json"
    wanted = {"code": migrations_fingerprint(), "applied": applied_migrations(database_url)}
    if wanted["applied"] is not None and read_state(marker) == wanted:
        say("migrate: nothing to apply (no migration changed since the last run)")
        return
    run_step("migrate", manage("migrate", "--noinput"), env)
    marker.write_text(json.dumps({**wanted, "applied": applied_migrations(database_url)}) + "\n")


def meta_development_environment(environ: Mapping[str, str], graph_url: str | None) -> dict[str, str]:
    """The Graph settings for the web and worker processes: the local stand-in unless the environment
    points somewhere itself (a real app's Graph URL and token are left alone)."""
    if graph_url is None:
        return {}
    return {
        "META_GRAPH_URL": graph_url,
        "META_PAGE_ACCESS_TOKEN": environ.get("META_PAGE_ACCESS_TOKEN") or DEV_META_PAGE_ACCESS_TOKEN,
    }


def ensure_app_database(url: str) -> None:
    """Create the database named in `url` when its server has none by that name (best effort)."""
    import psycopg

    name = database_name(url)
    if not name:
        return
    try:
        if ensure_database(with_database(url, "postgres"), name):
            say(f"created database {name}")
    except psycopg.Error as error:
        say(f"could not check or create database {name} ({error.__class__.__name__}); continuing")


def load_demo_data(
    data: Path, database: Service, env: Mapping[str, str]
) -> tuple[dict[str, Any] | None, Path | None]:
    """Seed the demo tenants once per database; later runs read the credentials saved the first time.

    The raw API tokens exist only at seed time (the database keeps digests), hence the saved file.
    """
    marker = data / demo_marker_name(database)
    if marker.exists():
        saved = json.loads(marker.read_text())
        say(f"demo data: already loaded (credentials in {marker}); not seeding again")
        return saved.get("credentials"), marker
    say(f"demo data: manage.py {' '.join(SEED_ARGUMENTS)} ...")
    started = time.monotonic()
    result = subprocess.run(
        manage(*SEED_ARGUMENTS),
        env=dict(env),
        cwd=REPO_ROOT,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        text=True,
    )
    if result.returncode != 0:
        sys.stdout.write(result.stdout)
        raise StackError(f"seed_demo failed (exit status {result.returncode}).")
    credentials = parse_seed_output(result.stdout)
    if credentials is None:
        say("demo data: seed_demo printed no credentials (the database already had data?)")
    else:
        say(f"demo data: seeded in {time.monotonic() - started:.1f} s")
    marker.write_text(json.dumps({"credentials": credentials}, indent=2) + "\n")
    marker.chmod(0o600)
    return credentials, marker


def wait_for_http(url: str, *, process: subprocess.Popen, timeout_s: float) -> int:
    """Poll until the server answers anything at `url`; returns the HTTP status."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise StackError(f"gunicorn exited during startup (exit status {process.returncode}).")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                return response.status
        except urllib.error.HTTPError as error:
            return error.code
        except (urllib.error.URLError, OSError):
            time.sleep(0.3)
    raise StackError(f"The web server did not answer {url} within {timeout_s:.0f} s.")


def read_state(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def running_supervisor(data: Path) -> dict[str, Any] | None:
    """The state of a `make run` still alive on this data directory, if any."""
    state = read_state(data / STATE_FILE)
    if state and process_is_alive(state.get("pid")):
        return state
    return None


def command_run(environ: Mapping[str, str]) -> int:
    data = data_directory(environ)
    data.mkdir(parents=True, exist_ok=True)
    other = running_supervisor(data)
    if other is not None:
        say(f"make run is already running (pid {other['pid']}) at {other.get('web_url')}; stop it first.")
        return 1
    stack = Stack(data, stop_adopted=True)
    install_stop_handlers()
    exit_code = 0
    try:
        _run(stack, plan_for_run(environ), environ, data)
    except StopRequested as stop:
        say(f"{stop} received")
    except (StackError, ServerError) as error:
        say(f"error: {error}")
        exit_code = 1
    finally:
        say("stopping everything this command started ...")
        problems = stack.shutdown()
        (data / STATE_FILE).unlink(missing_ok=True)
        for problem in problems:
            say(f"error while stopping: {problem}")
        if problems:
            exit_code = 1
        else:
            say("all processes stopped")
    return exit_code


def _run(stack: Stack, plan: ServicePlan, environ: Mapping[str, str], data: Path) -> None:
    started = time.monotonic()
    database_url = stack.database_url(plan.database, database=APP_DATABASE)
    ensure_app_database(database_url)
    redis_url = stack.redis_url(plan.redis)
    env = service_environment(
        environ, database_url=database_url, redis_url=redis_url, settings_module=RUN_SETTINGS
    )
    # Only the web and job workers write metric files (migrate and the seed keep theirs in memory).
    metrics_dir = env.pop("PROMETHEUS_MULTIPROC_DIR", None) or str(data / PROMETHEUS_DIR)

    migrate_when_needed(data, database_url, env)
    demo, demo_file = load_demo_data(data, plan.database, env)

    graph_url = None
    if not environ.get("META_GRAPH_URL"):
        graph_port = find_free_port(DEFAULT_GRAPH_PORT)
        stack.spawn(
            "graph stand-in",
            [sys.executable, "-m", GRAPH_STUB_MODULE, "--port", str(graph_port)],
            env,
            own_session=True,
        )
        graph_url = f"http://{LOOPBACK}:{graph_port}"

    host = environ.get("HOST", LOOPBACK)
    requested_port = int(environ.get("PORT") or DEFAULT_WEB_PORT)
    port = find_free_port(requested_port, host=host)
    if port != requested_port:
        say(f"port {requested_port} is taken; using {port}")
    web_url = f"http://{LOOPBACK if host in ('0.0.0.0', '::') else host}:{port}"
    # /metrics sums every gunicorn worker and the job worker; gunicorn's on_starting empties the
    # directory, so only processes started after it may write there.
    app_env = {
        **env,
        **meta_development_environment(environ, graph_url),
        "PROMETHEUS_MULTIPROC_DIR": metrics_dir,
    }
    gunicorn = stack.spawn(
        "gunicorn",
        [
            sys.executable,
            "-m",
            "gunicorn",
            WSGI_APPLICATION,
            "--config",
            GUNICORN_CONFIG,
            "--bind",
            f"{host}:{port}",
            "--workers",
            environ.get("WEB_CONCURRENCY", "2"),
            # No gunicorn access log: the app logs each request itself (logger converzia.access), with
            # its request id and without the query string.
            "--graceful-timeout",
            "10",
            "--timeout",
            "60",
            # gunicorn 27's control socket defaults to one path per user (~/.gunicorn/gunicorn.ctl),
            # shared with any other gunicorn on the machine; make run does not use it.
            "--no-control-socket",
        ],
        app_env,
        own_session=True,
    )
    # The worker boots while gunicorn does: on two cores that is most of a warm start.
    time.sleep(0.2)  # gunicorn's on_starting empties the metrics directory first
    stack.spawn("worker", manage("run_worker"), app_env, own_session=True)
    status = wait_for_http(f"{web_url}{HEALTH_PATH}", process=gunicorn, timeout_s=90)
    say(f"web: GET {HEALTH_PATH} answers {status}, {time.monotonic() - started:.1f} s after start")

    state = {
        "pid": os.getpid(),
        "web_url": web_url,
        "database_url": redact(database_url),
        "redis_url": redact(redis_url),
        "graph_url": graph_url,
        "demo_file": str(demo_file) if demo_file else None,
        "processes": stack.pids(),
    }
    state_path = data / STATE_FILE
    state_path.write_text(json.dumps(state, indent=2) + "\n")
    # `make test-lead` runs manage.py against this stack: it needs the unredacted URLs, so owner only.
    environment_path = data / RUN_ENVIRONMENT_FILE
    environment_path.write_text(json.dumps(_manage_environment(app_env), indent=2) + "\n")
    environment_path.chmod(0o600)
    for line in banner(
        web_url=web_url,
        demo=demo,
        demo_file=demo_file,
        database=f"{redact(database_url)} ({plan.database.source})",
        redis=f"{redact(redis_url)} ({plan.redis.source})",
        worker="manage.py run_worker",
        graph=graph_url,
        meta_secret=_meta_setting(environ, "META_APP_SECRET"),
        meta_verify_token=_meta_setting(environ, "META_WEBHOOK_VERIFY_TOKEN"),
    ):
        sys.stdout.write(line + "\n")
    sys.stdout.flush()
    # The worker rides out database outages itself; if it exits anyway, it is started again (gunicorn
    # or the Graph stand-in exiting still stops everything).
    stack.restart_when_exits("worker", manage("run_worker"), app_env, own_session=True)
    while True:
        time.sleep(0.5)
        if stack.check_children():
            state["processes"] = stack.pids()
            state_path.write_text(json.dumps(state, indent=2) + "\n")


def _manage_environment(app_env: Mapping[str, str]) -> dict[str, str]:
    """What a `manage.py` command needs to act on the running stack (not the whole environment)."""
    wanted = ("DATABASE_URL", "REDIS_URL", "DJANGO_SETTINGS_MODULE", "META_APP_SECRET", "META_GRAPH_URL")
    return {name: app_env[name] for name in wanted if app_env.get(name)}


DEV_META_DEFAULTS = {
    "META_APP_SECRET": DEV_META_APP_SECRET,
    "META_WEBHOOK_VERIFY_TOKEN": DEV_META_WEBHOOK_VERIFY_TOKEN,
}


def _meta_setting(environ: Mapping[str, str], name: str) -> str:
    """The value the app runs with: the environment's, else the development default of local.py."""
    return environ.get(name) or DEV_META_DEFAULTS[name]


def command_with_services(
    argv: Sequence[str],
    environ: Mapping[str, str],
    *,
    label: str,
    create_database: bool,
    require_preload: bool = False,
) -> int:
    """Run `argv` against the test servers, starting embedded ones if needed and stopping them after."""
    if not argv:
        say("nothing to run")
        return 2
    data = data_directory(environ)
    plan = plan_for_tests(environ, require_preload=require_preload)
    stack = Stack(data, stop_adopted=False)
    install_stop_handlers()
    exit_code = 1
    try:
        database_url = stack.database_url(plan.database, database=APP_DATABASE)
        redis_url = stack.redis_url(plan.redis)
        if create_database and plan.database.source != ENVIRONMENT:
            ensure_app_database(database_url)
        env = service_environment(
            environ, database_url=database_url, redis_url=redis_url, settings_module=None
        )
        # The child shares our terminal: a Ctrl-C reaches it directly, and we wait for it to finish.
        child = stack.spawn(label, argv, env, own_session=False)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, lambda _signum, _frame: child.terminate())
        exit_code = child.wait()
        stack.children.pop(label, None)
    except StopRequested as stop:
        say(f"{stop} received")
    except (StackError, ServerError) as error:
        say(f"error: {error}")
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        problems = stack.shutdown()
        for problem in problems:
            say(f"error while stopping: {problem}")
        if problems and exit_code == 0:
            exit_code = 1
    return exit_code


def command_test(pytest_arguments: Sequence[str], environ: Mapping[str, str]) -> int:
    exit_code = command_with_services(
        [sys.executable, "-m", "pytest", *pytest_arguments],
        environ,
        label="pytest",
        create_database=False,
        require_preload=True,
    )
    if exit_code == 5:
        say("pytest collected no tests (exit status 5): that is a failure, not a pass")
    return exit_code


def command_test_env(environ: Mapping[str, str]) -> int:
    plan = plan_for_tests(environ)
    for variable, service, embedded in (
        ("DATABASE_URL", plan.database, "make test starts an embedded PostgreSQL under .data/postgres"),
        ("REDIS_URL", plan.redis, "make test starts an embedded Valkey under .data/valkey"),
    ):
        if service.note:
            sys.stdout.write(f"# {variable}: {service.note}\n")
        if service.url is None:
            if not service.note:
                sys.stdout.write(f"# {variable}: nothing answers; {embedded}\n")
            else:
                sys.stdout.write(f"# {variable}: {embedded}\n")
        else:
            sys.stdout.write(f"# {variable}: {service.source}\nexport {variable}='{service.url}'\n")
    return 0


def command_url(environ: Mapping[str, str]) -> int:
    state = running_supervisor(data_directory(environ))
    if state is None:
        sys.stderr.write("make run is not running (no live .data/devstack.json)\n")
        return 1
    sys.stdout.write(f"{state['web_url']}\n")
    return 0


def command_test_lead(arguments: Sequence[str], environ: Mapping[str, str]) -> int:
    """`make test-lead`: `manage.py send_test_lead` against the running `make run`, as its demo tenant."""
    data = data_directory(environ)
    state = running_supervisor(data)
    saved = read_state(data / RUN_ENVIRONMENT_FILE)
    if state is None or saved is None:
        say("make run is not running here: start it first (it starts the worker and the Graph stand-in).")
        return 1
    argv = manage("send_test_lead", "--url", state["web_url"])
    credentials = (
        (read_state(Path(state["demo_file"])) or {}).get("credentials") if state.get("demo_file") else None
    )
    tenants = (credentials or {}).get("tenants") or []
    if tenants and "--tenant" not in arguments:
        tenant = tenants[0]
        argv += ["--tenant", tenant["slug"]]
        token = (tenant.get("owner") or {}).get("api_token")
        if token and "--portal-token" not in arguments:
            argv += ["--portal-token", token]
    child = subprocess.run(
        [*argv, *arguments], env={**environ, **saved, "PYTHONUNBUFFERED": "1"}, cwd=REPO_ROOT, check=False
    )
    return child.returncode


def command_reset(environ: Mapping[str, str]) -> int:
    import shutil

    data = data_directory(environ)
    state = running_supervisor(data)
    if state is not None:
        say(f"make run is running (pid {state['pid']}); stop it before resetting.")
        return 1
    if not data.exists():
        say(f"{data} does not exist; nothing to reset")
        return 0
    for server in (EmbeddedValkey(data), EmbeddedPostgres(data)):
        with contextlib.suppress(ServerError):
            if server.adopt_running():
                say(f"stopping leftover {server.name} (pid {server.pid})")
                server.stop()
    shutil.rmtree(data)
    say(f"deleted {data}: the next make run initialises and seeds from scratch")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m converzia.devstack", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("run", help="the development stack (make run)")
    test = commands.add_parser("test", help="pytest against the resolved servers (make test)")
    test.add_argument("pytest_arguments", nargs=argparse.REMAINDER)
    execute = commands.add_parser("exec", help="a command with the test servers' DATABASE_URL/REDIS_URL")
    execute.add_argument("command_line", nargs=argparse.REMAINDER)
    commands.add_parser("test-env", help="print which servers the tests would use")
    commands.add_parser("url", help="print the running stack's web address")
    test_lead = commands.add_parser("test-lead", help="a signed Meta test lead into the running stack")
    test_lead.add_argument("send_test_lead_arguments", nargs=argparse.REMAINDER)
    commands.add_parser("reset", help="stop leftovers and delete the data directory")
    arguments = parser.parse_args(argv)
    environ = os.environ

    if arguments.command == "run":
        return command_run(environ)
    if arguments.command == "test":
        return command_test(_strip_separator(arguments.pytest_arguments), environ)
    if arguments.command == "exec":
        command_line = _strip_separator(arguments.command_line)
        return command_with_services(
            command_line, environ, label=Path(command_line[0]).name, create_database=True
        )
    if arguments.command == "test-env":
        return command_test_env(environ)
    if arguments.command == "url":
        return command_url(environ)
    if arguments.command == "test-lead":
        return command_test_lead(_strip_separator(arguments.send_test_lead_arguments), environ)
    return command_reset(environ)


def _strip_separator(arguments: Sequence[str]) -> list[str]:
    arguments = list(arguments)
    return arguments[1:] if arguments[:1] == ["--"] else arguments


if __name__ == "__main__":
    sys.exit(main())
