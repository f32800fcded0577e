"""Database health checks for `manage.py dbhealth` and the admin's "Database" page.

Each check is a plain function returning a `CheckResult` (status ok / warn / fail, a headline value, a
short message and a list of detail rows). `run_checks()` runs the chosen ones, each in its own
`guarded` block (a short statement timeout, one attempt), so one slow or failing catalog query becomes
that check's `fail` instead of hanging or aborting the report. Every query reads the system catalogs or
the statistics views with bound parameters; nothing here writes.

The estimates (bloat, "needs vacuum") are the planner's view of the tables, from `pg_class`,
`pg_stats` and `pg_stat_user_tables`; they are only as fresh as the last ANALYZE. How each is computed
is documented next to its query and in `docs/database.md` ("Database health").

Other apps add checks with `register_check()` (the kernel imports nothing from them): `portal`
registers the `tenant_stats_materialized` age check from its `AppConfig.ready()`.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any

from django.db import DEFAULT_DB_ALIAS, connections

from converzia.db.timeouts import guarded

logger = logging.getLogger("converzia.db.health")

# One catalog query per check; none should take more than this, even on a busy server.
CHECK_TIMEOUT_MS = 5_000

# Thresholds (documented in docs/database.md). Sizes in bytes.
CACHE_HIT_WARN_BELOW = 99.0
CACHE_HIT_FAIL_BELOW = 95.0
# Below this many block reads+hits since the stats reset a hit rate means nothing.
CACHE_HIT_MIN_BLOCKS = 10_000
UNUSED_INDEX_WARN_BYTES = 1024 * 1024
BLOAT_MIN_BYTES = 10 * 1024 * 1024
BLOAT_WARN_RATIO = 0.5
BLOAT_FAIL_RATIO = 0.8
BLOAT_FAIL_BYTES = 1024 * 1024 * 1024
CONNECTIONS_WARN_PCT = 75.0
CONNECTIONS_FAIL_PCT = 90.0
SEQUENCE_WARN_PCT = 75.0
SEQUENCE_FAIL_PCT = 90.0
# Transaction ids: PostgreSQL stops assigning new ones 3M short of 2^31; anything past half of that
# means freezing has been failing for a long time.
XID_LIMIT = 2**31
XID_FAIL_PCT = 50.0
DEFAULT_LONG_SECONDS = 60.0
# A long-running query this many times over the threshold fails the check.
LONG_FAIL_FACTOR = 10
# Duplicates Django itself creates and we accept (docs/database.md, "How the duplicate-index test defines
# duplicate"): the `(x_id)` index next to the `(x_id, y_id)` unique key of auth's and PermissionsMixin's
# M2M tables. Listed in the details, but they do not raise the status.
ACCEPTED_DUPLICATE_TABLES = frozenset(
    {
        "public.auth_group_permissions",
        "public.auth_permission",
        "public.users_groups",
        "public.users_user_permissions",
    }
)


class Status(StrEnum):
    OK = "ok"
    WARN = "warn"
    FAIL = "fail"

    @property
    def rank(self) -> int:
        return {"ok": 0, "warn": 1, "fail": 2}[self.value]


@dataclass(frozen=True)
class CheckResult:
    name: str
    status: Status
    value: str
    message: str
    details: list[dict[str, Any]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["status"] = self.status.value
        return data


@dataclass(frozen=True)
class CheckOptions:
    long_seconds: float = DEFAULT_LONG_SECONDS
    using: str = DEFAULT_DB_ALIAS


CheckFn = Callable[[CheckOptions], CheckResult]


@dataclass(frozen=True)
class Check:
    name: str
    title: str
    fn: CheckFn


_REGISTRY: dict[str, Check] = {}


def register_check(name: str, title: str) -> Callable[[CheckFn], CheckFn]:
    """Decorator: add `fn(options) -> CheckResult` to the checks, under `name` (its `--check` name)."""

    def decorator(fn: CheckFn) -> CheckFn:
        _REGISTRY[name] = Check(name=name, title=title, fn=fn)
        return fn

    return decorator


def available_checks() -> list[Check]:
    return list(_REGISTRY.values())


def worst_status(results: Iterable[CheckResult]) -> Status:
    return max((r.status for r in results), key=lambda s: s.rank, default=Status.OK)


def run_checks(
    names: Sequence[str] | None = None,
    *,
    long_seconds: float = DEFAULT_LONG_SECONDS,
    using: str = DEFAULT_DB_ALIAS,
) -> list[CheckResult]:
    """Run the named checks (all when `names` is empty), in registration order.

    Raises `KeyError` naming the first unknown check. A check that raises (a timeout, a missing
    privilege) is reported as `fail` with the error, and the others still run.
    """
    unknown = [name for name in names or () if name not in _REGISTRY]
    if unknown:
        raise KeyError(unknown[0])
    selected = [c for c in _REGISTRY.values() if not names or c.name in names]
    options = CheckOptions(long_seconds=long_seconds, using=using)
    results = []
    for check in selected:
        try:
            results.append(check.fn(options))
        except Exception as exc:  # one broken check must not hide the others
            logger.warning("dbhealth check %s failed: %s", check.name, exc)
            results.append(
                CheckResult(check.name, Status.FAIL, "error", f"Could not run the check: {exc}".strip())
            )
    return results


# --- helpers ----------------------------------------------------------------------------------------


def _query(options: CheckOptions, name: str, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
    """Rows as dicts, under a short statement timeout (one attempt: a check is not worth a retry)."""
    with guarded(f"dbhealth.{name}", timeout_ms=CHECK_TIMEOUT_MS, using=options.using):
        with connections[options.using].cursor() as cursor:
            cursor.execute(sql, list(params))
            columns = [col.name for col in cursor.description]
            return [dict(zip(columns, row, strict=True)) for row in cursor.fetchall()]


def _human_bytes(size: float | int | None) -> str:
    if size is None:
        return "-"
    value = float(size)
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(value) < 1024 or unit == "TB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TB"  # pragma: no cover


def _plural(count: int, noun: str) -> str:
    if count == 1:
        return f"{count} {noun}"
    return f"{count} {noun + 'es' if noun.endswith('x') else noun + 's'}"


# --- indexes ----------------------------------------------------------------------------------------

# Every index in user schemas, with each key column described as the planner sees it: the column
# number (or the expression's text for expression columns), operator class, collation and the
# DESC / NULLS FIRST bits of indoption. INCLUDE columns (past indnkeyatts) do not count.
_INDEX_KEYS_SQL = """
SELECT i.indexrelid::bigint AS index_oid,
       i.indrelid::bigint AS table_oid,
       n.nspname AS schema,
       t.relname AS table_name,
       ic.relname AS index_name,
       am.amname AS method,
       i.indisunique AS is_unique,
       i.indisprimary AS is_primary,
       EXISTS (SELECT 1 FROM pg_constraint con WHERE con.conindid = i.indexrelid) AS backs_constraint,
       coalesce(pg_get_expr(i.indpred, i.indrelid), '') AS predicate,
       pg_relation_size(i.indexrelid) AS size_bytes,
       pg_get_indexdef(i.indexrelid) AS definition,
       ARRAY(
           SELECT concat_ws(
                      '|',
                      CASE WHEN k.attnum <> 0 THEN k.attnum::text
                           ELSE pg_get_indexdef(i.indexrelid, k.ord::int, true) END,
                      i.indclass[k.ord - 1]::text,
                      i.indcollation[k.ord - 1]::text,
                      i.indoption[k.ord - 1]::text)
           FROM unnest(i.indkey::int2[]) WITH ORDINALITY AS k(attnum, ord)
           WHERE k.ord <= i.indnkeyatts
           ORDER BY k.ord
       ) AS key_columns
