"""Reads of `pg_stat_statements` for `manage.py slow_queries` and the admin's "Database" page.

The extension needs two things: the server must preload its library (`shared_preload_libraries`, a
restart) and the database must have it created (`CREATE EXTENSION`). Migration
`converzia/migrations/0005_pg_stat_statements.py` does the second when the server ships the extension and
the migrating user may; when either is missing, every function here raises `StatStatementsUnavailable`
whose message says exactly what to do.

Times are milliseconds of execution (planning time is not tracked unless `pg_stat_statements.track_planning`
is on). The share of total time is each statement's part of the execution time of all statements in the
same scope (the database, or every database), so the list answers "where does the server's time go".
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any, Literal

from django.db import DEFAULT_DB_ALIAS, DatabaseError, connections
from psycopg import sql

from converzia.db.timeouts import guarded

Order = Literal["total", "mean", "calls"]
ORDER_COLUMNS: dict[str, str] = {"total": "total_exec_time", "mean": "mean_exec_time", "calls": "calls"}
QUERY_TIMEOUT_MS = 5_000
EXTENSION = "pg_stat_statements"

ENABLE_HELP = (
    "To enable it:\n"
    "  1. In postgresql.conf: shared_preload_libraries = 'pg_stat_statements'\n"
    "     (add it to the list if the line already names other libraries)\n"
    "  2. Restart PostgreSQL (a reload is not enough for shared_preload_libraries).\n"
    "  3. In this database, as a superuser: CREATE EXTENSION IF NOT EXISTS pg_stat_statements;\n"
    "     (`manage.py migrate` does step 3 when the server has the extension and the user may.)"
)


class StatStatementsUnavailable(Exception):
    """pg_stat_statements cannot be read here; `reason` is not_installed, not_created or not_preloaded."""

    def __init__(self, reason: str, detail: str) -> None:
        self.reason = reason
        self.detail = detail
        super().__init__(f"{detail}\n{ENABLE_HELP}")


@dataclass(frozen=True)
class Statement:
    queryid: int | None
    database: str | None
    user: str | None
    calls: int
    total_ms: float
    mean_ms: float
    max_ms: float
    stddev_ms: float
    rows: int
    share_pct: float
    cache_hit_pct: float | None  # shared buffer hits / (hits + reads); None when it read no blocks
    temp_written_blocks: int  # blocks spilled to temp files: a sort or hash that outgrew work_mem
    query: str

    def short_query(self, width: int = 100) -> str:
        return truncate_query(self.query, width)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class SlowQueries:
    database: str | None  # None: every database
    order: str
    total_ms: float  # execution time of every statement in scope, not only the listed ones
    statements: list[Statement]
    stats_reset: dt.datetime | None  # when the counters last started (pg_stat_statements_info)
    deallocated: int | None  # statements evicted because pg_stat_statements.max was reached

    def as_dict(self) -> dict[str, Any]:
        return {
            "database": self.database,
            "order": self.order,
            "total_ms": round(self.total_ms, 3),
            "stats_reset": self.stats_reset.isoformat() if self.stats_reset else None,
            "deallocated": self.deallocated,
            "statements": [s.as_dict() for s in self.statements],
        }


def truncate_query(query: str, width: int) -> str:
    """One line, whitespace collapsed, cut at `width` characters with an ellipsis."""
    flat = re.sub(r"\s+", " ", query).strip()
    return flat if len(flat) <= width else flat[: width - 1].rstrip() + "…"


def _extension_schema(using: str) -> str:
    """The schema the extension lives in; raises `StatStatementsUnavailable` when it is not created."""
    with connections[using].cursor() as cursor:
        cursor.execute(
            "SELECT (SELECT extnamespace::regnamespace::text FROM pg_extension WHERE extname = %s),"
            " EXISTS (SELECT 1 FROM pg_available_extensions WHERE name = %s),"
            " (SELECT setting FROM pg_settings WHERE name = 'shared_preload_libraries'),"
            " current_database()",
            [EXTENSION, EXTENSION],
        )
        schema, available, preload, database = cursor.fetchone()
    if schema is not None:
        return schema
    if not available:
        raise StatStatementsUnavailable(
            "not_installed",
            f"pg_stat_statements is not installed on this server (database {database!r}): install "
            "PostgreSQL's contrib package (e.g. postgresql-contrib), then:",
        )
    preloaded = preload is not None and EXTENSION in preload
    raise StatStatementsUnavailable(
        "not_created",
        f"pg_stat_statements is not created in database {database!r}"
        + ("" if preloaded else " and not preloaded by the server")
        + ".",
    )


def _qualified(schema: str, name: str, using: str) -> str:
    """`schema.name`, quoted by psycopg (the schema comes from the catalog, but quote it anyway)."""
    raw = connections[using].connection
    return sql.SQL("{}.{}").format(sql.Identifier(schema), sql.Identifier(name)).as_string(raw)


@contextmanager
def _library_loaded() -> Iterator[None]:
    """Reads of the view fail when the extension exists but the server does not preload its library:
    say so instead of surfacing the raw error."""
    try:
        yield
    except DatabaseError as exc:
        if _not_preloaded(exc):
            raise StatStatementsUnavailable(
                "not_preloaded",
                "pg_stat_statements is created but the server does not preload its library.",
            ) from exc
        raise


def _not_preloaded(exc: DatabaseError) -> bool:
    # "pg_stat_statements must be loaded via shared_preload_libraries" (SQLSTATE 55000).
    return getattr(exc.__cause__, "sqlstate", None) == "55000"


def slow_queries(
    *,
    order: Order = "total",
    limit: int = 20,
    min_calls: int = 1,
    database: str | None = "",
    using: str = DEFAULT_DB_ALIAS,
) -> SlowQueries:
    """The top `limit` statements by `order`. `database=""` is the current database; None is every one."""
    if order not in ORDER_COLUMNS:
        raise ValueError(f"order must be one of {', '.join(ORDER_COLUMNS)}")
    connection = connections[using]
    with guarded("dbtools.slow_queries", timeout_ms=QUERY_TIMEOUT_MS, using=using):
        schema = _extension_schema(using)
        if database == "":
            with connection.cursor() as cursor:
                cursor.execute("SELECT current_database()")
                (database,) = cursor.fetchone()
        view = _qualified(schema, "pg_stat_statements", using)
        info = _qualified(schema, "pg_stat_statements_info", using)
        order_column = sql.Identifier(ORDER_COLUMNS[order]).as_string(connection.connection)
        query = f"""
            WITH scoped AS (
                SELECT s.*, sum(s.total_exec_time) OVER () AS scope_total
                FROM {view} s
                WHERE %s::text IS NULL
                   OR s.dbid = (SELECT oid FROM pg_database WHERE datname = %s::text)
            )
            SELECT s.queryid, d.datname, r.rolname, s.calls, s.total_exec_time, s.mean_exec_time,
                   s.max_exec_time, s.stddev_exec_time, s.rows,
                   coalesce(100 * s.total_exec_time / nullif(s.scope_total, 0), 0),
                   100.0 * s.shared_blks_hit / nullif(s.shared_blks_hit + s.shared_blks_read, 0),
                   s.temp_blks_written, s.query,
                   s.scope_total
            FROM scoped s
            LEFT JOIN pg_database d ON d.oid = s.dbid
            LEFT JOIN pg_roles r ON r.oid = s.userid
            WHERE s.calls >= %s::bigint
            ORDER BY s.{order_column} DESC, s.queryid
            LIMIT %s::int
        """
        with _library_loaded(), connection.cursor() as cursor:
            cursor.execute(query, [database, database, min_calls, limit])
            rows = cursor.fetchall()
            cursor.execute(f"SELECT stats_reset, dealloc FROM {info}")
            stats_reset, deallocated = cursor.fetchone()
            scope_total = None
            if not rows:
                cursor.execute(
                    f"SELECT coalesce(sum(total_exec_time), 0) FROM {view} s WHERE %s::text IS NULL"
                    " OR s.dbid = (SELECT oid FROM pg_database WHERE datname = %s::text)",
                    [database, database],
                )
                (scope_total,) = cursor.fetchone()
    statements = [
        Statement(
            queryid=r[0],
            database=r[1],
            user=r[2],
            calls=int(r[3]),
            total_ms=round(float(r[4]), 3),
            mean_ms=round(float(r[5]), 3),
            max_ms=round(float(r[6]), 3),
            stddev_ms=round(float(r[7]), 3),
            rows=int(r[8]),
            share_pct=round(float(r[9]), 3),
            cache_hit_pct=None if r[10] is None else round(float(r[10]), 2),
            temp_written_blocks=int(r[11]),
            query=r[12] or "<insufficient privilege>",
        )
        for r in rows
    ]
    total = float(rows[0][13]) if rows else float(scope_total or 0)
    return SlowQueries(
        database=database,
        order=order,
        total_ms=total,
        statements=statements,
        stats_reset=stats_reset,
        deallocated=deallocated,
    )


def stat_statements_reset(*, all_databases: bool = False, using: str = DEFAULT_DB_ALIAS) -> str:
    """Zero the counters of this database's statements (every database's with `all_databases`).

    `pg_stat_statements_reset(0, <this database's oid>, 0)`: on a shared server, one application's
    reset should not erase another's history. `stats_reset` (pg_stat_statements_info) only moves on a
    full reset. Needs a superuser or a role granted EXECUTE on the function. Returns what was reset.
    """
    with guarded("dbtools.stat_statements_reset", timeout_ms=QUERY_TIMEOUT_MS, using=using):
        schema = _extension_schema(using)
        function = _qualified(schema, "pg_stat_statements_reset", using)
        with _library_loaded(), connections[using].cursor() as cursor:
            if all_databases:
                cursor.execute(f"SELECT {function}()")
                return "all databases"
            cursor.execute(
                f"SELECT {function}(0, d.oid, 0), d.datname"
                " FROM pg_database d WHERE d.datname = current_database()"
            )
            return f"database {cursor.fetchone()[1]}"
