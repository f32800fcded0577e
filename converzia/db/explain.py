"""EXPLAIN checks of named query patterns: does each read the app runs still use its index?

A pattern (`QueryPattern`) names one statement the application runs, says which index it should use
and knows how to produce the statement's EXACT SQL and parameters: its builder calls the real
selector and records what it sends to PostgreSQL (`capture`), so the check follows the code rather
than a copy of it. The patterns are declared in one place, `portal/explain_patterns.py` (portal
composes every domain; `patterns()` finds it through `autodiscover_modules`, so nothing here
imports portal).

`pattern_check` runs a builder and `EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON)` of its statement inside
one transaction that is always rolled back, under `guarded` (statement and lock timeouts), then
applies the performance guide's checklist to the plan tree:

- FAIL: an expected index is not used, or a Seq Scan reads a large table: one the pattern expects
  an index on with `reltuples` above `Thresholds.large_rows`, or any table above
  `seq_scan_fail_rows` (a join partner between the two only WARNs: reading a few thousand pages
  whole for a hash join can beat hundreds of index probes). A timeout or an error is ERROR, which
  fails too.
- SKIP: an expected index is not used but its table is small: on small tables the planner rightly
  prefers a seq scan, so the expectation is not checked (and the reason is said).
- WARN: the planner's row estimate is off by more than `estimate_factor` on a node with enough rows;
  a Nested Loop whose outer input is large; a sort or hash that spilled to disk; an expected
  index-only scan that is a plain index scan, or that fetched heap pages (informational: VACUUM
  sets the visibility map).
"""

from __future__ import annotations

import fnmatch
import json
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from django.db import DEFAULT_DB_ALIAS, connections, transaction
from django.utils.module_loading import autodiscover_modules

from converzia.db.timeouts import guarded
from converzia.errors import QueryTimeout

OK, WARN, SKIP, KNOWN, FAIL, ERROR = "OK", "WARN", "SKIP", "KNOWN", "FAIL", "ERROR"
STATUSES = (OK, WARN, SKIP, KNOWN, FAIL, ERROR)
# The pattern's status is its worst finding, in this order (a SKIP means "not validated", which
# says more than a warning about a plan that was validated). KNOWN is a FAIL of a pattern marked
# with a `known_issue`: reported, but it does not fail the check.
_SEVERITY = {OK: 0, WARN: 1, SKIP: 2, KNOWN: 3, FAIL: 4, ERROR: 5}
FAILING = frozenset({FAIL, ERROR})
INDEX_NODE_TYPES = frozenset({"Index Scan", "Index Only Scan", "Bitmap Index Scan"})
# Where a row misestimate is born (nodes above these mostly inherit it).
_ESTIMATED_NODE_TYPES = frozenset(
    {
        "Seq Scan",
        "Index Scan",
        "Index Only Scan",
        "Bitmap Heap Scan",
        "Bitmap Index Scan",
        "Nested Loop",
        "Hash Join",
        "Merge Join",
    }
)


class ExplainError(Exception):
    """A builder could not produce its statement (nothing matched, no sample data)."""


class Skip(Exception):  # noqa: N818 — a verdict, not an error
    """Raised by a builder when the data needed for a realistic statement is not there."""


@dataclass(frozen=True)
class Statement:
    sql: str
    # As the app passed them: a sequence for %s placeholders, a mapping for %(name)s ones.
    params: tuple[Any, ...] | Mapping[str, Any] = ()


@dataclass(frozen=True)
class Expect:
    """The plan must use one of `indexes` (any; usually one name) of `table`.

    When it does not and `table` holds fewer than `min_rows` rows (default `Thresholds.large_rows`),
    the expectation is SKIPped: the planner is right to prefer a seq scan over a small table.
    `index_only` asks for an Index Only Scan (only a WARN when it is not).
    """

    table: str
    indexes: tuple[str, ...]
    index_only: bool = False
    min_rows: int | None = None