FROM pg_index i
JOIN pg_class ic ON ic.oid = i.indexrelid
JOIN pg_class t ON t.oid = i.indrelid
JOIN pg_namespace n ON n.oid = t.relnamespace
JOIN pg_am am ON am.oid = ic.relam
WHERE n.nspname NOT IN ('pg_catalog', 'information_schema')
  AND n.nspname NOT LIKE 'pg\\_toast%%'
  AND n.nspname NOT LIKE 'pg\\_temp%%'
ORDER BY n.nspname, t.relname, ic.relname
"""


def _covers(narrow: dict[str, Any], wide: dict[str, Any]) -> bool:
    """True when every lookup `narrow` can serve, `wide` serves as well (same table, method, predicate;
    keys equal, or for btree a leading prefix)."""
    if narrow["index_oid"] == wide["index_oid"] or narrow["table_oid"] != wide["table_oid"]:
        return False
    if narrow["method"] != wide["method"] or narrow["predicate"] != wide["predicate"]:
        return False
    a, b = narrow["key_columns"], wide["key_columns"]
    if a == b:
        return True
    return narrow["method"] == "btree" and len(a) < len(b) and b[: len(a)] == a


def find_duplicate_indexes(indexes: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Pairs (redundant index, the index that covers it).

    A UNIQUE index enforces a rule a wider index does not, so it is only redundant next to an
    identical one; of two identical indexes the one not backing a constraint (else the newer) goes.
    """
    found = []
    for a in indexes:
        for b in indexes:
            if not _covers(a, b):
                continue
            identical = a["key_columns"] == b["key_columns"]
            if a["is_unique"] and not (identical and b["is_unique"]):
                continue
            if identical and (a["is_unique"] == b["is_unique"]):
                # Report one of the two: keep the constraint-backed one, else the older (lower oid).
                keep_b = (b["backs_constraint"], -b["index_oid"]) > (a["backs_constraint"], -a["index_oid"])
                if not keep_b:
                    continue
            found.append(
                {
                    "table": f"{a['schema']}.{a['table_name']}",
                    "index": a["index_name"],
                    "covered_by": b["index_name"],
                    "size": _human_bytes(a["size_bytes"]),
                    "size_bytes": a["size_bytes"],
                    "definition": a["definition"],
                    "covered_by_definition": b["definition"],
                }
            )
    return found


