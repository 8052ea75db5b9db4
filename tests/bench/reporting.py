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

`summarize` turns raw nanosecond samples into median, p95, mean and count in microseconds. `goals` bounds a
ratio from above; `targets` names any other figure with its goal beside it (`target(value, unit, at_most=...)`,
or `at_least=`, or neither for a figure reported without a goal). In the JSON each goal is written with its
value: `{"value": 1.42, "at_most": 1.5, "met": true}`.

The JSON file is overwritten on each run (`.bench/` is git-ignored); the tables are printed at the end of the
pytest session by tests/bench/conftest.py, so they show without `-s`, followed by the summary of issue 13's
figures (`write_summary`: `.bench/summary.json`, built from every `.bench/*.json` on disk, so a benchmark run
alone updates its own rows and keeps the others' latest). Benchmarks are not timed tests: a missed goal is
reported, not failed.
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


def target(
    value: float | None,
    unit: str = "",
    *,
    at_most: float | None = None,
    at_least: float | None = None,
    note: str = "",
) -> dict:
    """A figure with its goal beside it: `{"value", "unit", "at_most" | "at_least", "met"}`. With no bound the
    figure is reported for comparison (`met` is None); with no value (not measured) `met` is None too."""
    entry: dict = {"value": value, "unit": unit}
    if at_most is not None:
        entry["at_most"] = at_most
    if at_least is not None:
        entry["at_least"] = at_least
    entry["met"] = met(entry)
    if note:
        entry["note"] = note
    return entry


def met(entry: dict) -> bool | None:
    value = entry.get("value")
    if value is None or ("at_most" not in entry and "at_least" not in entry):
        return None
    return value <= entry.get("at_most", float("inf")) and value >= entry.get("at_least", float("-inf"))


def goal_text(entry: dict) -> str:
    unit = f" {entry['unit']}" if entry.get("unit") else ""
    if "at_most" in entry:
        return f"≤ {entry['at_most']:g}{unit}"
    if "at_least" in entry:
        return f"≥ {entry['at_least']:g}{unit}"
    return "none"


def verdict(entry: dict) -> str:
    return {True: "met", False: "NOT MET", None: "-"}[entry.get("met")]


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
    targets: dict[str, dict] | None = None,
    parameters: dict | None = None,
    extra: dict | None = None,
) -> Path:
    """Write `.bench/<name>.json` and queue the table for the terminal; returns the file's path.

    `goals` maps a ratio's name to its upper bound (lower is better); `targets` maps other figures to
    `target(...)` entries. Both land in the document's "goals", each with its value.
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
            **{key: target(ratios.get(key), "x", at_most=bound) for key, bound in goals.items()},
            **(targets or {}),
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
    width = max([len(k) for k in [*figures, *ratios, *goals]] + [24])
    lines = [f"{document['name']}: {document['description']}"]
    if figures:
        lines.append(f"  {'figure':<{width}} {'median µs':>11} {'p95 µs':>11} {'mean µs':>11} {'n':>8}")
    for key, fig in figures.items():
        lines.append(
            f"  {key:<{width}} {fig['median_us']:>11.1f} {fig['p95_us']:>11.1f} {fig['mean_us']:>11.1f} {fig['n']:>8}"
        )
    if ratios:
        lines.append(f"  {'ratio':<{width}} {'value':>11} {'goal':>11}")
    for key, value in ratios.items():
        goal = goals.get(key)
        shown = "" if goal is None else f"{goal_text(goal):<7} {verdict(goal)}"
        lines.append(f"  {key:<{width}} {value:>10.3f}x {shown:>11}")
    others = {key: goal for key, goal in goals.items() if key not in ratios}
    if others:
        lines.append(f"  {'figure with a goal':<{width}} {'value':>11} {'goal':>11}")
    for key, goal in others.items():
        value = "absent" if goal.get("value") is None else f"{goal['value']:g} {goal.get('unit', '')}".strip()
        lines.append(f"  {key:<{width}} {value:>11} {goal_text(goal):>11} {verdict(goal)}")
    if path is not None:
        lines.append(f"  -> {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}")
    return "\n".join(lines)


# -- issue 13's figures, each with its goal ----------------------------------------------------------------

# (figure, file, key in that file's "goals", issue 13's goal): the table of issue 13 plus what it asks to be
# reported beside it (the HTTP variant, throughput on one and two workers). A file not on disk, or a key it
# lacks, is "absent", with the issue's goal still shown.
LOAD_CPU_BASELINE_MS = 31.5  # issue 13: the clinic-day load test's worker CPU per request when it was filed
ISSUE_13 = [
    ("patient detail, full/plain p50 (test Client)", "clinic_api", "detail p50 full/plain", {"at_most": 1.5}),
    (
        "patient list of 50, full/plain p50 (test Client)",
        "clinic_api",
        "list p50 full/plain",
        {"at_most": 1.5},
    ),
    (
        "patient detail, full/plain p50 (HTTP, uvicorn)",
        "clinic_api",
        "http detail p50 full/plain",
        {"at_most": 1.5},
    ),
    (
        "patient list of 50, full/plain p50 (HTTP, uvicorn)",
        "clinic_api",
        "http list p50 full/plain",
        {"at_most": 1.5},
    ),
    (
        "tenant-scoped request, RLS+context/plain (Django)",
        "tenant_scope",
        "django request rls/plain",
        {"at_most": 1.15},
    ),
    (
        "tenant-scoped request, RLS+context/plain (raw SQL)",
        "tenant_scope",
        "sql request rls/plain",
        {"at_most": 1.15},
    ),
    (
        "load test, worker CPU per request, 1 worker",
        "load",
        "worker cpu per request, 1 worker",
        {"at_most": LOAD_CPU_BASELINE_MS / 2, "unit": "ms"},
    ),
    (
        "load test, worker CPU per request, 2 workers",
        "load",
        "worker cpu per request, 2 workers",
        {"at_most": LOAD_CPU_BASELINE_MS / 2, "unit": "ms"},
    ),
    ("load test, HTTP throughput, 1 worker", "load", "http throughput, 1 worker", {"unit": "req/s"}),
    ("load test, HTTP throughput, 2 workers", "load", "http throughput, 2 workers", {"unit": "req/s"}),
    ("signalling relay, 200 pairs flat out, msg/s", "video_relay", "relay throughput", {"at_least": 2000}),
    (
        "signalling relay, p99 at 80 % of saturation",
        "video_relay",
        "relay p99 at 80% of saturation",
        {"at_most": 100},
    ),
]


def _relay_throughput(document: dict) -> dict | None:
    value = document.get("parameters", {}).get("throughput_msgs_per_s")
    return None if value is None else target(value, "msg/s", at_least=2000)


def _relay_p99(document: dict) -> dict:
    return target(
        None,
        "ms",
        at_most=100,
        note="tests/bench/test_video.py times the relay flat out (its parameters.p99_ms), not at 80 % of saturation",
    )


# Issue figures a benchmark reports without a goal of its own (owned elsewhere): read from its parameters.
FALLBACKS = {
    ("video_relay", "relay throughput"): _relay_throughput,
    ("video_relay", "relay p99 at 80% of saturation"): _relay_p99,
}


def _documents() -> dict[str, dict]:
    found = {}
    for path in sorted(OUTPUT.glob("*.json")):
        if path.name == "summary.json":
            continue
        try:
            document = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(document, dict) and isinstance(document.get("goals"), dict):
            found[path.stem] = document
    return found


def _row(figure: str, name: str, key: str, document: dict | None, issue_goal: dict | None = None) -> dict:
    entry = dict((document or {}).get("goals", {}).get(key) or {})
    fallback = FALLBACKS.get((name, key))
    if not entry and fallback is not None and document is not None:
        entry = fallback(document) or {}
    if "value" not in entry and "at_most" in entry:  # a file written before goals carried their value
        entry["value"] = (document or {}).get("ratios", {}).get(key)
    if issue_goal and not ({"at_most", "at_least"} & entry.keys()):
        entry = {**issue_goal, **entry}  # the issue's goal, where the file (or an absent one) names none
    entry.setdefault("unit", (issue_goal or {}).get("unit", ""))
    row = {
        "figure": figure,
        "file": f"{name}.json",
        "key": key,
        "value": entry.get("value"),
        "unit": entry.get("unit", ""),
        **{bound: entry[bound] for bound in ("at_most", "at_least") if bound in entry},
        "met": met(entry),
        "measured_at": (document or {}).get("measured_at"),
    }
    if row["value"] is None:
        row["absent"] = True
    if entry.get("note"):
        row["note"] = entry["note"]
    return row


def write_summary(since: datetime | None = None) -> tuple[Path, str]:
    """`.bench/summary.json`: issue 13's figures, then every other goal of every `.bench/*.json`, each with its
    value, goal and whether it is met; and the same as a table for the terminal. A figure measured before
    `since` (an earlier session's file) is marked "earlier run"."""
    documents = _documents()
    issue = [_row(figure, name, key, documents.get(name), goal) for figure, name, key, goal in ISSUE_13]
    named = {(name, key) for _, name, key, _ in ISSUE_13}
    others = [
        _row(f"{name}: {key}", name, key, document)
        for name, document in documents.items()
        for key in document["goals"]
        if (name, key) not in named
    ]
    for row in issue + others:
        if since is not None and row["measured_at"] and datetime.fromisoformat(row["measured_at"]) < since:
            row["earlier_run"] = True
    summary = {
        "written_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "issue_13": issue,
        "other_goals": others,
    }
    OUTPUT.mkdir(parents=True, exist_ok=True)
    path = OUTPUT / "summary.json"
    path.write_text(json.dumps(summary, indent=2, default=str) + "\n")

    def line(row: dict, width: int) -> str:
        value = "absent" if row["value"] is None else f"{row['value']:g} {row['unit']}".strip()
        earlier = " (earlier run)" if row.get("earlier_run") else ""
        return f"  {row['figure']:<{width}} {value:>12} {goal_text(row):>12}  {verdict(row)}{earlier}"

    width = max(len(row["figure"]) for row in issue + others)
    lines = ["summary: issue 13's figures (and every other goal) from .bench/*.json"]
    lines.append(f"  {'figure':<{width}} {'value':>12} {'goal':>12}  met")
    lines += [line(row, width) for row in issue]
    if others:
        lines.append(f"  {'other goals':<{width}}")
        lines += [line(row, width) for row in others]
    lines.append(f"  -> {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}")
    return path, "\n".join(lines)
