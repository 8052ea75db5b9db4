"""Figures and ratios of one benchmark: a table on the terminal and `.bench/<name>.json` to compare runs.

A benchmark measures its variants in one run and calls `report(...)` once:

    report(
        "tenant_scope",
        description="...",
        figures={"request rls": summarize(samples_ns), "request plain": summarize(other_ns)},
        ratios={"request rls/plain": ratio(...)},
        goals={"request rls/plain": 1.15},
        parameters={"organizations": 100},
    )

`summarize` turns raw nanosecond samples into median, p95, mean and count in microseconds. The JSON file is
overwritten on each run (`.bench/` is git-ignored); the tables are printed at the end of the pytest session by
tests/bench/conftest.py, so they show without `-s`. Benchmarks are not timed tests: a missed goal is reported,
not failed.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
OUTPUT = Path(os.environ.get("BENCH_OUTPUT_DIR", ROOT / ".bench"))

# Rendered tables of this session, printed by the conftest's terminal summary.
tables: list[str] = []


def summarize(samples_ns: list[int] | list[float]) -> dict:
    """Median, 95th percentile, mean (microseconds) and count of samples given in nanoseconds."""
    if not samples_ns:
        raise ValueError("no samples")
    ordered = sorted(samples_ns)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
    return {
        "median_us": round(statistics.median(ordered) / 1000, 2),
        "p95_us": round(p95 / 1000, 2),
        "mean_us": round(statistics.fmean(ordered) / 1000, 2),
        "n": len(ordered),
    }


def ratio(figure: dict, baseline: dict, key: str = "median_us") -> float:
    return round(figure[key] / baseline[key], 3)


def environment() -> dict:
    return {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
    }


def report(
    name: str,
    *,
    description: str,
    figures: dict[str, dict],
    ratios: dict[str, float],
    goals: dict[str, float] | None = None,
    parameters: dict | None = None,
    extra: dict | None = None,
) -> Path:
    """Write `.bench/<name>.json` and queue the table for the terminal; returns the file's path.

    `goals` maps a ratio's name to its upper bound (lower is better).
    """
    goals = goals or {}
    extra = dict(extra or {})
    document = {
        "name": name,
        "description": description,
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "environment": {**environment(), **extra.pop("environment", {})},
        "parameters": parameters or {},
        "figures": figures,
        "ratios": ratios,
        "goals": {
            key: {"at_most": bound, "met": ratios.get(key, float("inf")) <= bound}
            for key, bound in goals.items()
        },
        **extra,
    }
    OUTPUT.mkdir(parents=True, exist_ok=True)
    path = OUTPUT / f"{name}.json"
    path.write_text(json.dumps(document, indent=2, default=str) + "\n")
    tables.append(render(document, path))
    return path


def render(document: dict, path: Path | None = None) -> str:
    figures, ratios, goals = document["figures"], document["ratios"], document["goals"]
    width = max([len(k) for k in [*figures, *ratios]] + [24])
    lines = [f"{document['name']}: {document['description']}"]
    lines.append(f"  {'figure':<{width}} {'median µs':>11} {'p95 µs':>11} {'mean µs':>11} {'n':>8}")
    for key, fig in figures.items():
        lines.append(
            f"  {key:<{width}} {fig['median_us']:>11.1f} {fig['p95_us']:>11.1f} {fig['mean_us']:>11.1f} {fig['n']:>8}"
        )
    lines.append(f"  {'ratio':<{width}} {'value':>11} {'goal':>11}")
    for key, value in ratios.items():
        goal = goals.get(key)
        verdict = "" if goal is None else f"≤ {goal['at_most']:<5} {'met' if goal['met'] else 'NOT MET'}"
        lines.append(f"  {key:<{width}} {value:>10.3f}x {verdict:>11}")
    if path is not None:
        lines.append(f"  -> {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}")
    return "\n".join(lines)
