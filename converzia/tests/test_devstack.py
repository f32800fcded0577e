"""devstack (`make run` / `make test`): which servers it picks, ports, seed output, and the real servers.

The embedded servers are started for real (Valkey in milliseconds, PostgreSQL in about two seconds);
the full `make run` path, with gunicorn and signals, is covered by the CI smoke test
(`python -m converzia.devstack_smoke`).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import uuid
from pathlib import Path

import psycopg
import pytest
import redis
from django.conf import settings

from converzia import devstack
from converzia.devstack import (
    DEFAULT_DATA_DIR,
    DEV_META_PAGE_ACCESS_TOKEN,
    EMBEDDED,
    ENVIRONMENT,
    LOCAL,
    REPO_ROOT,
    Service,
    ServicePlan,
    applied_migrations,
    banner,
    command_test_env,
    demo_marker_name,
    meta_development_environment,
    migrate_when_needed,
    migrations_fingerprint,
    parse_seed_output,
    plan_for_run,
    plan_for_tests,
    redact,
    service_environment,
    with_database,
)
from converzia.devstack_servers import (
    EmbeddedPostgres,
    EmbeddedValkey,
    PostmasterInfo,
    ServerError,
    find_free_port,
    port_is_free,
    postgres_preloads,
    process_is_alive,
    redis_ping,
)

BOTH_EMBEDDED = ServicePlan(
    database=Service(url=None, source=EMBEDDED), redis=Service(url=None, source=EMBEDDED)
)


def live_database_url() -> str:
    """The PostgreSQL server this test run uses, as a URL (it answers, or no test would run)."""
    db = settings.DATABASES["default"]
    password = f":{db['PASSWORD']}" if db.get("PASSWORD") else ""
    return f"postgres://{db['USER']}{password}@{db['HOST']}:{db['PORT']}/{db['NAME']}"


def two_free_ports(start: int) -> int:
    """A port p such that p and p + 1 are both free right now."""
    port = start
    while True:
        port = find_free_port(port)
        if port_is_free(port + 1):
            return port
        port += 2


# --- which servers ----------------------------------------------------------------------------


def test_run_uses_the_environment_urls_when_set():
    plan = plan_for_run({"DATABASE_URL": "postgres://app@db:5432/cvz", "REDIS_URL": "redis://cache:6379/2"})

    assert plan == ServicePlan(
        database=Service(url="postgres://app@db:5432/cvz", source=ENVIRONMENT),
        redis=Service(url="redis://cache:6379/2", source=ENVIRONMENT),
    )


@pytest.mark.parametrize(
    "environ",
    [
        pytest.param({}, id="_case_unset"),
        pytest.param({"DATABASE_URL": "", "REDIS_URL": "  "}, id="_case_empty"),
    ],
)
def test_run_starts_embedded_servers_when_the_urls_are_unset(environ):
    assert plan_for_run(environ) == BOTH_EMBEDDED


def test_run_never_falls_back_to_local_servers():
    # Even with a local server answering, `make run` keeps its data in .data/, not in a shared server.
    assert plan_for_run({}) == BOTH_EMBEDDED


def test_tests_prefer_the_environment_over_answering_local_servers():
    plan = plan_for_tests(
        {"DATABASE_URL": "postgres://app@db:5432/cvz", "REDIS_URL": "redis://cache:6379/2"},
        local_database_url=live_database_url(),
        local_redis_url=settings.REDIS_URL,
    )

    assert plan == ServicePlan(
        database=Service(url="postgres://app@db:5432/cvz", source=ENVIRONMENT),
        redis=Service(url="redis://cache:6379/2", source=ENVIRONMENT),
    )


def test_tests_use_the_local_servers_when_they_answer():
    # Whether the server preloads pg_stat_statements is the next tests' subject.
    plan = plan_for_tests(
        {}, local_database_url=live_database_url(), local_redis_url=settings.REDIS_URL, require_preload=False
    )

    assert plan == ServicePlan(
        database=Service(url=live_database_url(), source=LOCAL),
        redis=Service(url=settings.REDIS_URL, source=LOCAL),
    )


def test_tests_fall_back_to_embedded_servers_when_nothing_answers():
    closed = find_free_port(20000)

    plan = plan_for_tests(
        {},
        local_database_url=f"postgres://postgres@127.0.0.1:{closed}/converzia",
        local_redis_url=f"redis://127.0.0.1:{closed}/0",
    )

    assert plan == BOTH_EMBEDDED


# --- ports ------------------------------------------------------------------------------------


def test_a_port_with_a_listener_is_not_free_and_is_skipped():
    port = two_free_ports(21000)
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.bind(("127.0.0.1", port))
        listener.listen()

        assert port_is_free(port) is False
        assert find_free_port(port) == port + 1
        with pytest.raises(ServerError, match=f"No free port on 127.0.0.1 in {port}-{port}"):
            find_free_port(port, attempts=1)

    assert port_is_free(port) is True
    assert find_free_port(port) == port


def test_find_free_port_skips_the_port_that_just_failed():
    port = two_free_ports(22000)

    assert find_free_port(port, skip=port) == port + 1


# --- small pure helpers -----------------------------------------------------------------------


def test_seed_output_is_read_from_plain_json():
    printed = json.dumps({"staff": {"email": "staff@demo.test"}, "tenants": []})

    assert parse_seed_output(printed) == {"staff": {"email": "staff@demo.test"}, "tenants": []}


def test_seed_output_is_read_after_log_lines_and_when_indented():
    credentials = {
        "staff": {"email": "s@x.test", "password": "pw", "api_token": "t"},
        "tenants": [{"id": "1"}],
    }
    printed = "Seeding 5 tenants...\nDone in 3.1 s\n" + json.dumps(credentials, indent=2) + "\n"

    assert parse_seed_output(printed) == credentials


@pytest.mark.parametrize(
    "printed",
    [
        pytest.param("", id="_case_nothing"),
        pytest.param("Database not empty; nothing to do.\n", id="_case_message"),
        pytest.param('{"seeded": false}\n', id="_case_json_without_credentials"),
        pytest.param('{"staff": \n', id="_case_truncated"),
    ],
)
def test_seed_output_without_credentials_gives_none(printed):
    assert parse_seed_output(printed) is None


def test_demo_marker_is_one_file_for_the_embedded_database_and_one_per_url_otherwise():
    first = Service(url="postgres://postgres@127.0.0.1:5432/a", source=ENVIRONMENT)
    second = Service(url="postgres://postgres@127.0.0.1:5432/b", source=ENVIRONMENT)

    assert demo_marker_name(Service(url=None, source=EMBEDDED)) == "demo-embedded.json"
    assert demo_marker_name(first) == demo_marker_name(first)
    assert demo_marker_name(first) != demo_marker_name(second)
    assert (
        demo_marker_name(first).startswith("demo-") and len(demo_marker_name(first)) == len("demo-") + 12 + 5
    )


def test_urls_are_printed_without_their_password():
    assert redact("postgres://app:s3cret@db:5432/cvz") == "postgres://app:***@db:5432/cvz"
    assert redact("redis://127.0.0.1:6379/0") == "redis://127.0.0.1:6379/0"


def test_with_database_swaps_only_the_database_name():
    url = "postgres://app@db:5432/cvz?sslmode=disable"

    assert with_database(url, "postgres") == "postgres://app@db:5432/postgres?sslmode=disable"


def test_service_environment_sets_the_servers_and_keeps_an_explicit_settings_module():
    base = {"PATH": "/usr/bin", "DJANGO_SETTINGS_MODULE": "converzia.settings.production"}

    env = service_environment(
        base, database_url="postgres://d", redis_url="redis://r", settings_module="x.local"
    )

    assert env == {
        "PATH": "/usr/bin",
        "DJANGO_SETTINGS_MODULE": "converzia.settings.production",
        "DATABASE_URL": "postgres://d",
        "REDIS_URL": "redis://r",
        "PYTHONUNBUFFERED": "1",
    }
    assert service_environment({}, database_url="d", redis_url="r", settings_module="x.local")[
        "DJANGO_SETTINGS_MODULE"
    ] == ("x.local")


def test_banner_shows_the_admin_login_and_the_first_tenant_token():
    demo = {
        "staff": {"email": "staff@demo.test", "password": "pw-staff", "api_token": "cvz_staff"},
        "tenants": [
            {
                "id": "7",
                "slug": "acme",
                "name": "Acme",
                "owner": {"email": "owner@acme.test", "password": "pw-owner", "api_token": "cvz_owner"},
            }
        ],
    }

    lines = banner(
        web_url="http://127.0.0.1:8001",
        demo=demo,
        demo_file=Path("/data/demo-embedded.json"),
        database="postgres://postgres@127.0.0.1:15432/converzia (embedded)",
        redis="redis://127.0.0.1:16379/0 (embedded)",
        worker="manage.py run_worker",
    )

    assert "  API docs      http://127.0.0.1:8001/api/docs/" in lines
    assert "  Admin         http://127.0.0.1:8001/admin/" in lines
    assert "  Health        http://127.0.0.1:8001/api/health/live" in lines
    assert "  Admin login   staff@demo.test / pw-staff" in lines
    assert "  Tenant        Acme (slug acme, id 7)" in lines
    assert "  Tenant token  cvz_owner" in lines
    assert "  All demo credentials: /data/demo-embedded.json" in lines


def test_postmaster_pid_gives_the_server_pid_and_port():
    content = "4242\n/data/postgres\n1764400000\n15433\n\n127.0.0.1\n  1234  5678\nready   \n"

    assert PostmasterInfo.parse(content) == PostmasterInfo(pid=4242, port=15433)
    assert PostmasterInfo.parse("") is None
    assert PostmasterInfo.parse("not a pid\n") is None


# --- the real thing ---------------------------------------------------------------------------


def test_exec_passes_the_servers_and_the_exit_status_through():
    env = {**os.environ, "DATABASE_URL": live_database_url(), "REDIS_URL": settings.REDIS_URL}
    script = "import os, sys; print(os.environ['DATABASE_URL'], os.environ['REDIS_URL']); sys.exit(3)"

    result = subprocess.run(
        [sys.executable, "-m", "converzia.devstack", "exec", "--", sys.executable, "-c", script],
        env=env,
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert result.returncode == 3
    assert result.stdout.splitlines()[-1] == f"{live_database_url()} {settings.REDIS_URL}"


def test_embedded_valkey_starts_answers_is_adopted_and_stops(tmp_path):
    server = EmbeddedValkey(tmp_path, first_port=find_free_port(26379))
    server.start()
    pid, port = server.pid, server.port
    try:
        client = redis.Redis.from_url(server.url())
        assert client.ping() is True
        client.set("devstack-probe", "ok")
        assert client.get("devstack-probe") == b"ok"
        client.close()

        second_handle = EmbeddedValkey(tmp_path)
        assert second_handle.adopt_running() is True
        assert (second_handle.pid, second_handle.port) == (pid, port)
    finally:
        server.stop()

    assert process_is_alive(pid) is False
    assert redis_ping("127.0.0.1", port) is False
    assert port_is_free(port) is True


@pytest.fixture
def scratch_data_dir():
    # Under the checkout rather than /tmp/pytest-of-<user> (mode 0700): as root, the unprivileged
    # PostgreSQL account must be able to traverse every ancestor of its data directory.
    DEFAULT_DATA_DIR.mkdir(exist_ok=True)
    path = DEFAULT_DATA_DIR / f"test-{uuid.uuid4().hex[:8]}"
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_embedded_postgres_initialises_once_preloads_pg_stat_statements_and_stops(scratch_data_dir):
    server = EmbeddedPostgres(scratch_data_dir, first_port=find_free_port(25432))
    server.start()
    pid = server.pid
    try:
        assert server.initialized_now is True
        assert server.ensure_database("cvz_scratch") is True
        assert server.ensure_database("cvz_scratch") is False
        with psycopg.connect(server.url("cvz_scratch")) as connection:
            preloaded = connection.execute("SHOW shared_preload_libraries").fetchone()[0]
            listen = connection.execute("SHOW listen_addresses").fetchone()[0]
            is_superuser = connection.execute(
                "SELECT rolsuper FROM pg_roles WHERE rolname = current_user"
            ).fetchone()
        assert preloaded == "pg_stat_statements"
        assert listen == "127.0.0.1"
        assert is_superuser == (True,)
    finally:
        server.stop()
    assert process_is_alive(pid) is False

    again = EmbeddedPostgres(scratch_data_dir, first_port=find_free_port(25432))
    again.start()
    try:
        assert again.initialized_now is False
        assert again.ensure_database("cvz_scratch") is False
    finally:
        again.stop()


# --- pg_stat_statements: `make test` passes over a server that does not preload it ----------------


def test_tests_pass_over_a_local_server_without_the_preload(scratch_data_dir, capsys):
    stock = EmbeddedPostgres(scratch_data_dir, first_port=find_free_port(26432), preload_libraries=())
    stock.start()
    try:
        url = stock.url("converzia")

        plan = plan_for_tests({}, local_database_url=url, local_redis_url=settings.REDIS_URL)
        assert plan.database.url is None and plan.database.source == EMBEDDED
        assert "does not preload pg_stat_statements" in plan.database.note
        assert f"127.0.0.1:{stock.port}" in plan.database.note

        # Commands that do not read pg_stat_statements (the migrations check) keep the local server.
        keep = plan_for_tests(
            {}, local_database_url=url, local_redis_url=settings.REDIS_URL, require_preload=False
        )
        assert keep.database == Service(url=url, source=LOCAL)

        # An explicit DATABASE_URL is used as given; the plan says which tests will skip and why.
        explicit = plan_for_tests({"DATABASE_URL": url}, local_redis_url=settings.REDIS_URL)
        assert explicit.database.url == url and explicit.database.source == ENVIRONMENT
        assert "skipped" in explicit.database.note

        assert command_test_env({"CONVERZIA_LOCAL_DATABASE_URL": url}) == 0
        printed = capsys.readouterr().out
        assert "does not preload pg_stat_statements" in printed
        assert "make test starts an embedded PostgreSQL" in printed
    finally:
        stock.stop()


@pytest.mark.usefixtures("needs_pg_stat_statements")
def test_a_server_that_preloads_is_used_as_it_is():
    plan = plan_for_tests({}, local_database_url=live_database_url(), local_redis_url=settings.REDIS_URL)
    # This suite runs only on servers that preload it (that is the point of the plan).
    assert plan.database == Service(url=live_database_url(), source=LOCAL)
    assert postgres_preloads(with_database(live_database_url(), "postgres")) is True


# --- warm start: migrate only when a migration changed ------------------------------------------


@pytest.fixture
def migrate_calls(monkeypatch):
    calls: list[list[str]] = []
    monkeypatch.setattr(devstack, "run_step", lambda title, argv, env: calls.append(list(argv)))
    return calls


@pytest.mark.django_db  # the test database must exist: live_database_url() names it only then
def test_migrate_runs_once_then_only_when_a_migration_or_the_database_changes(tmp_path, migrate_calls):
    url = live_database_url()

    migrate_when_needed(tmp_path, url, {})
    assert len(migrate_calls) == 1 and migrate_calls[0][-2:] == ["migrate", "--noinput"]
    migrate_when_needed(tmp_path, url, {})
    assert len(migrate_calls) == 1  # nothing changed: no Django start at all

    # Someone else migrated (or rolled back) this database: django_migrations changed.
    with psycopg.connect(url) as connection:
        connection.execute(
            "INSERT INTO django_migrations (app, name, applied) VALUES ('devstack_probe', '0001', now())"
        )
    try:
        migrate_when_needed(tmp_path, url, {})
        assert len(migrate_calls) == 2
    finally:
        with psycopg.connect(url) as connection:
            connection.execute("DELETE FROM django_migrations WHERE app = 'devstack_probe'")


def test_a_changed_migration_file_changes_the_fingerprint(tmp_path, monkeypatch):
    (tmp_path / "leads" / "migrations").mkdir(parents=True)
    migration = tmp_path / "leads" / "migrations" / "0001_initial.py"
    migration.write_text("operations = []\n")
    monkeypatch.setattr(devstack, "REPO_ROOT", tmp_path)
    first = migrations_fingerprint()
    assert migrations_fingerprint() == first

    migration.write_text("operations = ['changed']\n")
    assert migrations_fingerprint() != first
    (tmp_path / "leads" / "migrations" / "0002_more.py").write_text("")
    assert len({first, migrations_fingerprint()}) == 2


def test_a_database_without_django_migrations_always_migrates(scratch_data_dir, tmp_path, migrate_calls):
    server = EmbeddedPostgres(scratch_data_dir, first_port=find_free_port(27432))
    server.start()
    try:
        assert applied_migrations(server.url()) is None
        migrate_when_needed(tmp_path, server.url(), {})
        migrate_when_needed(tmp_path, server.url(), {})
        assert len(migrate_calls) == 2
    finally:
        server.stop()


# --- the Meta path under make run ---------------------------------------------------------------


def test_make_run_points_the_worker_at_the_graph_stand_in_unless_the_environment_names_one():
    stand_in = meta_development_environment({}, "http://127.0.0.1:18765")
    assert stand_in == {
        "META_GRAPH_URL": "http://127.0.0.1:18765",
        "META_PAGE_ACCESS_TOKEN": DEV_META_PAGE_ACCESS_TOKEN,
    }
    kept = meta_development_environment({"META_PAGE_ACCESS_TOKEN": "real"}, "http://127.0.0.1:18765")
    assert kept["META_PAGE_ACCESS_TOKEN"] == "real"
    assert meta_development_environment({"META_GRAPH_URL": "https://graph.example"}, None) == {}


def test_the_banner_tells_how_to_send_a_signed_test_lead():
    lines = "\n".join(
        banner(
            web_url="http://127.0.0.1:8000",
            demo=None,
            demo_file=None,
            database="db",
            redis="redis",
            worker="manage.py run_worker",
            graph="http://127.0.0.1:18765",
            meta_secret="s3cret",
            meta_verify_token="v3rify",
        )
    )
    assert "http://127.0.0.1:18765 (local stand-in for Meta)" in lines
    assert "POST http://127.0.0.1:8000/api/webhooks/meta-leads" in lines
    assert "'s3cret'" in lines and "'v3rify'" in lines
    assert "make test-lead" in lines
