"""Forged X-Forwarded-For / X-Forwarded-Proto against the loopback cluster (`make cluster`): nginx in front of
uvicorn workers, the audit shipper moving events into the signed log.

nginx overwrites X-Forwarded-For with the address its client connected from and X-Forwarded-Proto with its own
scheme (http here); it connects to the workers from an address of its own on loopback (devstack/cluster.py,
NGINX_SOURCE), and the workers trust forwarded headers from that address only (TRUSTED_PROXIES). So:

- through nginx, a forged `X-Forwarded-For: 203.0.113.9` is dropped and the signed log records the client's
  real address: 127.0.0.1, or 127.0.0.5 for a client connecting from there (which shows the address comes from
  nginx's header, not from the connection nginx makes);
- straight to a worker, bypassing nginx, the same forged headers are ignored too: every other process on the
  machine is on loopback as well, and none of them is the proxy;
- neither path answers with HSTS: the request came over plain http.

Run with `make drills`, or alone:

    TEST_DATABASE_NAME=drills_proxy .venv/bin/python -m devstack test tests/drills/test_proxy_headers.py \\
        -m drill -q -p no:randomly
"""

from __future__ import annotations

import http.client
import json
import time
import uuid
from collections.abc import Iterator

import psycopg
import pytest

from devstack.cluster import Cluster
from tests.drills.conftest import start_cluster

pytestmark = pytest.mark.drill

NORTHWIND = "northwind.localhost"
FORGED_IP = "203.0.113.9"  # TEST-NET-3: no client here has it
FORGED = {"X-Forwarded-For": FORGED_IP, "X-Forwarded-Proto": "https"}
OTHER_LOOPBACK = "127.0.0.5"  # a client address that is neither nginx's nor the default 127.0.0.1


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    started = start_cluster("proxy_headers", workers=1, turn=False)
    try:
        yield started
    finally:
        started.stop()


def failed_sign_in(port: int, source: str) -> tuple[str, http.client.HTTPResponse]:
    """A failed sign-in (what lockouts and alerts count) from `source`, with forged forwarding headers."""
    request_id = uuid.uuid4().hex
    body = json.dumps({"email": f"nobody-{request_id[:8]}@northwind.example", "password": "not-the-password"})
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30, source_address=(source, 0))
    try:
        connection.request(
            "POST",
            "/api/v1/auth/tokens",
            body=body,
            headers={
                "Host": NORTHWIND,
                "Content-Type": "application/json",
                "X-Request-ID": request_id,
                **FORGED,
            },
        )
        response = connection.getresponse()
        response.read()
    finally:
        connection.close()
    assert response.status in (400, 401), response.status
    return request_id, response


def recorded_addresses(cluster: Cluster, request_id: str, timeout: float = 90.0) -> set[str | None]:
    """The actor addresses of this request's entries in the signed audit log, once the shipper has moved them
    there (read as the audit database's read-only role)."""
    deadline = time.monotonic() + timeout
    while True:
        with psycopg.connect(cluster.env["AUDIT_READER_DATABASE_URL"], autocommit=True) as conn:
            rows = conn.execute(
                "SELECT entry FROM audit_entry WHERE entry::jsonb->>'request_id' = %s", [request_id]
            ).fetchall()
        if rows:
            return {json.loads(entry)["actor"]["ip"] for (entry,) in rows}
        if time.monotonic() > deadline:
            raise AssertionError(f"request {request_id} never reached the signed audit log")
        time.sleep(0.5)


def test_through_nginx_a_forged_x_forwarded_for_is_replaced_by_the_real_client_address(cluster):
    for source in ("127.0.0.1", OTHER_LOOPBACK):
        request_id, response = failed_sign_in(cluster.http_port, source)
        assert recorded_addresses(cluster, request_id) == {source}
        assert response.getheader("Strict-Transport-Security") is None


def test_straight_to_a_worker_forged_forwarding_headers_are_ignored(cluster):
    """Bypassing nginx: the worker trusts no one but nginx, so the connection's address is what counts."""
    worker_port = cluster.worker_ports[0]
    for source in ("127.0.0.1", OTHER_LOOPBACK):
        request_id, response = failed_sign_in(worker_port, source)
        assert recorded_addresses(cluster, request_id) == {source}
        assert response.getheader("Strict-Transport-Security") is None
