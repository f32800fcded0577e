"""`converzia.db.stat_statements` and `manage.py slow_queries`, with pg_stat_statements created (as the
migration does) and without it (dropped inside the test's transaction, so the rollback restores it)."""

from __future__ import annotations

import json

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connection

from converzia.db.stat_statements import (
    StatStatementsUnavailable,
    slow_queries,
    stat_statements_reset,
    truncate_query,
)

pytestmark = pytest.mark.django_db

PROBE = "dbh_slow_probe"
# Long enough to be cut in the table (100 characters).
LONG_PROBE_SQL = (
    f"SELECT count(*) AS {PROBE} FROM tenants WHERE name = %s OR slug = %s OR contact_email = %s"
    " OR description = %s OR website = %s"
)


def run_probe(times: int) -> None:
    with connection.cursor() as cursor:
        for i in range(times):
            cursor.execute(LONG_PROBE_SQL, [f"n{i}", f"s{i}", f"e{i}", f"d{i}", f"w{i}"])


def probe_rows(report) -> list:
    return [s for s in report.statements if PROBE in s.query]


@pytest.mark.usefixtures("needs_pg_stat_statements")
def test_queries_that_ran_are_listed_with_their_statistics():
    run_probe(7)
    report = slow_queries(order="calls", limit=500)

    [probe] = probe_rows(report)
    # Normalised: the constants became parameters, and each call was counted under one entry.
    assert "$1" in probe.query and "n0" not in probe.query
    assert probe.calls >= 7
    assert probe.rows >= 7  # one row per count(*)
    assert probe.total_ms >= probe.mean_ms > 0
    assert probe.max_ms >= probe.mean_ms and probe.stddev_ms >= 0
    assert 0 <= probe.share_pct <= 100
    with connection.cursor() as cursor:
        cursor.execute("SELECT current_database()")
        assert report.database == cursor.fetchone()[0]
    assert report.total_ms >= probe.total_ms
    assert all(s.database == report.database for s in report.statements)
    everything = slow_queries(limit=100_000)
    assert sum(s.share_pct for s in everything.statements) == pytest.approx(100, abs=1)


@pytest.mark.usefixtures("needs_pg_stat_statements")
def test_order_limit_and_min_calls():
    run_probe(3)
    by_calls = slow_queries(order="calls", limit=5)
    assert len(by_calls.statements) <= 5
    calls = [s.calls for s in by_calls.statements]
    assert calls == sorted(calls, reverse=True)
    by_mean = slow_queries(order="mean", limit=50)
    means = [s.mean_ms for s in by_mean.statements]
    assert means == sorted(means, reverse=True)
    by_total = slow_queries(limit=50)
    totals = [s.total_ms for s in by_total.statements]
    assert totals == sorted(totals, reverse=True)

    assert all(s.calls >= 3 for s in slow_queries(order="calls", limit=500, min_calls=3).statements)
    assert probe_rows(slow_queries(order="calls", limit=500, min_calls=10**9)) == []
    with pytest.raises(ValueError):
        slow_queries(order="rows")  # type: ignore[arg-type]


@pytest.mark.usefixtures("needs_pg_stat_statements")
def test_database_filter():
    run_probe(2)
    assert probe_rows(slow_queries(order="calls", limit=500, database="no_such_database")) == []
    everywhere = slow_queries(order="calls", limit=5000, database=None)
    assert everywhere.database is None
    assert probe_rows(everywhere)


@pytest.mark.usefixtures("needs_pg_stat_statements")
def test_reset_zeroes_this_databases_statements():
    run_probe(2)
    assert probe_rows(slow_queries(order="calls", limit=500))
    assert stat_statements_reset().startswith("database ")
    assert probe_rows(slow_queries(order="calls", limit=500)) == []


def test_truncate_query():
    assert truncate_query("SELECT  1\n FROM\tx", 100) == "SELECT 1 FROM x"
    cut = truncate_query("SELECT " + "a, " * 100 + "b", 40)
    assert len(cut) == 40 and cut.endswith("…")


# --- the command ---------------------------------------------------------------------------------------


@pytest.mark.usefixtures("needs_pg_stat_statements")
def test_command_prints_the_table_with_truncated_queries(capsys):
    run_probe(4)
    call_command("slow_queries", "--order", "calls", "--limit", "500")
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0].startswith("Top ") and "by calls in database" in lines[0]
    assert lines[1].split() == [
        "calls",
        "total",
        "ms",
        "mean",
        "ms",
        "max",
        "ms",
        "stddev",
        "ms",
        "rows",
        "share",
        "%",
        "hit",
        "%",
        "query",
    ]
    [probe_line] = [line for line in lines if PROBE in line]
    assert probe_line.endswith("…")
    assert "website" not in probe_line

    call_command("slow_queries", "--order", "calls", "--limit", "500", "--full")
    [full_line] = [line for line in capsys.readouterr().out.splitlines() if PROBE in line]
    assert full_line.rstrip().endswith("website = $5")


@pytest.mark.usefixtures("needs_pg_stat_statements")
def test_command_json(capsys):
    run_probe(2)
    call_command("slow_queries", "--json", "--order", "calls", "--limit", "500", "--min-calls", "2")
    payload = json.loads(capsys.readouterr().out)
    assert set(payload) == {"database", "order", "total_ms", "stats_reset", "deallocated", "statements"}
    [probe] = [s for s in payload["statements"] if PROBE in s["query"]]
    assert set(probe) >= {"calls", "mean_ms", "max_ms", "stddev_ms", "rows", "share_pct", "query", "queryid"}
    assert probe["query"].endswith("website = $5")  # never truncated in JSON


@pytest.mark.usefixtures("needs_pg_stat_statements")
def test_command_reset_confirms(capsys):
    run_probe(1)
    call_command("slow_queries", "--reset")
    assert "pg_stat_statements reset: statement counters of database " in capsys.readouterr().out
    assert probe_rows(slow_queries(order="calls", limit=500)) == []


def test_command_rejects_bad_numbers():
    with pytest.raises(CommandError, match="--limit"):
        call_command("slow_queries", "--limit", "0")


# --- without the extension ------------------------------------------------------------------------------


@pytest.fixture
def extension_dropped():
    """pg_stat_statements dropped inside this test's transaction; the rollback brings it back."""
    with connection.cursor() as cursor:
        cursor.execute("DROP EXTENSION pg_stat_statements")


def test_without_the_extension_the_reader_says_how_to_enable_it(extension_dropped):
    with pytest.raises(StatStatementsUnavailable) as raised:
        slow_queries()
    assert raised.value.reason == "not_created"
    message = str(raised.value)
    assert "pg_stat_statements is not created in database" in message
    assert "shared_preload_libraries = 'pg_stat_statements'" in message
    assert "Restart PostgreSQL" in message
    assert "CREATE EXTENSION IF NOT EXISTS pg_stat_statements;" in message
    with pytest.raises(StatStatementsUnavailable):
        stat_statements_reset()


def test_without_the_extension_the_command_fails_with_the_steps(extension_dropped):
    with pytest.raises(CommandError) as raised:
        call_command("slow_queries")
    assert raised.value.returncode == 1
    assert "postgresql.conf" in str(raised.value)
    assert "CREATE EXTENSION" in str(raised.value)
    with pytest.raises(CommandError, match="not created"):
        call_command("slow_queries", "--reset")
