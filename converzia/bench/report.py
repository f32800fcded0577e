"""Percentiles, pass/fail against the targets, the table and JSON of a run, and its report folder
(`report.json`, `report.md`, `latency.png`)."""

from __future__ import annotations

import datetime as dt
import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from converzia.bench.http import LoadResult
from converzia.bench.scenarios import Scenario, Targets


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
    # Throughput scenarios (mixed reads, ingestion end to end): the figure judged, its unit and floor.
    throughput_per_s: float | None = None
    throughput_unit: str | None = None
    throughput_target: float | None = None
    meets_throughput: bool | None = None
    # What a scenario measures besides the latency columns (e.g. ingestion's enqueue → start).
    extra: dict[str, Any] | None = None

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def measured_result(
    *,
    name: str,
    description: str,
    load: LoadResult,
    targets: Targets,
    throughput_per_s: float | None = None,
    throughput_unit: str | None = None,
    throughput_target: float | None = None,
    extra: dict[str, Any] | None = None,
) -> ScenarioResult:
    """A result with no raw-SQL ratio: the scenarios that write, follow sessions or chase throughput."""
    result = _latency_result(name, description, load, targets)
    meets = (
        None
        if throughput_target is None or throughput_per_s is None
        else throughput_per_s >= throughput_target
    )
    return ScenarioResult(
        **{
            **asdict(result),
            "throughput_per_s": None if throughput_per_s is None else round(throughput_per_s, 1),
            "throughput_unit": throughput_unit,
            "throughput_target": throughput_target,
            "meets_throughput": meets,
            "extra": extra,
        }
    )


def _latency_result(name: str, description: str, load: LoadResult, targets: Targets) -> ScenarioResult:
    p50, p95, p99 = (percentile_ms(load.latencies_s, pct) for pct in (50, 95, 99))
    guide, ours = targets.guide_ms, targets.ours_ms
    return ScenarioResult(
        name=name,
        description=description,
        requests=len(load.latencies_s),
        failed=load.failed,
        p50_ms=round(p50, 2),
        p95_ms=round(p95, 2),
        p99_ms=round(p99, 2),
        max_ms=round(max(load.latencies_s) * 1000, 2) if load.latencies_s else math.nan,
        requests_per_s=round(load.requests_per_s, 1),
        guide_target_ms=guide,
        our_target_ms=ours,
        meets_guide=None
        if guide is None or not load.latencies_s
        else p50 <= guide[0] and p95 <= guide[1] and p99 <= guide[2],
        meets_ours=None if ours is None or not load.latencies_s else p50 <= ours[0] and p99 <= ours[1],
        raw_sql_p50_ms=None,
        raw_sql_statements=None,
        overhead_ratio=None,
        ratio_target=None,
        meets_ratio=None,
        first_failure=load.first_failure,
    )


def scenario_result(
    scenario: Scenario, load: LoadResult, *, raw_sql_p50_ms: float | None, raw_sql_statements: int | None
) -> ScenarioResult:
    result = _latency_result(scenario.name, scenario.description, load, scenario.targets)
    ratio = result.p50_ms / raw_sql_p50_ms if raw_sql_p50_ms else None
    return ScenarioResult(
        **{
            **asdict(result),
            "raw_sql_p50_ms": None if raw_sql_p50_ms is None else round(raw_sql_p50_ms, 2),
            "raw_sql_statements": raw_sql_statements,
            "overhead_ratio": None if ratio is None else round(ratio, 2),
            "ratio_target": scenario.ratio_target,
            "meets_ratio": None
            if ratio is None or scenario.ratio_target is None
            else ratio <= scenario.ratio_target,
        }
    )


def _mark(ok: bool | None) -> str:
    return "-" if ok is None else ("pass" if ok else "FAIL")


def _targets(values: Sequence[float] | None) -> str:
    return "-" if values is None else "/".join(f"{value:g}" for value in values)


def _throughput(result: ScenarioResult) -> str:
    if result.throughput_per_s is None:
        return "-"
    unit = (result.throughput_unit or "/s").replace("requests/s", "req/s")
    floor = "" if result.throughput_target is None else f" (≥ {result.throughput_target:g})"
    return f"{result.throughput_per_s:g} {unit}{floor}"


_HEADER = (
    "scenario", "p50 ms", "p95 ms", "p99 ms", "req/s", "errors", "guide p50/95/99", "",
    "ours p50/99", "", "raw SQL p50", "API/SQL", "", "throughput", "",
)  # fmt: skip