@dataclass(frozen=True)
class QueryPattern:
    name: str
    description: str
    expect: tuple[Expect, ...]
    build: Callable[[ExplainRun], Statement]
    # Tables a Seq Scan may read whatever their size, each with the reason (none today).
    allow_seq_scan: dict[str, str] = field(default_factory=dict)
    # A known, accepted-for-now failure (with where it is tracked): a FAIL is reported as KNOWN and
    # does not fail the check; when the pattern passes again, a note says the mark can go.
    known_issue: str | None = None


@dataclass(frozen=True)
class Thresholds:
    large_rows: int = 10_000
    seq_scan_fail_rows: int = 100_000
    estimate_factor: float = 10.0
    estimate_min_rows: int = 100
    nested_loop_rows: int = 1_000
    timeout_ms: int = 10_000


@dataclass
class Finding:
    level: str
    message: str


@dataclass
class PatternResult:
    name: str
    description: str
    status: str
    time_ms: float | None = None
    planning_ms: float | None = None
    indexes_used: list[str] = field(default_factory=list)
    index_tables: dict[str, str] = field(default_factory=dict)  # index → its table
    seq_scans: list[str] = field(default_factory=list)
    rows: int | None = None
    findings: list[Finding] = field(default_factory=list)
    sql: str | None = None
    params: list[Any] | dict[str, Any] | None = None
    plan: dict[str, Any] | None = None

    def as_dict(self, *, with_plan: bool = True) -> dict[str, Any]:
        return {
            "name": self.name,
            "description": self.description,
            "status": self.status,
            "time_ms": self.time_ms,
            "planning_ms": self.planning_ms,
            "indexes_used": self.indexes_used,
            "index_tables": self.index_tables,
            "seq_scans": self.seq_scans,
            "rows": self.rows,
            "notes": [{"level": f.level, "message": f.message} for f in self.findings],
            "sql": self.sql,
            "params": self.params,
            **({"plan": self.plan} if with_plan else {}),
        }


# --- the registry ------------------------------------------------------------------------------------

_REGISTRY: dict[str, QueryPattern] = {}


def register(pattern: QueryPattern) -> QueryPattern:
    if pattern.name in _REGISTRY and _REGISTRY[pattern.name] is not pattern:
        raise ValueError(f"Query pattern {pattern.name!r} is registered twice.")
    _REGISTRY[pattern.name] = pattern
    return pattern


def patterns() -> dict[str, QueryPattern]:
    """Every registered pattern, by name (imports each installed app's `explain_patterns`)."""
    autodiscover_modules("explain_patterns")
    return dict(sorted(_REGISTRY.items()))


def patterns_select(selectors: Sequence[str] | None) -> list[QueryPattern]:
    """The patterns whose names match any of `selectors` (exact names or globs); all without any.
    Raises `LookupError` naming the selectors that matched nothing."""
    known = patterns()
    if not selectors:
        return list(known.values())
    chosen: dict[str, QueryPattern] = {}
    unmatched = []
    for selector in selectors:
        names = [name for name in known if fnmatch.fnmatchcase(name, selector)]
        if not names:
            unmatched.append(selector)
        chosen.update({name: known[name] for name in names})
    if unmatched:
        raise LookupError(unmatched)
    return [known[name] for name in known if name in chosen]


# --- capturing the statements the app runs -----------------------------------------------------------


class _Stopped(Exception):  # noqa: N818 — control flow
    pass


@dataclass
class Captured:
    statements: list[Statement] = field(default_factory=list)

    def pick(self, match: Callable[[str], bool], *, nth: int = 0) -> Statement:
        found = [statement for statement in self.statements if match(statement.sql)]
        if len(found) <= nth:
            seen = "\n  ".join(statement.sql[:160] for statement in self.statements) or "(none)"
            raise ExplainError(f"No captured statement matched; the code ran:\n  {seen}")
        return found[nth]


def sql_has(*fragments: str, without: Sequence[str] = ()) -> Callable[[str], bool]:
    """A statement matcher: the SQL contains every fragment and none of `without`."""
    return lambda sql: all(f in sql for f in fragments) and not any(w in sql for w in without)


