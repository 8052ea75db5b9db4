"""The clinic-day load test as a drill: tests/load/clinic_day.py at length, one worker then two.

LOAD_MINUTES_ONE (one worker, default 4) and LOAD_MINUTES (two workers, default 10) set the runs' lengths; the
rest (users, spawn rate, think times, LOAD_PROFILE's flame graphs) is described in tests/load/clinic_day.py.
It fails on any locust failure or exception and on any missing or duplicated audit event. It writes
`.bench/load-report.md` and `.bench/load-report.json` and prints the markdown; the runs' files stay under
`.bench/load/one/` and `.bench/load/two/`. `make bench` runs the same test briefly (tests/bench/test_load.py).

    LOAD_MINUTES=1 LOAD_MINUTES_ONE=1 TEST_DATABASE_NAME=load_dev .venv/bin/python -m devstack test \\
        tests/drills/test_load.py -m drill -q -p no:randomly -s

    LOAD_PROFILE=60 LOAD_MINUTES=2 LOAD_MINUTES_ONE=2 TEST_DATABASE_NAME=load_dev .venv/bin/python -m devstack \\
        test tests/drills/test_load.py -m drill -q -p no:randomly -s
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.load.clinic_day import BENCH, clinic_day, problems, render

pytestmark = pytest.mark.drill

MINUTES_ONE = float(os.environ.get("LOAD_MINUTES_ONE", "4"))
MINUTES_TWO = float(os.environ.get("LOAD_MINUTES", "10"))


def test_clinic_day(tmp_path: Path) -> None:
    report, runs = clinic_day(MINUTES_ONE, MINUTES_TWO, tmp_path)
    BENCH.mkdir(exist_ok=True)
    (BENCH / "load-report.json").write_text(json.dumps(report, indent=2, default=str))
    markdown = render(report)
    (BENCH / "load-report.md").write_text(markdown)
    print("\n" + markdown)
    found = problems(runs)
    assert not found, "\n".join(found)