def _rows(results: Sequence[ScenarioResult]) -> list[tuple[str, ...]]:
    rows = []
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
            _throughput(result),
            _mark(result.meets_throughput),
        ))  # fmt: skip
    return rows


def table(results: Sequence[ScenarioResult]) -> str:
    rows = [_HEADER, *_rows(results)]
    widths = [max(len(row[column]) for row in rows) for column in range(len(_HEADER))]
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


def markdown(results: Sequence[ScenarioResult], about: dict[str, Any]) -> str:
    """report.md: what was run, the table, and what each scenario measured besides it."""
    header = [cell or "met" for cell in _HEADER]
    lines = [f"# bench {about.get('started_at', '')}", ""]
    lines += [f"- {key}: {value}" for key, value in about.items() if key != "started_at"]
    lines += ["", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in _rows(results)]
    lines += ["", "| scenario | what |", "|---|---|"]
    lines += [f"| {result.name} | {result.description} |" for result in results]
    details = [result for result in results if result.extra or result.first_failure]
    if details:
        lines += ["", "## Details", ""]
        for result in details:
            if result.extra:
                lines.append(
                    f"- **{result.name}**: `{json.dumps(result.extra, default=str, ensure_ascii=False)}`"
                )
            if result.first_failure:
                lines.append(f"- **{result.name}** first failure: `{result.first_failure}`")
    return "\n".join(lines) + "\n"


def latency_chart(results: Sequence[ScenarioResult], path: Path) -> None:
    """p50/p95/p99 bars per scenario on a log millisecond axis, our p50/p99 targets as ticks."""
    # Imported here: only a run that writes its report needs matplotlib, and Agg needs no display.
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    shown = [result for result in results if result.requests and not math.isnan(result.p50_ms)]
    figure, axes = pyplot.subplots(figsize=(max(8.0, 0.55 * len(shown) + 2), 6), layout="constrained")
    width = 0.26
    for offset, (label, field, color) in enumerate(
        (("p50", "p50_ms", "#4c72b0"), ("p95", "p95_ms", "#dd8452"), ("p99", "p99_ms", "#c44e52"))
    ):
        values = [max(getattr(result, field), 0.01) for result in shown]
        positions = [index + (offset - 1) * width for index in range(len(shown))]
        axes.bar(positions, values, width, label=label, color=color)
    labelled: set[str] = set()  # one legend entry per kind of tick
    for index, result in enumerate(shown):
        if result.our_target_ms is None:
            continue
        for target, style, label in (
            (result.our_target_ms[0], "--", "our p50 target"),
            (result.our_target_ms[1], "-", "our p99 target"),
        ):
            axes.hlines(
                target,
                index - 1.5 * width,
                index + 1.5 * width,
                colors="black",
                linestyles=style,
                zorder=3,
                label=None if label in labelled else label,
            )
            labelled.add(label)
    axes.set_yscale("log")
    axes.set_ylabel("latency (ms, log scale)")
    axes.set_xticks(range(len(shown)), [result.name for result in shown], rotation=60, ha="right")
    axes.set_title("bench: latency per scenario (bars) and our targets (ticks)")
    axes.grid(axis="y", which="both", alpha=0.3)
    axes.legend(loc="upper left", fontsize="small")
    figure.savefig(path, dpi=110)
    pyplot.close(figure)


def report_folder(base: Path, started_at: dt.datetime) -> Path:
    """`base/<UTC timestamp>/`, made unique if two runs start within the same second."""
    stamp = started_at.astimezone(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    folder = base / stamp
    suffix = 1
    while folder.exists():
        suffix += 1
        folder = base / f"{stamp}-{suffix}"
    folder.mkdir(parents=True)
    return folder


def write_report(
    base: Path, results: Sequence[ScenarioResult], about: dict[str, Any], started_at: dt.datetime
) -> Path:
    """Write report.json (what --json prints), report.md and latency.png; return the folder."""
    folder = report_folder(base, started_at)
    (folder / "report.json").write_text(json_text(results) + "\n")
    (folder / "report.md").write_text(markdown(results, about))
    latency_chart(results, folder / "latency.png")
    return folder


def json_text(results: Sequence[ScenarioResult]) -> str:
    return json.dumps([result.as_dict() for result in results], indent=2, default=str)
