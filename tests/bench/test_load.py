"""Benchmark: the clinic-day load test, briefly, for issue 13's worker CPU per request and throughput.

The drill's run (tests/load/clinic_day.py, tests/drills/test_load.py) for BENCH_LOAD_SECONDS (default 90) on
one uvicorn worker and as long on two, each on a fresh loopback cluster (nginx, PgBouncer, PostgreSQL, Redis,
OpenBao, the audit shipper; Debian's pgbouncer, nginx and redis-server, skipped without them), with the same
users, checks and failures as the drill: any locust failure or exception, or any audit event missing from the
verified export, fails it. BENCH_LOAD_SECONDS=0 leaves it out.

Reported to `.bench/load.json`, each with its goal beside it: the workers' CPU per HTTP request on one and on
two workers (goal: half issue 13's baseline of 31.5 ms, i.e. at most 15.75 ms; over the whole run, sign-ins
included, as the baseline was measured, so a short run weighs the 60 sign-ins' Argon2 hashes more than the
drill's 10 minutes do; the steady-state figure, without them, is beside it with no goal), HTTP requests per
second in the steady-state window on one and two workers (no goal in the issue: reported to compare), p50/p99,
and the two/one throughput ratio. The full report is in `.bench/load/bench-report.md` and the runs' files under
`.bench/load/bench-one/` and `.bench/load/bench-two/` (the drill's stay apart).

The machine's other load counts here more than anywhere: the report says how busy the machine was outside the
test (machine.other_cores per run).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.bench.reporting import LOAD_CPU_BASELINE_MS, report, tables, target
from tests.load.clinic_day import BENCH, clinic_day, problems, render

pytestmark = pytest.mark.bench

SECONDS = float(os.environ.get("BENCH_LOAD_SECONDS", "90"))
CPU_GOAL_MS = LOAD_CPU_BASELINE_MS / 2


def test_clinic_day_worker_cpu_and_throughput(tmp_path: Path) -> None:
    if SECONDS <= 0:
        # The operator asked for no load run (it adds about 5 minutes to make bench): a choice, not a missing tool.
        pytest.skip("BENCH_LOAD_SECONDS=0: the load test's bench run was switched off for this run")
    load_report, runs = clinic_day(SECONDS / 60, SECONDS / 60, tmp_path, prefix="bench-")
    markdown = render(load_report)
    (BENCH / "load").mkdir(parents=True, exist_ok=True)
    (BENCH / "load" / "bench-report.md").write_text(markdown)

    targets = {}
    summary = {}
    for label, count in (("one", 1), ("two", 2)):
        stats = load_report["runs"][label]["stats"]
        plural = "worker" if count == 1 else "workers"
        worker_ms = stats["cpu_ms_per_http_request"].get("workers")
        steady_ms = stats.get("steady_cpu", {}).get("cpu_ms_per_http_request", {}).get("workers")
        targets[f"worker cpu per request, {count} {plural}"] = target(
            worker_ms,
            "ms",
            at_most=CPU_GOAL_MS,
            note=f"half of issue 13's {LOAD_CPU_BASELINE_MS} ms; whole run, sign-ins included",
        )
        targets[f"worker cpu per request, steady state, {count} {plural}"] = target(steady_ms, "ms")
        targets[f"http throughput, {count} {plural}"] = target(stats["http"]["per_second"], "req/s")
        summary[label] = {
            "workers": count,
            "seconds": SECONDS,
            "http": stats["http"],
            "ws_signalling": stats["ws_signalling"],
            "worker_cpu_ms_per_http_request": worker_ms,
            "worker_cpu_ms_per_http_request_steady": steady_ms,
            "cpu_ms_per_http_request": stats["cpu_ms_per_http_request"],
            "steady_cpu": stats.get("steady_cpu"),
            "cpu_cores": stats["cpu_cores"],
            "machine": stats["machine"],
            "failures": stats["locust_total"]["failures"],
            "audit": {
                key: load_report["runs"][label]["audit"].get(key)
                for key in ("audited_requests_recorded", "audited_requests_found", "http_events_missing")
            },
        }
    targets["http throughput, two/one"] = target(load_report["ratios"]["throughput"], "x")
    report(
        "load",
        description=f"clinic-day load test, {load_report['users']} closed-loop users, {SECONDS:g} s on one "
        "worker and on two (worker CPU per HTTP request: goal half of 31.5 ms; throughput in the steady window)",
        figures={},
        ratios={},
        targets=targets,
        parameters={
            "seconds_per_run": SECONDS,
            "users": load_report["users"],
            "spawn_rate": load_report["spawn_rate"],
            "think": load_report["think"],
            "baseline_worker_cpu_ms": LOAD_CPU_BASELINE_MS,
        },
        extra={
            "environment": {"machine": load_report["machine"]},
            "runs": summary,
            "ratios_two_over_one": load_report["ratios"],
            "bottleneck": load_report["bottleneck"],
            "report": str(BENCH / "load" / "bench-report.md"),
        },
    )
    tables[-1] += "\n" + "\n".join(f"  {line}" for line in load_report["bottleneck"])
    found = problems(runs)
    assert not found, "\n".join(found)