@register_check("duplicate_indexes", "Duplicate indexes")
def check_duplicate_indexes(options: CheckOptions) -> CheckResult:
    indexes = _query(options, "duplicate_indexes", _INDEX_KEYS_SQL)
    # Invalid indexes are reported by their own check; an invalid copy is not a "duplicate".
    duplicates = find_duplicate_indexes(indexes)
    for d in duplicates:
        d["accepted"] = d["table"] in ACCEPTED_DUPLICATE_TABLES
    ours = [d for d in duplicates if not d["accepted"]]
    accepted = len(duplicates) - len(ours)
    note = f" ({accepted} accepted in Django's own auth tables.)" if accepted else ""
    if not ours:
        return CheckResult(
            "duplicate_indexes",
            Status.OK,
            "0",
            f"No duplicates among {len(indexes)} indexes.{note}",
            duplicates,
        )
    wasted = sum(d["size_bytes"] for d in ours)
    return CheckResult(
        "duplicate_indexes",
        Status.WARN,
        str(len(ours)),
        f"{_plural(len(ours), 'index')} covered by another ({_human_bytes(wasted)}); drop them "
        f"(DROP INDEX CONCURRENTLY) after checking nothing else relies on their names.{note}",
        duplicates,
    )


_UNUSED_INDEXES_SQL = """
SELECT s.schemaname AS schema, s.relname AS table_name, s.indexrelname AS index_name,
       pg_relation_size(s.indexrelid) AS size_bytes, pg_get_indexdef(s.indexrelid) AS definition,
       coalesce((SELECT stats_reset FROM pg_stat_database WHERE datname = current_database()),
                pg_postmaster_start_time()) AS stats_reset
FROM pg_stat_user_indexes s
JOIN pg_index i ON i.indexrelid = s.indexrelid
WHERE s.idx_scan = 0
  AND i.indisvalid
  AND NOT i.indisunique
  AND NOT i.indisprimary
  AND NOT EXISTS (SELECT 1 FROM pg_constraint con WHERE con.conindid = s.indexrelid)
ORDER BY pg_relation_size(s.indexrelid) DESC, s.relname, s.indexrelname
"""


@register_check("unused_indexes", "Unused indexes")
def check_unused_indexes(options: CheckOptions) -> CheckResult:
    rows = _query(options, "unused_indexes", _UNUSED_INDEXES_SQL)
    since = rows[0]["stats_reset"] if rows else None
    since_text = f"since {since:%Y-%m-%d %H:%M %Z} (statistics reset or server start)" if since else ""
    details = [
        {
            "table": f"{r['schema']}.{r['table_name']}",
            "index": r["index_name"],
            "size": _human_bytes(r["size_bytes"]),
            "size_bytes": r["size_bytes"],
            "definition": r["definition"],
        }
        for r in rows
    ]
    big = [d for d in details if d["size_bytes"] >= UNUSED_INDEX_WARN_BYTES]
    if not rows:
        return CheckResult(
            "unused_indexes", Status.OK, "0", f"Every non-unique index was scanned {since_text}."
        )
    message = (
        f"{_plural(len(rows), 'index')} never scanned {since_text} "
        f"({_plural(len(big), 'index')} of {_human_bytes(UNUSED_INDEX_WARN_BYTES)} or more). "
        "Scans on replicas are not counted here; check them before dropping."
    )
    return CheckResult("unused_indexes", Status.WARN if big else Status.OK, str(len(rows)), message, details)


_INVALID_INDEXES_SQL = """
SELECT n.nspname AS schema, t.relname AS table_name, ic.relname AS index_name,
       pg_get_indexdef(i.indexrelid) AS definition, pg_relation_size(i.indexrelid) AS size_bytes,
       EXISTS (SELECT 1 FROM pg_stat_progress_create_index p WHERE p.index_relid = i.indexrelid)
           AS being_built
FROM pg_index i
JOIN pg_class ic ON ic.oid = i.indexrelid
JOIN pg_class t ON t.oid = i.indrelid
JOIN pg_namespace n ON n.oid = t.relnamespace
WHERE NOT i.indisvalid
ORDER BY n.nspname, t.relname, ic.relname
"""


@register_check("invalid_indexes", "Invalid indexes")
def check_invalid_indexes(options: CheckOptions) -> CheckResult:
    rows = _query(options, "invalid_indexes", _INVALID_INDEXES_SQL)
    details = [
        {
            "table": f"{r['schema']}.{r['table_name']}",
            "index": r["index_name"],
            "size": _human_bytes(r["size_bytes"]),
            "being_built": r["being_built"],
            "definition": r["definition"],
        }
        for r in rows
    ]
    broken = [d for d in details if not d["being_built"]]
    if not rows:
        return CheckResult("invalid_indexes", Status.OK, "0", "No invalid indexes.")
    if not broken:
        return CheckResult(
            "invalid_indexes",
            Status.OK,
            "0",
            f"{_plural(len(rows), 'index')} being built concurrently right now (invalid until done).",
            details,
        )
    return CheckResult(
        "invalid_indexes",
        Status.FAIL,
        str(len(broken)),
        f"{_plural(len(broken), 'index')} left invalid (a failed CREATE/REINDEX CONCURRENTLY): still "
        "maintained on every write, never used by queries. DROP INDEX CONCURRENTLY and create it again.",
        details,
    )


