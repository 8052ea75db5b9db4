"""Failure drills and the clinic-day load test, against the loopback cluster (devstack/cluster.py).

They run with `make drills` (`python -m devstack drills`), which `.ci/run` calls after `make test`:
each module starts its own cluster (PostgreSQL, PgBouncer, Redis, OpenBao, coturn, uvicorn workers, the audit
shipper and nginx) and breaks parts of it. Like the benchmarks they are deselected, not skipped, unless the
`-m` expression names `drill`, so `make test` stays fast.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from devstack.cluster import Cluster, missing_packages
from devstack.stack import DATA
from tests.tools import require_tool

HERE = Path(__file__).resolve().parent


def _is_drill(item: pytest.Item) -> bool:
    return item.get_closest_marker("drill") is not None or HERE in Path(str(item.path)).parents


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if "drill" in (config.getoption("markexpr") or ""):
        return
    deselected = [item for item in items if _is_drill(item)]
    if deselected:
        items[:] = [item for item in items if not _is_drill(item)]
        config.hook.pytest_deselected(items=deselected)


def require_cluster_packages() -> None:
    missing = " ".join(missing_packages())
    require_tool(not missing, f"the cluster needs Debian's {missing} (apt-get install {missing})")


def start_cluster(name: str, workers: int = 2, **kwargs) -> Cluster:
    """A fresh cluster of its own under .data/drills/<name>, on free ports, with its own PostgreSQL."""
    require_cluster_packages()
    cluster = Cluster(DATA / "drills" / name, workers=workers, fresh=True, dbname=f"drill_{name}", **kwargs)
    return cluster.start()


def pgbouncer_logins(cluster: Cluster) -> int:
    """Client logins PgBouncer has seen (it logs each one, and each costs a SCRAM exchange)."""
    return (cluster.logdir / "pgbouncer.log").read_text(errors="replace").count("login attempt")


@pytest.fixture(scope="module")
def cluster(request) -> Iterator[Cluster]:
    """One two-worker cluster per drill module (its name from the module's)."""
    name = Path(str(request.node.path)).stem.removeprefix("test_")
    started = start_cluster(name)
    try:
        yield started
    finally:
        started.stop()