def capture(
    fn: Callable[[], Any],
    *,
    stop_at: Callable[[str], bool] | None = None,
    using: str = DEFAULT_DB_ALIAS,
) -> Captured:
    """Run `fn` and record every statement it sends (SQL with %s placeholders, and its params).

    With `stop_at`, the first statement it matches is recorded but NOT executed and `fn` is
    abandoned there: for code that writes after the read we check (the delivery claim). Callers run
    this inside a transaction they roll back.
    """
    captured = Captured()

    def wrapper(execute: Callable[..., Any], sql: str, params: Any, many: bool, context: Any) -> Any:
        if not many:
            kept = dict(params) if isinstance(params, Mapping) else tuple(params or ())
            captured.statements.append(Statement(sql=sql, params=kept))
            if stop_at is not None and stop_at(sql):
                raise _Stopped()
        return execute(sql, params, many, context)

    with connections[using].execute_wrapper(wrapper):
        try:
            fn()
        except _Stopped:
            pass
    return captured


class ExplainRun:
    """One run of the check: thresholds, table sizes and a memo the builders share (sample data,
    captured statements), so one call of a selector serves every pattern that picks from it."""

    def __init__(self, thresholds: Thresholds, *, using: str = DEFAULT_DB_ALIAS) -> None:
        self.thresholds = thresholds
        self.using = using
        self._memo: dict[str, Any] = {}
        self._sizes: dict[str, float] | None = None

    def memo(self, key: str, compute: Callable[[], Any]) -> Any:
        if key not in self._memo:
            self._memo[key] = compute()
        return self._memo[key]

    def captured(
        self, key: str, fn: Callable[[], Any], *, stop_at: Callable[[str], bool] | None = None
    ) -> Captured:
        return self.memo(f"captured:{key}", lambda: capture(fn, stop_at=stop_at, using=self.using))

    def index_exists(self, name: str) -> bool:
        if "indexes" not in self._memo:
            with connections[self.using].cursor() as cursor:
                cursor.execute(
                    "SELECT relname FROM pg_class"
                    " WHERE relnamespace = 'public'::regnamespace AND relkind = 'i'"
                )
                self._memo["indexes"] = {row[0] for row in cursor.fetchall()}
        return name in self._memo["indexes"]

    def table_rows(self, table: str) -> float | None:
        """The planner's row count of `table` (pg_class.reltuples); None when never analyzed."""
        if self._sizes is None:
            with connections[self.using].cursor() as cursor:
                cursor.execute(
                    "SELECT relname, reltuples FROM pg_class"
                    " WHERE relnamespace = 'public'::regnamespace AND relkind IN ('r', 'm', 'p')"
                )
                self._sizes = dict(cursor.fetchall())
        rows = self._sizes.get(table)
        return None if rows is None or rows < 0 else rows


# --- the check -----------------------------------------------------------------------------------------


def _nodes(
    plan: dict[str, Any], *, under_limit: bool = False, parent: dict[str, Any] | None = None
) -> Iterator[tuple[dict[str, Any], bool, dict[str, Any] | None]]:
    """Every node of the tree, with whether a Limit above it may have stopped it early, and its parent."""
    yield plan, under_limit, parent
    below = under_limit or plan.get("Node Type") == "Limit"
    for child in plan.get("Plans", ()):
        yield from _nodes(child, under_limit=below, parent=plan)


def _describe(node: dict[str, Any]) -> str:
    label = node.get("Node Type", "?")
    if node.get("Index Name"):
        label += f" using {node['Index Name']}"
    if node.get("Relation Name"):
        label += f" on {node['Relation Name']}"
    return label


def _fmt_rows(rows: float | None) -> str:
    return "unknown" if rows is None else f"~{int(rows):,}"