# --- bloat estimates ----------------------------------------------------------------------------------

# Table bloat, estimated: the bytes a tuple needs are the 23-byte header (plus a null bitmap when the
# table has nullable columns), MAXALIGNed to 8, plus the average widths of its columns from pg_stats
# (weighted by their non-null fraction), plus a 4-byte line pointer. The expected size is
# reltuples of those packed into 8 kB pages minus the 24-byte page header, at the table's fillfactor.
# Anything above that is free space left by dead tuples and updates. Tables without pg_stats rows (never
# analysed) cannot be estimated and are listed as such. Alignment padding between columns is ignored,
# so the estimate errs towards reporting a little bloat, never towards hiding it.
_TABLE_BLOAT_SQL = """
WITH tables AS (
    SELECT c.oid, n.nspname AS schema, c.relname AS table_name, c.relpages, c.reltuples,
           coalesce((SELECT option_value::int FROM pg_options_to_table(c.reloptions)
                     WHERE option_name = 'fillfactor'), 100) AS fillfactor,
           current_setting('block_size')::int AS block_size
    FROM pg_class c
    JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE c.relkind IN ('r', 'm')
      AND n.nspname NOT IN ('pg_catalog', 'information_schema')
      AND n.nspname NOT LIKE 'pg\\_toast%%'
),
widths AS (
    SELECT t.oid,
           sum((1 - s.null_frac) * s.avg_width) AS data_width,
           bool_or(s.null_frac > 0) AS has_nulls,
           count(*) AS analysed_columns
    FROM tables t
    JOIN pg_stats s ON s.schemaname = t.schema AND s.tablename = t.table_name
    GROUP BY t.oid
)
SELECT t.schema, t.table_name, t.relpages, t.reltuples, t.block_size, t.fillfactor,
       w.data_width, w.has_nulls, w.analysed_columns
FROM tables t
LEFT JOIN widths w ON w.oid = t.oid
WHERE t.relpages > 0
ORDER BY t.relpages DESC
"""

# Index bloat, estimated for btree indexes on plain columns: an index tuple is an 8-byte header plus the
# key columns' average widths (from the table's pg_stats), MAXALIGNed, plus a 4-byte line pointer;
# leaf pages hold (block_size - 24-byte header - 16-byte btree special space) x fillfactor (90 by
# default). One metapage is added. Expression and non-btree indexes are skipped.
_INDEX_BLOAT_SQL = """
WITH idx AS (
    SELECT i.indexrelid, n.nspname AS schema, t.relname AS table_name, ic.relname AS index_name,
           ic.relpages, ic.reltuples, i.indrelid, i.indkey,
           coalesce((SELECT option_value::int FROM pg_options_to_table(ic.reloptions)
                     WHERE option_name = 'fillfactor'), 90) AS fillfactor,
           current_setting('block_size')::int AS block_size
    FROM pg_index i
    JOIN pg_class ic ON ic.oid = i.indexrelid
    JOIN pg_class t ON t.oid = i.indrelid
    JOIN pg_namespace n ON n.oid = t.relnamespace
    JOIN pg_am am ON am.oid = ic.relam
    WHERE am.amname = 'btree'
      AND i.indexprs IS NULL
      AND ic.relpages > 0
      AND n.nspname NOT IN ('pg_catalog', 'information_schema')
      AND n.nspname NOT LIKE 'pg\\_toast%%'
),
keys AS (
    SELECT idx.indexrelid,
           sum(s.avg_width) AS data_width,
           count(s.avg_width) AS analysed_columns,
           count(*) AS key_columns
    FROM idx
    CROSS JOIN LATERAL unnest(idx.indkey::int2[]) AS k(attnum)
    JOIN pg_attribute a ON a.attrelid = idx.indrelid AND a.attnum = k.attnum
    LEFT JOIN pg_stats s ON s.schemaname = idx.schema AND s.tablename = idx.table_name
                        AND s.attname = a.attname
    GROUP BY idx.indexrelid
)
SELECT idx.schema, idx.table_name, idx.index_name, idx.relpages, idx.reltuples, idx.block_size,
       idx.fillfactor, keys.data_width, keys.analysed_columns, keys.key_columns
FROM idx JOIN keys ON keys.indexrelid = idx.indexrelid
ORDER BY idx.relpages DESC
"""


def _align(size: float, to: int = 8) -> float:
    return math.ceil(size / to) * to


def _bloat_row(name: str, actual_pages: int, expected_pages: float, block_size: int) -> dict[str, Any]:
    expected_pages = max(expected_pages, 1)
    wasted = max(actual_pages - expected_pages, 0) * block_size
    actual = actual_pages * block_size
    return {
        "name": name,
        "size": _human_bytes(actual),
        "size_bytes": actual,
        "wasted": _human_bytes(wasted),
        "wasted_bytes": round(wasted),
        "bloat_pct": round(100 * wasted / actual, 1) if actual else 0.0,
    }


