"""Benchmarks run only when asked for with `-m bench` (`make bench`); `make test` leaves them out silently.

Every benchmark module sets `pytestmark = pytest.mark.bench`. Unless the `-m` expression names `bench`, the
tests under tests/bench/ (and anything else marked `bench`) are deselected, not skipped, so the normal suite
shows no skip lines for them, only a "deselected" count. To run one benchmark by hand:
`python -m devstack test tests/bench/test_tenant_scope.py -m bench`.
At the end of a session the tables the benchmarks reported (tests/bench/reporting.py) are printed, then the
summary of issue 13's figures with their goals (also written to `.bench/summary.json`).
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from tests.bench import reporting

HERE = Path(__file__).resolve().parent
# Files measured before this (an earlier session's) are marked so in the summary. Whole seconds, as the
# files' measured_at.
SESSION_STARTED = datetime.now(UTC).replace(microsecond=0)


def _is_bench(item: pytest.Item) -> bool:
    return item.get_closest_marker("bench") is not None or HERE in Path(str(item.path)).parents


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if "bench" in (config.getoption("markexpr") or ""):
        return  # `-m bench` selects them; `-m "not bench"` is handled by pytest itself
    deselected = [item for item in items if _is_bench(item)]
    if deselected:
        items[:] = [item for item in items if not _is_bench(item)]
        config.hook.pytest_deselected(items=deselected)


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:
    if not reporting.tables:
        return
    terminalreporter.section("benchmarks")
    for table in reporting.tables:
        terminalreporter.write_line(table)
        terminalreporter.write_line("")
    _, summary = reporting.write_summary(since=SESSION_STARTED)
    terminalreporter.write_line(summary)