def plan_check(
    plan_root: dict[str, Any], pattern: QueryPattern, run: ExplainRun, result: PatternResult
) -> None:
    """Apply the checklist to one EXPLAIN (ANALYZE, FORMAT JSON) document; fills `result`."""
    limits = run.thresholds
    plan = plan_root["Plan"]
    result.time_ms = round(float(plan_root.get("Execution Time", 0.0)), 2)
    result.planning_ms = round(float(plan_root.get("Planning Time", 0.0)), 2)
    result.rows = int(plan.get("Actual Rows", 0))
    add = result.findings.append
    used: dict[str, list[dict[str, Any]]] = {}
    expected_tables = {expect.table for expect in pattern.expect}
    for node, under_limit, parent in _nodes(plan):
        node_type = node.get("Node Type", "")
        if node_type in INDEX_NODE_TYPES and node.get("Index Name"):
            used.setdefault(node["Index Name"], []).append(node)
            # A Bitmap Index Scan names no table: its Bitmap Heap Scan (or BitmapAnd/Or above) does.
            table = node.get("Relation Name") or (parent or {}).get("Relation Name", "?")
            result.index_tables[node["Index Name"]] = table
        relation = node.get("Relation Name")
        if node_type == "Seq Scan" and relation:
            size = run.table_rows(relation)
            result.seq_scans.append(relation)
            expected_here = relation in expected_tables
            if relation in pattern.allow_seq_scan:
                add(Finding(OK, f"Seq Scan on {relation} allowed: {pattern.allow_seq_scan[relation]}"))
            elif size is not None and size > limits.large_rows:
                # A table the pattern expects an index on fails from large_rows on. A join partner
                # read whole (hash join) is a cost choice that flips with size: at a few thousand pages
                # it can beat hundreds of index probes, so it only warns until seq_scan_fail_rows.
                fails = expected_here or size > limits.seq_scan_fail_rows
                limit = limits.large_rows if expected_here or not fails else limits.seq_scan_fail_rows
                add(
                    Finding(
                        FAIL if fails else WARN,
                        f"Seq Scan on {relation} ({_fmt_rows(size)} rows > {limit:,})",
                    )
                )
        loops = node.get("Actual Loops", 0)
        if loops and node_type in _ESTIMATED_NODE_TYPES:
            estimated, actual = float(node.get("Plan Rows", 0)), float(node.get("Actual Rows", 0))
            high, low = max(estimated, actual), max(min(estimated, actual), 1.0)
            stopped_early = under_limit and actual < estimated
            if high >= limits.estimate_min_rows and high / low > limits.estimate_factor and not stopped_early:
                add(
                    Finding(
                        WARN,
                        f"rows estimated {int(estimated):,} vs actual {int(actual):,} "
                        f"({high / low:.0f}x) at {_describe(node)}",
                    )
                )
        if node_type == "Nested Loop" and node.get("Plans"):
            outer = node["Plans"][0]
            outer_rows = outer.get("Actual Rows", 0) * outer.get("Actual Loops", 0)
            if outer_rows > limits.nested_loop_rows:
                add(
                    Finding(
                        WARN,
                        f"Nested Loop over {int(outer_rows):,} outer rows ({_describe(outer)}) "
                        f"> {limits.nested_loop_rows:,}",
                    )
                )
        if node.get("Sort Space Type") == "Disk" or "external" in str(node.get("Sort Method", "")):
            add(Finding(WARN, f"{node_type} spilled to disk ({node.get('Sort Space Used', '?')} kB)"))
        if node_type == "Hash" and int(node.get("Hash Batches", 1)) > 1:
            add(Finding(WARN, f"Hash spilled to disk ({node['Hash Batches']} batches)"))
    result.indexes_used = sorted(used)

    for expect in pattern.expect:
        nodes = [node for name in expect.indexes for node in used.get(name, [])]
        wanted = " or ".join(expect.indexes)
        if not nodes:
            size = run.table_rows(expect.table)
            floor = expect.min_rows if expect.min_rows is not None else limits.large_rows
            if size is None or size < floor:
                add(
                    Finding(
                        SKIP,
                        f"{wanted} not used, but {expect.table} has {_fmt_rows(size)} rows (< {floor:,}): "
                        "on a table this small the planner may rightly prefer another plan",
                    )
                )
            else:
                chose = ", ".join(result.indexes_used) or "no index"
                missing = [name for name in expect.indexes if not run.index_exists(name)]
                absent = (
                    f" ({' and '.join(missing)} does not exist in this database: a migration not applied?)"
                    if len(missing) == len(expect.indexes)
                    else ""
                )
                add(Finding(FAIL, f"expected {wanted} on {expect.table}; the plan uses {chose}{absent}"))
            continue
        if expect.index_only:
            only = [node for node in nodes if node["Node Type"] == "Index Only Scan"]
            if not only:
                add(Finding(WARN, f"expected an index-only scan on {wanted}; got {nodes[0]['Node Type']}"))
            fetches = sum(int(node.get("Heap Fetches", 0)) for node in only)
            if fetches:
                add(
                    Finding(
                        WARN,
                        f"{fetches:,} heap fetches on the index-only scan of {wanted} "
                        "(informational: VACUUM sets the visibility map)",
                    )
                )