def _bloat_result(check: str, kind: str, rows: list[dict[str, Any]], unknown: list[str]) -> CheckResult:
    rows.sort(key=lambda r: r["wasted_bytes"], reverse=True)
    flagged = [
        r for r in rows if r["wasted_bytes"] >= BLOAT_MIN_BYTES and r["bloat_pct"] >= 100 * BLOAT_WARN_RATIO
    ]
    failing = [
        r
        for r in flagged
        if r["wasted_bytes"] >= BLOAT_FAIL_BYTES and r["bloat_pct"] >= 100 * BLOAT_FAIL_RATIO
    ]
    total_wasted = sum(r["wasted_bytes"] for r in rows)
    note = f" {_plural(len(unknown), kind)} never analysed, not estimated." if unknown else ""
    details = flagged or rows[:10]
    if failing:
        status, lead = Status.FAIL, f"{_plural(len(failing), kind)} mostly empty space."
    elif flagged:
        status, lead = Status.WARN, f"{_plural(len(flagged), kind)} over {BLOAT_WARN_RATIO:.0%} bloat."
    else:
        status, lead = Status.OK, "No significant bloat."
    return CheckResult(
        check,
        status,
        _human_bytes(total_wasted),
        f"{lead} Estimated reclaimable: {_human_bytes(total_wasted)}.{note}",
        details,
    )


@register_check("table_bloat", "Table bloat (estimate)")
def check_table_bloat(options: CheckOptions) -> CheckResult:
    rows, unknown = [], []
    for r in _query(options, "table_bloat", _TABLE_BLOAT_SQL):
        name = f"{r['schema']}.{r['table_name']}"
        if r["data_width"] is None or r["reltuples"] < 0:
            unknown.append(name)
            continue
        header = _align(23 + (8 if r["has_nulls"] else 0))
        tuple_bytes = header + _align(float(r["data_width"])) + 4
        usable = (r["block_size"] - 24) * r["fillfactor"] / 100
        expected = math.ceil(float(r["reltuples"]) * tuple_bytes / usable)
        rows.append(_bloat_row(name, r["relpages"], expected, r["block_size"]))
    return _bloat_result("table_bloat", "table", rows, unknown)


@register_check("index_bloat", "Index bloat (estimate)")
def check_index_bloat(options: CheckOptions) -> CheckResult:
    rows, unknown = [], []
    for r in _query(options, "index_bloat", _INDEX_BLOAT_SQL):
        name = f"{r['schema']}.{r['index_name']}"
        if r["analysed_columns"] < r["key_columns"] or r["reltuples"] < 0:
            unknown.append(name)
            continue
        tuple_bytes = _align(8 + float(r["data_width"] or 0)) + 4
        usable = (r["block_size"] - 24 - 16) * r["fillfactor"] / 100
        expected = math.ceil(float(r["reltuples"]) * tuple_bytes / usable) + 1
        rows.append(_bloat_row(name, r["relpages"], expected, r["block_size"]))
    return _bloat_result("index_bloat", "index", rows, unknown)


# --- cache hit rates -----------------------------------------------------------------------------------

_CACHE_HIT_SQL = """
SELECT 'heap' AS kind, sum(heap_blks_hit)::bigint AS hit, sum(heap_blks_read)::bigint AS read
FROM pg_statio_user_tables
UNION ALL
SELECT 'index', sum(idx_blks_hit)::bigint, sum(idx_blks_read)::bigint
FROM pg_statio_user_indexes
"""


def _cache_hit_result(name: str, label: str, hit: int, read: int) -> CheckResult:
    total = hit + read
    if total < CACHE_HIT_MIN_BLOCKS:
        return CheckResult(
            name,
            Status.OK,
            "-",
            f"Too little {label} activity ({total} block accesses) to judge the hit rate.",
        )
    rate = 100 * hit / total
    if rate < CACHE_HIT_FAIL_BELOW:
        status = Status.FAIL
    elif rate < CACHE_HIT_WARN_BELOW:
        status = Status.WARN
    else:
        status = Status.OK
    message = f"{rate:.2f} % of {label} block reads served from shared_buffers ({total} accesses)."
    if status is not Status.OK:
        message += " The working set does not fit in memory: raise shared_buffers or the machine's RAM."
    return CheckResult(name, status, f"{rate:.2f} %", message, [{"hit": hit, "read": read}])


@register_check("cache_hit_tables", "Cache hit rate (tables)")
def check_cache_hit_tables(options: CheckOptions) -> CheckResult:
    rows = {r["kind"]: r for r in _query(options, "cache_hit", _CACHE_HIT_SQL)}
    return _cache_hit_result("cache_hit_tables", "table", rows["heap"]["hit"] or 0, rows["heap"]["read"] or 0)


@register_check("cache_hit_indexes", "Cache hit rate (indexes)")
def check_cache_hit_indexes(options: CheckOptions) -> CheckResult:
    rows = {r["kind"]: r for r in _query(options, "cache_hit", _CACHE_HIT_SQL)}
    return _cache_hit_result(
        "cache_hit_indexes", "index", rows["index"]["hit"] or 0, rows["index"]["read"] or 0
    )


