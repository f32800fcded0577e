"""`converzia.db.health` and `manage.py dbhealth`: every check answers on the real test database, and the
problems it looks for (duplicate, invalid indexes, blocked sessions, sequences near their end, a stale
stats view) are flagged when they are made to happen."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import psycopg
import pytest
from django.core.management import call_command, execute_from_command_line
from django.core.management.base import CommandError
from django.db import connection

from converzia.db.health import (
    CheckResult,
    Status,
    _cache_hit_result,
    available_checks,
    run_checks,
    worst_status,
)

pytestmark = pytest.mark.django_db

EXPECTED_CHECKS = {
    "duplicate_indexes",
    "unused_indexes",
    "invalid_indexes",
    "table_bloat",
    "index_bloat",
    "cache_hit_tables",
    "cache_hit_indexes",
    "long_running_queries",
    "blocked_queries",
    "connections",
    "sequences",
    "xid_wraparound",
    "vacuum",
    "analyze",
    "stats_view",
}


def by_name(results: list[CheckResult]) -> dict[str, CheckResult]:
    return {r.name: r for r in results}


def execute(*statements: str) -> None:
    with connection.cursor() as cursor:
        for statement in statements:
            cursor.execute(statement)


def raw_connection() -> psycopg.Connection:
    """A second, independent session on the test database (autocommit)."""
    params = connection.get_connection_params()
    params.pop("cursor_factory", None)
    params.pop("context", None)
    params.pop("prepare_threshold", None)
    return psycopg.connect(**params, autocommit=True)


# --- every check -------------------------------------------------------------------------------------


def test_every_check_runs_and_returns_a_status_value_and_message():
    results = run_checks()

    assert {c.name for c in available_checks()} == EXPECTED_CHECKS
    assert [r.name for r in results] == [c.name for c in available_checks()]
    for r in results:
        assert isinstance(r.status, Status), r
        assert r.value and r.message, r
        assert not r.message.startswith("Could not run"), r
    named = by_name(results)
    # A quiet test database: nothing blocked, connections far from the limit, ids far from wraparound,
    # no invalid index, no sequence near its end.
    for name in ("invalid_indexes", "blocked_queries", "connections", "xid_wraparound", "sequences"):
        assert named[name].status is Status.OK, named[name]
    # Django's own auth M2M duplicates are listed but accepted.
    assert named["duplicate_indexes"].status is Status.OK
    assert {d["table"] for d in named["duplicate_indexes"].details} <= {
        "public.auth_group_permissions",
        "public.auth_permission",
        "public.users_groups",
        "public.users_user_permissions",
    }
    assert named["connections"].value.endswith("%")


def test_run_checks_selects_by_name_and_rejects_unknown_names():
    results = run_checks(["connections", "sequences"])
    assert [r.name for r in results] == ["connections", "sequences"]
    with pytest.raises(KeyError, match="nope"):
        run_checks(["connections", "nope"])


def test_worst_status_and_cache_hit_thresholds():
    assert _cache_hit_result("c", "table", hit=999_000, read=1_000).status is Status.OK  # 99.9 %
    assert _cache_hit_result("c", "table", hit=980_000, read=20_000).status is Status.WARN  # 98 %
    assert _cache_hit_result("c", "table", hit=900_000, read=100_000).status is Status.FAIL  # 90 %
    idle = _cache_hit_result("c", "table", hit=10, read=10)
    assert idle.status is Status.OK and "Too little" in idle.message
    assert worst_status([]) is Status.OK
    ok, warn = CheckResult("a", Status.OK, "", ""), CheckResult("b", Status.WARN, "", "")
    assert worst_status([ok, warn, ok]) is Status.WARN


# --- indexes ---------------------------------------------------------------------------------------------


@pytest.fixture
def probe_table() -> str:
    execute(
        "CREATE TABLE dbh_probe (id bigint PRIMARY KEY, a int, b int, c text)",
        "CREATE INDEX dbh_probe_a ON dbh_probe (a)",
        "CREATE INDEX dbh_probe_a_b ON dbh_probe (a, b)",
        # Look-alikes that are not duplicates: another direction, a partial index, another method.
        "CREATE INDEX dbh_probe_b ON dbh_probe (b)",
        "CREATE INDEX dbh_probe_b_desc ON dbh_probe (b DESC)",
        "CREATE INDEX dbh_probe_c_partial ON dbh_probe (c) WHERE c IS NOT NULL",
        "CREATE INDEX dbh_probe_c_hash ON dbh_probe USING hash (c)",
        # A unique prefix enforces a rule: not redundant next to the wider index.
        "CREATE UNIQUE INDEX dbh_probe_c_a_unique ON dbh_probe (c, a)",
        "CREATE INDEX dbh_probe_c_a_b ON dbh_probe (c, a, b)",
        # A copy of the primary key is.
        "CREATE UNIQUE INDEX dbh_probe_id_copy ON dbh_probe (id)",
    )
    return "public.dbh_probe"


def test_duplicate_indexes_are_flagged_and_look_alikes_are_not(probe_table):
    result = by_name(run_checks(["duplicate_indexes"]))["duplicate_indexes"]

    pairs = {(d["index"], d["covered_by"]) for d in result.details if d["table"] == probe_table}
    assert pairs == {("dbh_probe_a", "dbh_probe_a_b"), ("dbh_probe_id_copy", "dbh_probe_pkey")}
    assert result.status is Status.WARN
    assert result.value == "2"
    assert "covered by another" in result.message


@pytest.mark.django_db(transaction=True)
def test_an_index_left_invalid_by_a_failed_concurrent_build_fails_the_check():
    execute(
        "CREATE TABLE dbh_invalid_probe (id int)",
        "INSERT INTO dbh_invalid_probe VALUES (1), (1)",
    )
    try:
        # Outside a transaction (autocommit): the concurrent build fails on the duplicate and leaves
        # its invalid index behind.
        with pytest.raises(Exception, match="could not create unique index"):
            execute("CREATE UNIQUE INDEX CONCURRENTLY dbh_invalid_probe_id ON dbh_invalid_probe (id)")

        result = by_name(run_checks(["invalid_indexes"]))["invalid_indexes"]

        assert result.status is Status.FAIL
        assert result.value == "1"
        assert [d["index"] for d in result.details] == ["dbh_invalid_probe_id"]
        assert "DROP INDEX CONCURRENTLY" in result.message
        # An invalid index is not also reported as unused or as a duplicate.
        others = run_checks(["unused_indexes"])[0]
        assert "dbh_invalid_probe_id" not in {d["index"] for d in others.details}
    finally:
        execute("DROP TABLE dbh_invalid_probe")


# --- locks and long-running queries -----------------------------------------------------------------


@dataclass(frozen=True)
class BlockedSession:
    holder_pid: int  # idle in transaction, holding an ACCESS EXCLUSIVE lock on `tenants`
    waiter_pid: int  # running a query that waits for that lock
    blocked_at: float  # time.monotonic() once the waiter was seen waiting: it has waited since before


# Generous bounds, for a busy box: how long the fixture gives the waiter to start waiting, and how long
# the waiter's query may wait at all (the fixture releases it long before).
BLOCK_DEADLINE_S = 30.0
WAITER_STATEMENT_TIMEOUT = "120s"
WAITER_QUERY = "SELECT count(*) FROM tenants /* dbh-waiter */"


def wait_until_blocked(
    observer: psycopg.Connection, *, waiter_pid: int, holder_pid: int, thread: threading.Thread
) -> None:
    """Poll until the waiter's query is waiting for the holder's lock (bounded by BLOCK_DEADLINE_S).

    `observer` is in autocommit, so every poll is its own transaction and sees the current
    pg_stat_activity (within a transaction PostgreSQL keeps the snapshot of the first read)."""
    deadline = time.monotonic() + BLOCK_DEADLINE_S
    while True:
        seen = observer.execute(
            "SELECT pg_blocking_pids(pid), wait_event_type, query FROM pg_stat_activity WHERE pid = %s",
            [waiter_pid],
        ).fetchone()
        if seen == ([holder_pid], "Lock", WAITER_QUERY):
            return
        if not thread.is_alive():
            pytest.fail(f"The waiter's query ended before it was seen waiting (last seen: {seen}).")
        if time.monotonic() > deadline:
            pytest.fail(f"No lock wait on pid {holder_pid} after {BLOCK_DEADLINE_S:g} s (last seen: {seen}).")
        time.sleep(0.01)


@pytest.fixture
def blocked_session() -> Iterator[BlockedSession]:
    """One session holds an ACCESS EXCLUSIVE lock on `tenants` in an open transaction; a second one,
    in a thread, waits for it. Yields once the second one is seen waiting; both are released and
    closed afterwards, whatever happened."""
    holder, waiter, observer = raw_connection(), raw_connection(), raw_connection()
    thread = threading.Thread(target=waiter.execute, args=[WAITER_QUERY], daemon=True)
    try:
        holder.execute("BEGIN")
        holder.execute("LOCK TABLE tenants IN ACCESS EXCLUSIVE MODE")
        waiter.execute(f"SET statement_timeout = '{WAITER_STATEMENT_TIMEOUT}'")
        thread.start()
        wait_until_blocked(
            observer, waiter_pid=waiter.info.backend_pid, holder_pid=holder.info.backend_pid, thread=thread
        )
        yield BlockedSession(holder.info.backend_pid, waiter.info.backend_pid, time.monotonic())
    finally:
        # Closing the holder's session ends its transaction and so releases the lock, even if the
        # test left that connection in a failed state; then the waiter's query completes.
        holder.close()
        if thread.ident is not None:
            thread.join(timeout=BLOCK_DEADLINE_S)
            if thread.is_alive():
                waiter.cancel()
                thread.join(timeout=BLOCK_DEADLINE_S)
        waiter.close()
        observer.close()


def waited_for(session: BlockedSession, seconds: float) -> None:
    """Return once the waiter has waited at least `seconds` (measured from before it was seen waiting,
    so a slow box only makes the real wait longer, never shorter)."""
    time.sleep(max(0.0, session.blocked_at + seconds - time.monotonic()))


def check_now(check: str, **kwargs) -> CheckResult:
    """Run one check on what the server shows now. The test runs in one transaction, where PostgreSQL
    would otherwise keep answering pg_stat_activity from the snapshot taken at its first read."""
    execute("SELECT pg_stat_clear_snapshot()")
    return by_name(run_checks([check], **kwargs))[check]


def test_a_session_waiting_on_another_ones_lock_is_flagged(blocked_session):
    result = check_now("blocked_queries")

    assert result.status is Status.WARN  # waiting for less than the default 60 s
    assert result.value == "1"
    [row] = result.details
    assert row["pid"] == blocked_session.waiter_pid
    assert row["blocked_by"] == [blocked_session.holder_pid]
    assert row["query"] == WAITER_QUERY
    assert row["blocking_queries"] == ["idle in transaction: LOCK TABLE tenants IN ACCESS EXCLUSIVE MODE"]
    assert f"blocked by pid {blocked_session.holder_pid}" in result.message


def test_a_lock_wait_longer_than_the_threshold_fails_the_check(blocked_session):
    waited_for(blocked_session, 0.3)

    result = check_now("blocked_queries", long_seconds=0.1)

    assert result.status is Status.FAIL
    assert result.details[0]["waiting_seconds"] >= 0.3


def test_long_running_queries_and_idle_transactions_are_flagged_past_the_threshold(blocked_session):
    # Past ten times the threshold (LONG_FAIL_FACTOR) for both sessions: the status is `fail`
    # however slow the box (a wait between 1 and 10 times it would be `warn`).
    waited_for(blocked_session, 0.6)

    result = check_now("long_running_queries", long_seconds=0.05)

    states = {row["pid"]: row["state"] for row in result.details}
    assert states[blocked_session.holder_pid] == "idle in transaction"  # holding the lock
    assert states[blocked_session.waiter_pid] == "active"
    assert result.status is Status.FAIL
    assert "idle in transaction, holding locks" in result.message
    assert check_now("long_running_queries", long_seconds=3600).value == "0"


# --- limits --------------------------------------------------------------------------------------------


def test_a_sequence_near_the_end_of_its_column_type_is_flagged():
    execute(
        "CREATE SEQUENCE dbh_int_seq AS integer",
        "SELECT setval('dbh_int_seq', 2000000000)",  # 93 % of 2^31 - 1
    )
    result = by_name(run_checks(["sequences"]))["sequences"]
    assert result.status is Status.FAIL
    assert result.details[0]["sequence"] == "public.dbh_int_seq"
    assert "bigint" in result.message


def test_a_bigint_sequence_feeding_an_integer_column_is_measured_against_the_column():
    execute(
        "CREATE TABLE dbh_seq_probe (id integer)",
        "CREATE SEQUENCE dbh_big_seq AS bigint OWNED BY dbh_seq_probe.id",
        "SELECT setval('dbh_big_seq', 1700000000)",  # tiny for bigint, 79 % of the int column
    )
    result = by_name(run_checks(["sequences"]))["sequences"]
    [row] = [d for d in result.details if d["sequence"] == "public.dbh_big_seq"]
    assert row["column"] == "dbh_seq_probe.id"
    assert row["limit"] == 2**31 - 1
    assert 79 < row["used_pct"] < 80
    assert result.status is Status.WARN


def test_wraparound_reports_the_age_against_the_limits():
    result = by_name(run_checks(["xid_wraparound"]))["xid_wraparound"]
    assert result.status is Status.OK
    assert result.value.endswith("%")
    assert any("database" in d for d in result.details) and any("table" in d for d in result.details)
    assert "anti-wraparound vacuum starts at" in result.message


def test_maintenance_checks_say_when_autovacuum_is_off():
    with connection.cursor() as cursor:
        cursor.execute("SHOW autovacuum")
        (autovacuum,) = cursor.fetchone()
    named = by_name(run_checks(["vacuum", "analyze"]))
    for result in named.values():
        assert ("autovacuum is OFF" in result.message) == (autovacuum == "off")
        for row in result.details:
            assert row["threshold"] >= 0


# --- the stats view (a check registered by portal) --------------------------------------------------


def test_stats_view_check_follows_the_refreshes():
    from portal.stats_view import VIEW_NAME, tenant_stats_refresh

    # The state the migration leaves, set here (and rolled back): an earlier transactional test may
    # have committed a refresh, and the flush after it empties stats_view_refreshes but not the view.
    execute(f"REFRESH MATERIALIZED VIEW {VIEW_NAME} WITH NO DATA", "DELETE FROM stats_view_refreshes")
    before = by_name(run_checks(["stats_view"]))["stats_view"]
    assert (before.status, before.value) == (Status.WARN, "never")
    assert "refresh_stats" in before.message
    tenant_stats_refresh(concurrently=False)
    after = by_name(run_checks(["stats_view"]))["stats_view"]
    assert after.status is Status.OK
    assert after.details[0]["populated"] is True
    # Aged by a day and a bit: failing.
    execute("UPDATE stats_view_refreshes SET refreshed_at = now() - interval '25 hours'")
    assert by_name(run_checks(["stats_view"]))["stats_view"].status is Status.FAIL


# --- the command ---------------------------------------------------------------------------------------


def test_command_prints_a_table_of_every_check(capsys):
    call_command("dbhealth")
    out = capsys.readouterr().out
    assert out.splitlines()[0].split() == ["check", "status", "value", "message"]
    for name in EXPECTED_CHECKS:
        assert f"\n{name} " in out
    assert " ok, " in out and " fail." in out


def test_command_json_parses_and_has_every_field(capsys):
    call_command("dbhealth", "--json", "--check", "connections,sequences", "--check", "invalid_indexes")
    payload = json.loads(capsys.readouterr().out)
    assert payload["status"] in ("ok", "warn", "fail")
    assert [c["name"] for c in payload["checks"]] == ["invalid_indexes", "connections", "sequences"]
    for check in payload["checks"]:
        assert set(check) == {"name", "status", "value", "message", "details"}


def test_command_fail_on_sets_the_exit_status(probe_table, capsys):
    # A duplicate index: the check is at warn, nothing at fail.
    call_command("dbhealth", "--check", "duplicate_indexes")  # default: never fails
    call_command("dbhealth", "--check", "duplicate_indexes", "--fail-on", "fail")
    with pytest.raises(CommandError, match="duplicate_indexes at warn or worse") as raised:
        call_command("dbhealth", "--check", "duplicate_indexes", "--fail-on", "warn")
    assert raised.value.returncode == 1

    execute("CREATE SEQUENCE dbh_fail_seq AS smallint", "SELECT setval('dbh_fail_seq', 32000)")
    with pytest.raises(CommandError, match="sequences at fail or worse"):
        call_command("dbhealth", "--check", "sequences,connections", "--fail-on", "fail")


@pytest.mark.django_db(transaction=True)
def test_command_exit_status_from_the_command_line(capsys):
    # As `manage.py dbhealth …` runs it: a CommandError becomes the process's exit status. (The command
    # line closes the connections when done, so this test commits its duplicate index and drops it.)
    def exit_status(*args: str) -> int:
        try:
            execute_from_command_line(["manage.py", "dbhealth", *args])
        except SystemExit as exc:
            return int(exc.code or 0)
        return 0

    execute(
        "CREATE TABLE dbh_exit_probe (a int, b int)",
        "CREATE INDEX dbh_exit_probe_a ON dbh_exit_probe (a)",
        "CREATE INDEX dbh_exit_probe_a_b ON dbh_exit_probe (a, b)",
    )
    try:
        assert exit_status("--check", "duplicate_indexes") == 0
        assert exit_status("--check", "duplicate_indexes", "--fail-on", "fail") == 0
        assert exit_status("--check", "duplicate_indexes", "--fail-on", "warn") == 1
        assert "duplicate_indexes at warn or worse" in capsys.readouterr().err
        assert exit_status("--check", "bogus") == 1
    finally:
        execute("DROP TABLE dbh_exit_probe")


def test_command_rejects_an_unknown_check():
    with pytest.raises(CommandError, match="Unknown check 'bogus'. Known checks: duplicate_indexes"):
        call_command("dbhealth", "--check", "bogus")
