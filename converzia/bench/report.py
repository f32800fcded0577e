"""Percentiles, pass/fail against the targets, and the table and JSON of a run."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

from converzia.bench.http import LoadResult
from converzia.bench.scenarios import Scenario


def percentile_ms(latencies_s: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile in milliseconds (no interpolation: every value was really observed)."""
    if not latencies_s:
        return math.nan
    ordered = sorted(latencies_s)
    rank = max(1, math.ceil(pct / 100 * len(ordered)))
    return ordered[rank - 1] * 1000


@dataclass(frozen=True)
class ScenarioResult:
    name: str
    description: str
    requests: int
    failed: int
    p50_ms: float
    p95_ms: float
    p99_ms: float
    max_ms: float
    requests_per_s: float
    guide_target_ms: tuple[float, float, float] | None
    our_target_ms: tuple[float, float] | None
    meets_guide: bool | None
    meets_ours: bool | None
    raw_sql_p50_ms: float | None
    raw_sql_statements: int | None
    overhead_ratio: float | None
    ratio_target: float | None
    meets_ratio: bool | None
    first_failure: str | None

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def scenario_result(
    scenario: Scenario, load: LoadResult, *, raw_sql_p50_ms: float | None, raw_sql_statements: int | None
) -> ScenarioResult:
    p50, p95, p99 = (percentile_ms(load.latencies_s, pct) for pct in (50, 95, 99))
    guide, ours = scenario.targets.guide_ms, scenario.targets.ours_ms
    ratio = p50 / raw_sql_p50_ms if raw_sql_p50_ms else None
    return ScenarioResult(
        name=scenario.name,
        description=scenario.description,
        requests=len(load.latencies_s),
        failed=load.failed,
        p50_ms=round(p50, 2),
        p95_ms=round(p95, 2),
        p99_ms=round(p99, 2),
        max_ms=round(max(load.latencies_s) * 1000, 2) if load.latencies_s else math.nan,
        requests_per_s=round(load.requests_per_s, 1),
        guide_target_ms=guide,
        our_target_ms=ours,
        meets_guide=None if guide is None else p50 <= guide[0] and p95 <= guide[1] and p99 <= guide[2],
        meets_ours=None if ours is None else p50 <= ours[0] and p99 <= ours[1],
        raw_sql_p50_ms=None if raw_sql_p50_ms is None else round(raw_sql_p50_ms, 2),
        raw_sql_statements=raw_sql_statements,
        overhead_ratio=None if ratio is None else round(ratio, 2),
        ratio_target=scenario.ratio_target,
        meets_ratio=None
        if ratio is None or scenario.ratio_target is None
        else ratio <= scenario.ratio_target,
        first_failure=load.first_failure,
    )


def _mark(ok: bool | None) -> str:
    return "-" if ok is None else ("pass" if ok else "FAIL")


def _targets(values: Sequence[float] | None) -> str:
    return "-" if values is None else "/".join(f"{value:g}" for value in values)


def table(results: Sequence[ScenarioResult]) -> str:
    header = (
        "scenario", "p50 ms", "p95 ms", "p99 ms", "req/s", "errors", "guide p50/95/99", "",
        "ours p50/99", "", "raw SQL p50", "API/SQL", "",
    )  # fmt: skip
    rows = [header]
    for result in results:
        rows.append((
            result.name,
            f"{result.p50_ms:.1f}",
            f"{result.p95_ms:.1f}",
            f"{result.p99_ms:.1f}",
            f"{result.requests_per_s:.0f}",
            str(result.failed),
            _targets(result.guide_target_ms),
            _mark(result.meets_guide),
            _targets(result.our_target_ms),
            _mark(result.meets_ours),
            "-" if result.raw_sql_p50_ms is None else f"{result.raw_sql_p50_ms:.1f}",
            "-" if result.overhead_ratio is None else f"{result.overhead_ratio:.2f}",
            _mark(result.meets_ratio),
        ))  # fmt: skip
    widths = [max(len(row[column]) for row in rows) for column in range(len(header))]
    lines = []
    for index, row in enumerate(rows):
        cells = [
            cell.ljust(width) if column == 0 else cell.rjust(width)
            for column, (cell, width) in enumerate(zip(row, widths, strict=True))
        ]
        lines.append("  ".join(cells).rstrip())
        if index == 0:
            lines.append("  ".join("-" * width for width in widths))
    return "\n".join(lines)