# --- activity --------------------------------------------------------------------------------------

_LONG_RUNNING_SQL = """
SELECT a.pid, a.usename AS "user", a.datname AS database, a.state,
       extract(epoch FROM clock_timestamp() - coalesce(
           CASE WHEN a.state LIKE 'idle in transaction%%' THEN a.xact_start END, a.query_start))::float
           AS seconds,
       a.wait_event_type, a.wait_event, left(a.query, 500) AS query
FROM pg_stat_activity a
WHERE a.backend_type = 'client backend'
  AND a.datname = current_database()
  AND a.pid <> pg_backend_pid()
  AND a.state IS NOT NULL AND a.state <> 'idle'
  AND clock_timestamp() - coalesce(
          CASE WHEN a.state LIKE 'idle in transaction%%' THEN a.xact_start END, a.query_start)
      > make_interval(secs => %s::float)
ORDER BY seconds DESC
"""


@register_check("long_running_queries", "Long-running queries")
def check_long_running(options: CheckOptions) -> CheckResult:
    rows = _query(options, "long_running", _LONG_RUNNING_SQL, [options.long_seconds])
    for r in rows:
        r["seconds"] = round(r["seconds"], 1)
    if not rows:
        return CheckResult(
            "long_running_queries",
            Status.OK,
            "0",
            f"Nothing running for more than {options.long_seconds:g} s.",
        )
    worst = rows[0]["seconds"]
    idle_tx = sum(1 for r in rows if (r["state"] or "").startswith("idle in transaction"))
    status = Status.FAIL if worst > options.long_seconds * LONG_FAIL_FACTOR else Status.WARN
    message = (
        f"{_plural(len(rows), 'session')} over {options.long_seconds:g} s (longest {worst:.0f} s"
        + (f"; {idle_tx} idle in transaction, holding locks and holding back vacuum" if idle_tx else "")
        + "). pg_cancel_backend(pid) stops a query; pg_terminate_backend(pid) ends a session."
    )
    return CheckResult("long_running_queries", status, str(len(rows)), message, rows)


_BLOCKED_SQL = """
SELECT blocked.pid, blocked.usename AS "user", blocked.state,
       extract(epoch FROM clock_timestamp() - blocked.query_start)::float AS waiting_seconds,
       blocked.wait_event_type, blocked.wait_event,
       left(blocked.query, 300) AS query,
       pg_blocking_pids(blocked.pid) AS blocked_by,
       ARRAY(SELECT b.state || ': ' || left(b.query, 200) FROM pg_stat_activity b
             WHERE b.pid = ANY (pg_blocking_pids(blocked.pid)) ORDER BY b.pid) AS blocking_queries
FROM pg_stat_activity blocked
WHERE blocked.datname = current_database()
  AND cardinality(pg_blocking_pids(blocked.pid)) > 0
ORDER BY waiting_seconds DESC
"""


@register_check("blocked_queries", "Blocked queries")
def check_blocked(options: CheckOptions) -> CheckResult:
    rows = _query(options, "blocked", _BLOCKED_SQL)
    for r in rows:
        r["waiting_seconds"] = round(r["waiting_seconds"] or 0.0, 1)
        r["blocked_by"] = list(r["blocked_by"])
        r["blocking_queries"] = list(r["blocking_queries"])
    if not rows:
        return CheckResult("blocked_queries", Status.OK, "0", "No session is waiting for another's lock.")
    worst = rows[0]["waiting_seconds"]
    blockers = sorted({pid for r in rows for pid in r["blocked_by"]})
    status = Status.FAIL if worst > options.long_seconds else Status.WARN
    return CheckResult(
        "blocked_queries",
        status,
        str(len(rows)),
        f"{_plural(len(rows), 'session')} waiting on a lock (longest {worst:.0f} s), "
        f"blocked by pid {', '.join(map(str, blockers))}.",
        rows,
    )


_CONNECTIONS_SQL = """
SELECT coalesce(a.state, a.backend_type) AS state, count(*)::int AS connections,
       (count(*) FILTER (WHERE a.datname = current_database()))::int AS this_database,
       current_setting('max_connections')::int AS max_connections,
       current_setting('superuser_reserved_connections')::int AS reserved
FROM pg_stat_activity a
WHERE a.backend_type = 'client backend'
GROUP BY 1
ORDER BY 2 DESC
"""


@register_check("connections", "Connections")
def check_connections(options: CheckOptions) -> CheckResult:
    rows = _query(options, "connections", _CONNECTIONS_SQL)
    used = sum(r["connections"] for r in rows)
    max_connections = rows[0]["max_connections"] if rows else 0
    reserved = rows[0]["reserved"] if rows else 0
    available = max(max_connections - reserved, 1)
    pct = 100 * used / available
    by_state = ", ".join(f"{r['connections']} {r['state']}" for r in rows)
    status = (
        Status.FAIL
        if pct >= CONNECTIONS_FAIL_PCT
        else Status.WARN
        if pct >= CONNECTIONS_WARN_PCT
        else Status.OK
    )
    here = sum(r["this_database"] for r in rows)
    message = (
        f"{used} of {available} client connections in use ({pct:.0f} %; {here} to this database): {by_state}."
    )
    if status is not Status.OK:
        message += " Put a pooler (PgBouncer) in front or lower the app's pool sizes."
    return CheckResult(
        "connections",
        status,
        f"{pct:.0f} %",
        message,
        [{k: r[k] for k in ("state", "connections", "this_database")} for r in rows],
    )