def _status(findings: Sequence[Finding]) -> str:
    return max((f.level for f in findings), key=_SEVERITY.__getitem__, default=OK)


@contextmanager
def _rolled_back(using: str) -> Iterator[None]:
    """A transaction whose effects are always discarded, whatever happens inside."""
    with transaction.atomic(using=using):
        try:
            yield
        finally:
            transaction.set_rollback(True, using=using)


def pattern_check(pattern: QueryPattern, run: ExplainRun) -> PatternResult:
    """Build the pattern's statement and EXPLAIN ANALYZE it; everything is rolled back."""
    result = PatternResult(name=pattern.name, description=pattern.description, status=OK)
    connection = connections[run.using]
    started = time.perf_counter()
    try:
        with (
            _rolled_back(run.using),
            guarded(f"explain_check.{pattern.name}", timeout_ms=run.thresholds.timeout_ms, using=run.using),
        ):
            statement = pattern.build(run)
            result.sql, result.params = statement.sql, _jsonable(statement.params)
            with connection.cursor() as cursor:
                cursor.execute("EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) " + statement.sql, statement.params)
                document = cursor.fetchone()[0]
        if isinstance(document, str):
            document = json.loads(document)
        result.plan = document[0]
        plan_check(result.plan, pattern, run, result)
    except Skip as exc:
        result.findings.append(Finding(SKIP, str(exc)))
    except QueryTimeout:
        elapsed = (time.perf_counter() - started) * 1000
        result.findings.append(
            Finding(
                ERROR,
                f"timed out after {elapsed:.0f} ms (limit {run.thresholds.timeout_ms} ms per statement)",
            )
        )
    except Exception as exc:  # noqa: BLE001 — one broken pattern must not hide the others' results
        result.findings.append(Finding(ERROR, f"{type(exc).__name__}: {exc}"))
    # The same message from several nodes (a misestimate repeated up a join chain) once.
    unique: dict[tuple[str, str], Finding] = {}
    for finding in result.findings:
        unique.setdefault((finding.level, finding.message), finding)
    result.findings = list(unique.values())
    result.status = _status(result.findings)
    if pattern.known_issue:
        if result.status == FAIL:
            result.status = KNOWN
            result.findings.append(Finding(KNOWN, f"known issue: {pattern.known_issue}"))
        elif result.status in (OK, WARN):
            result.findings.append(
                Finding(WARN, f"known issue did not reproduce, remove the mark? ({pattern.known_issue})")
            )
            result.status = _status(result.findings)
    return result


def patterns_check(
    selected: Sequence[QueryPattern], *, thresholds: Thresholds | None = None, using: str = DEFAULT_DB_ALIAS
) -> list[PatternResult]:
    run = ExplainRun(thresholds or Thresholds(), using=using)
    return [pattern_check(pattern, run) for pattern in selected]


def _jsonable(value: Any) -> Any:
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    return str(value)


def plan_lines(plan: dict[str, Any], depth: int = 0) -> list[str]:
    """The plan as indented one-liners: node, rows estimated/actual × loops, time."""
    line = (
        f"{'  ' * depth}-> {_describe(plan)}  (rows est {plan.get('Plan Rows', '?')}, "
        f"actual {plan.get('Actual Rows', '?')} x{plan.get('Actual Loops', '?')}, "
        f"{plan.get('Actual Total Time', '?')} ms)"
    )
    extra = [
        f"{'  ' * depth}   {key}: {plan[key]}"
        for key in ("Index Cond", "Filter", "Heap Fetches")
        if key in plan
    ]
    lines = [line, *extra]
    for child in plan.get("Plans", ()):
        lines.extend(plan_lines(child, depth + 1))
    return lines
