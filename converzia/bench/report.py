"""Percentiles, pass/fail against the targets, framework overhead against the liveness p50, the table
and JSON of a run, and its report folder (`report.json`, `report.md`, `latency.png`)."""

from __future__ import annotations

import datetime as dt
import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from converzia.bench.http import LoadResult
from converzia.bench.scenarios import LIVENESS_SCENARIO, OverheadBasis, Scenario, Targets


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
    # Framework overhead (TARGETS.md): how it is measured (an OverheadBasis value; None: not a request
    # latency), its milliseconds, those in multiples of the run's liveness p50, and the target.
    overhead_basis: str | None = None
    overhead_ms: float | None = None
    overhead_x_liveness: float | None = None
    overhead_target_x: float | None = None
    meets_overhead: bool | None = None

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
    if raw_sql_p50_ms is not None:
        basis = OverheadBasis.API_MINUS_SQL
    elif scenario.raw_sql_request is None:
        basis = OverheadBasis.WHOLE_P50  # a cached read, or liveness: no SQL to subtract
    else:
        basis = OverheadBasis.UPPER_BOUND  # its SQL could not be timed
    result = with_overhead(
        result, basis=basis, target_x=scenario.overhead_target_x, raw_sql_p50_ms=raw_sql_p50_ms
    )
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


def overhead_ms(p50_ms: float, raw_sql_p50_ms: float | None, basis: OverheadBasis | None) -> float | None:
    """What the framework adds to a request's p50 (TARGETS.md "Framework overhead"); None when it
    cannot be told: no basis, no latencies, or API − SQL without the SQL's timing."""
    if basis is None or math.isnan(p50_ms):
        return None
    if basis == OverheadBasis.API_MINUS_SQL:
        return None if raw_sql_p50_ms is None else round(p50_ms - raw_sql_p50_ms, 2)
    return p50_ms


def with_overhead(
    result: ScenarioResult,
    *,
    basis: OverheadBasis | None,
    target_x: float | None,
    raw_sql_p50_ms: float | None = None,
) -> ScenarioResult:
    """`result` with its overhead in ms and its target; judged later, once the liveness p50 is known."""
    return ScenarioResult(
        **{
            **asdict(result),
            "overhead_basis": None if basis is None else str(basis),
            "overhead_ms": overhead_ms(result.p50_ms, raw_sql_p50_ms, basis),
            "overhead_target_x": target_x,
        }
    )


def liveness_p50_ms(results: Sequence[ScenarioResult]) -> float | None:
    """The p50 of the run's first liveness scenario: the unit of framework overhead."""
    for result in results:
        if result.name == LIVENESS_SCENARIO:
            usable = result.requests and not math.isnan(result.p50_ms) and result.p50_ms > 0
            return result.p50_ms if usable else None
    return None


def judge_overhead(results: Sequence[ScenarioResult], liveness_ms: float | None) -> list[ScenarioResult]:
    """Each overhead in multiples of `liveness_ms`, and whether it meets its target (None: no target,
    or nothing to judge)."""
    judged = []
    for result in results:
        if liveness_ms is None or result.overhead_ms is None:
            times, meets = None, None
        else:
            times = result.overhead_ms / liveness_ms
            meets = None if result.overhead_target_x is None else times <= result.overhead_target_x
        judged.append(
            ScenarioResult(
                **{
                    **asdict(result),
                    "overhead_x_liveness": None if times is None else round(times, 2),
                    "meets_overhead": meets,
                }
            )
        )
    return judged


@dataclass(frozen=True)
class OverheadSummary:
    liveness_p50_ms: float | None
    # Measured again after the read scenarios (in the liveness row's extra), to show drift.
    liveness_p50_ms_after_reads: float | None
    met: list[str]
    missed: list[ScenarioResult]
    not_judged: list[str]  # a target and no figure: the scenario failed, or liveness did

    def as_dict(self) -> dict[str, object]:
        return {
            "met": self.met,
            "missed": [result.name for result in self.missed],
            "not_judged": self.not_judged,
        }


def overhead_summary(results: Sequence[ScenarioResult]) -> OverheadSummary:
    after_reads = next(
        (
            (result.extra or {}).get("p50_ms_after_reads")
            for result in results
            if result.name == LIVENESS_SCENARIO
        ),
        None,
    )
    with_target = [result for result in results if result.overhead_target_x is not None]
    return OverheadSummary(
        liveness_p50_ms=liveness_p50_ms(results),
        liveness_p50_ms_after_reads=after_reads,
        met=[result.name for result in with_target if result.meets_overhead is True],
        missed=[result for result in with_target if result.meets_overhead is False],
        not_judged=[result.name for result in with_target if result.meets_overhead is None],
    )


def overhead_summary_line(results: Sequence[ScenarioResult]) -> str:
    """One line: the liveness unit, how many overhead targets were met, and which were missed."""
    summary = overhead_summary(results)
    if summary.liveness_p50_ms is None:
        unit = f"no {LIVENESS_SCENARIO} p50, nothing judged"
    else:
        unit = f"{LIVENESS_SCENARIO} p50 {summary.liveness_p50_ms:.2f} ms, measured first"
        if summary.liveness_p50_ms_after_reads is not None:
            unit += f"; {summary.liveness_p50_ms_after_reads:.2f} ms after the reads"
    judged = len(summary.met) + len(summary.missed)
    line = f"Framework overhead ({unit}): {len(summary.met)} of {judged} targets met"
    if summary.missed:
        line += "; missed: " + ", ".join(
            f"{result.name} {result.overhead_x_liveness:g}× > {result.overhead_target_x:g}×"
            for result in summary.missed
        )
    if summary.not_judged:
        line += "; not judged: " + ", ".join(summary.not_judged)
    return line + "."


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


def _overhead(result: ScenarioResult) -> str:
    if result.overhead_ms is None:
        return "-"
    # "≤": the whole p50 of requests whose SQL was not timed, so at most this much is the framework's.
    bound = "≤" if result.overhead_basis == OverheadBasis.UPPER_BOUND else ""
    return f"{bound}{result.overhead_ms:.1f}"


_HEADER = (
    "scenario", "p50 ms", "p95 ms", "p99 ms", "req/s", "errors", "guide p50/95/99", "",
    "ours p50/99", "", "raw SQL p50", "API/SQL", "", "overhead ms", "× live", "target ×", "",
    "throughput", "",
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
            _overhead(result),
            "-" if result.overhead_x_liveness is None else f"{result.overhead_x_liveness:.1f}",
            _targets(None if result.overhead_target_x is None else [result.overhead_target_x]),
            _mark(result.meets_overhead),
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
    lines += ["", overhead_summary_line(results), "", _OVERHEAD_NOTE]
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


_OVERHEAD_NOTE = (
    "overhead ms: p50 − raw SQL p50 where the SQL was timed; the whole p50 for cached reads, liveness, "
    "the webhook ack and the ops transition; ≤: the whole p50 of requests whose SQL was not timed (an "
    f"upper bound). × live: that over the {LIVENESS_SCENARIO} p50 of this run, at the same concurrency."
)


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
    """The run as JSON: the liveness unit, the overhead targets met and missed, and every result."""
    summary = overhead_summary(results)
    document = {
        "liveness_p50_ms": summary.liveness_p50_ms,
        "liveness_p50_ms_after_reads": summary.liveness_p50_ms_after_reads,
        "overhead_targets": summary.as_dict(),
        "results": [result.as_dict() for result in results],
    }
    return json.dumps(document, indent=2, default=str)