# --- limits ---------------------------------------------------------------------------------------------

# A sequence's real limit is the smaller of its own maximum and the maximum of the column it feeds (an
# int4 column behind a bigint sequence overflows at 2^31 - 1, however large the sequence may count).
_SEQUENCES_SQL = """
SELECT s.schemaname AS schema, s.sequencename AS sequence, s.last_value, s.increment_by,
       s.min_value, s.max_value, s.data_type::text AS sequence_type,
       col.table_name, col.column_name, col.column_type
FROM pg_sequences s
LEFT JOIN LATERAL (
    SELECT t.relname AS table_name, a.attname AS column_name, format_type(a.atttypid, NULL) AS column_type
    FROM pg_depend d
    JOIN pg_class t ON t.oid = d.refobjid
    JOIN pg_attribute a ON a.attrelid = d.refobjid AND a.attnum = d.refobjsubid
    WHERE d.classid = 'pg_class'::regclass
      AND d.objid = format('%%I.%%I', s.schemaname, s.sequencename)::regclass
      AND d.refclassid = 'pg_class'::regclass
      AND d.deptype IN ('a', 'i')
    LIMIT 1
) col ON true
ORDER BY s.schemaname, s.sequencename
"""

_TYPE_MAX = {"smallint": 2**15 - 1, "integer": 2**31 - 1, "bigint": 2**63 - 1}


@register_check("sequences", "Sequence exhaustion")
def check_sequences(options: CheckOptions) -> CheckResult:
    details = []
    for r in _query(options, "sequences", _SEQUENCES_SQL):
        ascending = r["increment_by"] > 0
        limit = r["max_value"] if ascending else r["min_value"]
        column_max = _TYPE_MAX.get(r["column_type"] or "")
        if column_max is not None:
            limit = min(limit, column_max) if ascending else max(limit, -column_max - 1)
        last = r["last_value"]
        used_pct = 0.0 if last is None or not limit else 100 * last / limit
        details.append(
            {
                "sequence": f"{r['schema']}.{r['sequence']}",
                "column": f"{r['table_name']}.{r['column_name']}" if r["table_name"] else "",
                "column_type": r["column_type"] or r["sequence_type"],
                "last_value": last,
                "limit": limit,
                "used_pct": round(max(used_pct, 0.0), 4),
            }
        )
    details.sort(key=lambda d: d["used_pct"], reverse=True)
    if not details:
        return CheckResult("sequences", Status.OK, "0 %", "No sequences.")
    worst = details[0]
    pct = worst["used_pct"]
    status = (
        Status.FAIL if pct >= SEQUENCE_FAIL_PCT else Status.WARN if pct >= SEQUENCE_WARN_PCT else Status.OK
    )
    message = (
        f"Highest: {worst['sequence']} at {pct:.2f} % of its {worst['column_type']} range "
        f"({len(details)} sequences)."
    )
    if status is not Status.OK:
        message += " Migrate the column (and sequence) to bigint before it runs out."
    return CheckResult("sequences", status, f"{pct:.2f} %", message, details)


_WRAPAROUND_SQL = """
SELECT d.datname AS database, age(d.datfrozenxid)::bigint AS xid_age,
       mxid_age(d.datminmxid)::bigint AS multixact_age,
       current_setting('autovacuum_freeze_max_age')::bigint AS freeze_max_age,
       d.datname = current_database() AS is_current
FROM pg_database d
WHERE d.datallowconn
ORDER BY age(d.datfrozenxid) DESC
"""

_OLDEST_TABLES_SQL = """
SELECT n.nspname || '.' || c.relname AS table_name, age(c.relfrozenxid)::bigint AS xid_age
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'm', 't') AND c.relfrozenxid <> 0
ORDER BY age(c.relfrozenxid) DESC
LIMIT 5
"""


@register_check("xid_wraparound", "Transaction id wraparound")
def check_wraparound(options: CheckOptions) -> CheckResult:
    databases = _query(options, "wraparound", _WRAPAROUND_SQL)
    tables = _query(options, "wraparound_tables", _OLDEST_TABLES_SQL)
    worst = databases[0]
    age, freeze_max = worst["xid_age"], worst["freeze_max_age"]
    pct = 100 * age / XID_LIMIT
    if pct >= XID_FAIL_PCT:
        status = Status.FAIL
    elif age > freeze_max:
        status = Status.WARN
    else:
        status = Status.OK
    message = (
        f"Oldest unfrozen transaction id: age {age:,} in {worst['database']} ({pct:.2f} % of 2^31; "
        f"anti-wraparound vacuum starts at {freeze_max:,})."
    )
    if status is not Status.OK:
        message += " VACUUM (FREEZE) the oldest tables below; look for long transactions or stale slots."
    details = [
        {"database": d["database"], "xid_age": d["xid_age"], "multixact_age": d["multixact_age"]}
        for d in databases
    ]
    details += [{"table": t["table_name"], "xid_age": t["xid_age"]} for t in tables]
    return CheckResult("xid_wraparound", status, f"{pct:.2f} %", message, details)


# --- vacuum and analyze -------------------------------------------------------------------------------

# Autovacuum's own trigger, per table: dead tuples > threshold + scale_factor x reltuples (and for
# ANALYZE, rows changed since the last analyse > the analyse threshold + scale factor x reltuples), with
# per-table reloptions overriding the server settings, as autovacuum reads them. A table never analysed
# (reltuples = -1) uses its live-row count.
_MAINTENANCE_SQL = """
WITH t AS (
    SELECT s.relid, s.schemaname AS schema, s.relname AS table_name, s.n_live_tup, s.n_dead_tup,
           s.n_mod_since_analyze, greatest(s.last_vacuum, s.last_autovacuum) AS last_vacuum,
           greatest(s.last_analyze, s.last_autoanalyze) AS last_analyze,
           CASE WHEN c.reltuples < 0 THEN s.n_live_tup ELSE c.reltuples END AS reltuples,
           c.reloptions
    FROM pg_stat_user_tables s JOIN pg_class c ON c.oid = s.relid
)
SELECT t.schema, t.table_name, t.n_live_tup, t.n_dead_tup, t.n_mod_since_analyze,
       t.last_vacuum, t.last_analyze,
       coalesce((SELECT option_value::float FROM pg_options_to_table(t.reloptions)
                 WHERE option_name = 'autovacuum_vacuum_threshold'),
                current_setting('autovacuum_vacuum_threshold')::float)
       + coalesce((SELECT option_value::float FROM pg_options_to_table(t.reloptions)
                   WHERE option_name = 'autovacuum_vacuum_scale_factor'),
                  current_setting('autovacuum_vacuum_scale_factor')::float) * t.reltuples
           AS vacuum_threshold,
       coalesce((SELECT option_value::float FROM pg_options_to_table(t.reloptions)
                 WHERE option_name = 'autovacuum_analyze_threshold'),
                current_setting('autovacuum_analyze_threshold')::float)
       + coalesce((SELECT option_value::float FROM pg_options_to_table(t.reloptions)
                   WHERE option_name = 'autovacuum_analyze_scale_factor'),
                  current_setting('autovacuum_analyze_scale_factor')::float) * t.reltuples
           AS analyze_threshold,
       current_setting('autovacuum') = 'on' AS autovacuum_on
FROM t
ORDER BY t.n_dead_tup DESC, t.schema, t.table_name
"""


def _autovacuum_note(rows: list[dict[str, Any]]) -> str:
    if rows and not rows[0]["autovacuum_on"]:
        return " autovacuum is OFF on this server: nothing will do it until someone runs it."
    return ""


@register_check("vacuum", "Tables needing VACUUM")
def check_vacuum(options: CheckOptions) -> CheckResult:
    rows = _query(options, "maintenance", _MAINTENANCE_SQL)
    due = [
        {
            "table": f"{r['schema']}.{r['table_name']}",
            "dead_tuples": r["n_dead_tup"],
            "live_tuples": r["n_live_tup"],
            "threshold": round(r["vacuum_threshold"]),
            "last_vacuum": r["last_vacuum"].isoformat() if r["last_vacuum"] else None,
        }
        for r in rows
        if r["n_dead_tup"] > r["vacuum_threshold"]
    ]
    note = _autovacuum_note(rows)
    if not due:
        return CheckResult("vacuum", Status.OK, "0", f"No table past its autovacuum threshold.{note}")
    return CheckResult(
        "vacuum",
        Status.WARN,
        str(len(due)),
        f"{_plural(len(due), 'table')} past the dead-tuple threshold: VACUUM (ANALYZE) them.{note}",
        due,
    )


@register_check("analyze", "Tables needing ANALYZE")
def check_analyze(options: CheckOptions) -> CheckResult:
    rows = _query(options, "maintenance", _MAINTENANCE_SQL)
    due = [
        {
            "table": f"{r['schema']}.{r['table_name']}",
            "changed_since_analyze": r["n_mod_since_analyze"],
            "live_tuples": r["n_live_tup"],
            "threshold": round(r["analyze_threshold"]),
            "last_analyze": r["last_analyze"].isoformat() if r["last_analyze"] else None,
        }
        for r in rows
        if r["n_mod_since_analyze"] > r["analyze_threshold"]
        or (r["last_analyze"] is None and r["n_live_tup"] > 0)
    ]
    note = _autovacuum_note(rows)
    if not due:
        return CheckResult("analyze", Status.OK, "0", f"Planner statistics are current.{note}")
    never = sum(1 for d in due if d["last_analyze"] is None)
    return CheckResult(
        "analyze",
        Status.WARN,
        str(len(due)),
        f"{_plural(len(due), 'table')} with stale planner statistics ({never} never analysed): "
        f"ANALYZE them.{note}",
        due,
    )
