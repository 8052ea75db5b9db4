"""Failure drills: a production-shaped cluster on loopback (devstack/cluster.py) loses one part at a time, the way
production loses it, and the rest must degrade loudly, recover by itself and lose nothing.

- Vault stopped for 60 s: every worker keeps serving the records whose keys it holds; a clinic no worker has
  read yet answers 503 `key_service_unavailable` (never plaintext, never a 500); /readyz names Vault; reads
  of that clinic work again as soon as Vault is back.
- A worker SIGKILLed under live video sessions: the sockets it held drop, resume through nginx on the other
  worker with their resume tokens (missed messages replayed), the peers are told, signalling flows again and
  the encounters stay in progress.
- Redis stopped for 30 s: every signalling socket, and every new one, gets `signalling_unavailable` (close
  4503), while the records API keeps working and /readyz names Redis. Redis comes back empty (it keeps no
  data), so the old resume tokens are refused and the participants join afresh into the same encounter,
  which never left PostgreSQL.
- The audit shipper killed for 60 s under audited load: the backlog's age grows on /readyz and its check
  fails past AUDIT_MAX_LAG_SECONDS; restarted, the shipper drains it, every audited request is in the signed
  log exactly once, and an export of the clinic's log verifies offline.
- PostgreSQL restarted under a stream of writes: a write caught by the restart answers 503
  `database_unavailable` (no 500), one sent while PostgreSQL is down waits in PgBouncer's queue (at most its
  query_wait_timeout, 10 s) and is stored when it is back; writes succeed again right after, and each one is
  stored exactly once (201) or not at all (503), audit events included.

They run in that order on one cluster for the module, about four minutes in all with its start, and then a check
that the workers' pooled database connections carry no tenant context from one request to the next:

    TEST_DATABASE_NAME=drills_dev .venv/bin/python -m devstack test tests/drills/test_failures.py \\
        -m drill -x -q -p no:randomly
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import itertools
import json
import re
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import psycopg
import pytest
import requests

from clinic.management.commands.seed_demo import DEMO_PASSWORD
from devstack.cluster import Cluster
from tests.drills.conftest import pgbouncer_logins, start_cluster
from tests.video.test_aiortc_call import Signal

pytestmark = pytest.mark.drill

ROOT = Path(__file__).resolve().parents[2]
NORTHWIND, HARBOR = "northwind.localhost", "harbor.localhost"
DOCTOR = "dr.lee@northwind.example"  # the practitioner of the patients below

VAULT_DOWN = 60.0
REDIS_DOWN = 30.0
SHIPPER_DOWN = 60.0
POSTGRES_DOWN = 5.0
MAX_LAG = 30  # AUDIT_MAX_LAG_SECONDS of this cluster: the shipper's outage outlasts it

SIGNALLING_UNAVAILABLE = 4503
VKEY = re.compile(r"^[^+\s]+\+[0-9a-f]{8}\+[A-Za-z0-9+/=]+$")  # C2SP verifier key: name+key id+key


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    """The module's cluster (as the drills' conftest makes it), with an audit lag limit the shipper drill passes."""
    started = start_cluster("failures", extra_env={"AUDIT_MAX_LAG_SECONDS": str(MAX_LAG)})
    try:
        yield started
    finally:
        started.stop()


# -- clients -----------------------------------------------------------------------------------------------


class Api:
    """A signed-in demo user's API calls, through nginx or straight to one worker."""

    def __init__(self, cluster: Cluster, email: str, host: str = NORTHWIND, token: str = ""):
        self.cluster, self.email, self.host = cluster, email, host
        self.session = requests.Session()
        self.session.trust_env = False  # loopback: never through a proxy from the environment
        if not token:
            response = self.call(
                "POST", "/api/v1/auth/tokens", json={"email": email, "password": DEMO_PASSWORD}
            )
            assert response.status_code == 201, response.text
            token = response.json()["token"]
        self.token = token
        self.session.headers["Authorization"] = f"Bearer {token}"

    def fork(self) -> Api:
        """The same sign-in on a session of its own (one per thread)."""
        return Api(self.cluster, self.email, self.host, token=self.token)

    def call(
        self, method: str, path: str, base: str = "", request_id: str = "", timeout: float = 30, **kwargs
    ) -> requests.Response:
        headers = {"Host": self.host, **({"X-Request-ID": request_id} if request_id else {})}
        url = (base or self.cluster.url) + path
        return self.session.request(method, url, headers=headers, timeout=timeout, **kwargs)

    def get(self, path: str, **kwargs) -> dict:
        response = self.call("GET", path, **kwargs)
        assert response.status_code == 200, f"GET {path}: {response.status_code} {response.text[:300]}"
        return response.json()

    def post(self, path: str, expect: int = 200, **kwargs) -> dict:
        response = self.call("POST", path, **kwargs)
        assert response.status_code == expect, f"POST {path}: {response.status_code} {response.text[:300]}"
        return response.json()

    def every(self, path: str) -> list[dict]:
        """All pages of a cursor-paginated list (its links name the public host: follow their path)."""
        rows: list[dict] = []
        while path:
            page = self.get(path)
            rows += page["results"]
            path = "" if not page["next"] else "{0.path}?{0.query}".format(urlsplit(page["next"]))
        return rows


def workers(cluster: Cluster) -> list[str]:
    """Each worker's own address, past nginx."""
    return [f"http://127.0.0.1:{port}" for port in cluster.worker_ports]


def unauthenticated() -> requests.Session:
    session = requests.Session()
    session.trust_env = False
    return session


def readiness(cluster: Cluster) -> dict:
    """/readyz's report (answered 200 degraded or 503 unavailable: the body names each check either way)."""
    response = unauthenticated().get(f"{cluster.url}/readyz", headers={"Host": NORTHWIND}, timeout=15)
    assert response.status_code in (200, 503), response.text[:300]
    return response.json()


def check(report: dict, name: str) -> str:
    return report["checks"][name]["status"]


def wait_for(what: str, predicate: Callable[[], object], timeout: float, interval: float = 0.5):
    """Poll until `predicate` returns something truthy; that value, or AssertionError after `timeout` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout:.0f} s")
        time.sleep(interval)


def outbox_age(cluster: Cluster) -> float | None:
    return readiness(cluster)["gauges"]["audit_outbox_oldest_age_seconds"]


def wait_until_shipped(cluster: Cluster, timeout: float = 60.0) -> float:
    """Until the outbox is empty (the gauge is null); returns the seconds it took."""
    started = time.monotonic()
    wait_for("the audit outbox to drain", lambda: outbox_age(cluster) is None, timeout)
    return time.monotonic() - started


def audit_entries_by_request(cluster: Cluster, prefix: str) -> dict[str, list[dict]]:
    """Entries of the signed audit log (read as the audit database's read-only role) per request id. Besides
    the access itself a request may have recorded a key operation (a data key unwrapped when its cached copy
    expired): filter by resource where that matters."""
    found: dict[str, list[dict]] = {}
    with psycopg.connect(cluster.env["AUDIT_READER_DATABASE_URL"], autocommit=True) as conn:
        rows = conn.execute(
            "SELECT entry FROM audit_entry WHERE entry::jsonb->>'request_id' LIKE %s", [prefix + "%"]
        ).fetchall()
    for (entry,) in rows:
        event = json.loads(entry)
        found.setdefault(event["request_id"], []).append(event)
    return found


# -- traffic from a few threads ------------------------------------------------------------------------------


@dataclass
class Outcome:
    request_id: str
    started: float
    seconds: float
    status: int | None  # None: no HTTP answer at all
    body: dict = field(default_factory=dict)
    retry_after: str | None = None
    error: str = ""

    @property
    def code(self) -> str:
        return (self.body.get("error") or {}).get("code", "")


class Traffic:
    """`send(api, request_id)` in a loop from a few threads until stopped; every request has its own id."""

    def __init__(
        self, api: Api, prefix: str, send: Callable[[Api, str], requests.Response], threads: int = 3
    ):
        self.api, self.prefix, self.send, self.threads = api, prefix, send, threads
        self.outcomes: list[Outcome] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._running: list[threading.Thread] = []

    def start(self) -> Traffic:
        for n in range(self.threads):
            thread = threading.Thread(target=self._loop, args=(self.api.fork(), n), daemon=True)
            thread.start()
            self._running.append(thread)
        return self

    def stop(self) -> list[Outcome]:
        self._stop.set()
        for thread in self._running:
            thread.join(timeout=60)
            assert not thread.is_alive(), "a request never returned"
        return self.outcomes

    def count(self, status: int | None = None, after: float = 0.0) -> int:
        with self._lock:
            return sum(
                1 for o in self.outcomes if (status is None or o.status == status) and o.started >= after
            )

    def _loop(self, api: Api, n: int) -> None:
        i = 0
        while not self._stop.is_set():
            request_id = f"{self.prefix}{n}-{i}-{uuid.uuid4().hex[:12]}"
            started = time.monotonic()
            try:
                response = self.send(api, request_id)
                try:
                    body = response.json()
                except ValueError:
                    body = {"unparsed": response.text[:200]}
                outcome = Outcome(
                    request_id,
                    started,
                    time.monotonic() - started,
                    response.status_code,
                    body if isinstance(body, dict) else {"list": body},
                    response.headers.get("Retry-After"),
                )
            except requests.RequestException as exc:
                outcome = Outcome(request_id, started, time.monotonic() - started, None, error=repr(exc))
            with self._lock:
                self.outcomes.append(outcome)
            i += 1


# -- video ---------------------------------------------------------------------------------------------------


@dataclass
class Visit:
    """A planned encounter between the demo practitioner and one of their patients, made through the API."""

    encounter: str
    doctor: Api
    patient: Api
    doctor_user: str
    patient_user: str

    @property
    def call(self) -> dict:
        """What tests/video's Signal client needs."""
        return {
            "host": NORTHWIND,
            "encounter": self.encounter,
            "tokens": {"doctor": self.doctor.token, "patient": self.patient.token},
        }


def new_visit(cluster: Cluster, doctor: Api, patient_email: str) -> Visit:
    patient = Api(cluster, patient_email)
    record = patient.get("/api/v1/patients")["results"][0]  # a patient sees their own record only
    me = doctor.get("/api/v1/auth/me")
    encounter = doctor.post(
        "/api/v1/encounters",
        expect=201,
        json={
            "patient": record["id"],
            "practitioner": me["membership_id"],
            "scheduled_at": datetime.datetime.now(datetime.UTC).isoformat(),
            "reason": "failure drill",
        },
    )
    return Visit(
        encounter["id"], doctor, patient, me["user"]["id"], patient.get("/api/v1/auth/me")["user"]["id"]
    )


async def join(visit: Visit, port: int) -> tuple[Signal, Signal]:
    """Practitioner, then patient; the patient is admitted from the waiting room unless already in progress."""
    doctor, patient = Signal(visit.call, "doctor", port), Signal(visit.call, "patient", port)
    await doctor.open()
    await doctor.until("welcome")
    await patient.open()
    welcome = await patient.until("welcome")
    if not welcome["you"]["admitted"]:
        await doctor.until("waiting")
        await doctor.send({"type": "admit", "user": visit.patient_user})
        await patient.until("admitted")
    return doctor, patient


async def negotiate(doctor: Signal, patient: Signal, tag: str) -> None:
    """An offer one way and an answer the other: signalling flows between the two, whichever workers."""
    await doctor.send({"type": "offer", "sdp": f"v=0 offer {tag}"})
    assert (await patient.until("offer"))["sdp"] == f"v=0 offer {tag}"
    await patient.send({"type": "answer", "sdp": f"v=0 answer {tag}"})
    assert (await doctor.until("answer"))["sdp"] == f"v=0 answer {tag}"


async def leave(*signals: Signal) -> None:
    for signal in signals:
        if signal.ws is not None and signal.ws.close_code is None:
            with contextlib.suppress(Exception):
                await signal.send({"type": "leave"})
        await signal.close()


async def refused_as_unavailable(signal: Signal) -> None:
    """The socket is told signalling is unavailable (after whatever numbered messages were queued) and closed."""
    message = await signal.receive()
    while message.get("seq"):
        message = await signal.receive()
    assert message["type"] == "error" and message["code"] == "signalling_unavailable", message
    assert signal.ws is not None
    await asyncio.wait_for(signal.ws.wait_closed(), 5)
    assert signal.ws.close_code == SIGNALLING_UNAVAILABLE


async def settled(sockets: list[Signal], timeout: float = 10.0, quiet: float = 1.0) -> list[Signal]:
    """The sockets that closed, once at least one did and no more followed for `quiet` s."""
    deadline = time.monotonic() + timeout
    closed: list[Signal] = []
    since = time.monotonic()
    while time.monotonic() < deadline:
        now = [s for s in sockets if s.ws is not None and s.ws.close_code is not None]
        if len(now) != len(closed):
            closed, since = now, time.monotonic()
        elif closed and time.monotonic() - since >= quiet:
            break
        await asyncio.sleep(0.1)
    return closed


# -- the drills ------------------------------------------------------------------------------------------------


def test_with_vault_down_warm_keys_keep_serving_cold_ones_answer_503_and_reads_recover(cluster):
    bases = workers(cluster)
    northwind = Api(cluster, DOCTOR)
    harbor = Api(cluster, "dr.okafor@harbor.example", host=HARBOR)  # signing in needs no key
    # Warm: every worker unwraps Northwind's data keys (reading decrypts); no worker has read Harbor yet.
    for base in bases:
        page = northwind.get("/api/v1/patients", base=base)
        assert page["results"] and all(p["given_name"] for p in page["results"])
        northwind.get(f"/api/v1/patients/{page['results'][0]['id']}", base=base)

    cluster.stop_vault()
    stopped = time.monotonic()
    try:
        report = readiness(cluster)
        assert check(report, "vault") == "unavailable" and report["status"] != "ok", report
        rounds = 0
        while True:
            for base in bases:
                page = northwind.get("/api/v1/patients", base=base)  # warm: served from memory
                assert page["results"] and all(p["given_name"] for p in page["results"]), base
                cold = harbor.call("GET", "/api/v1/patients", base=base)
                assert cold.status_code == 503, (base, cold.status_code, cold.text[:300])
                assert cold.json()["error"]["code"] == "key_service_unavailable"
                assert cold.headers.get("Retry-After")
            rounds += 1
            if time.monotonic() - stopped >= VAULT_DOWN:
                break
            time.sleep(min(10.0, max(0.0, VAULT_DOWN - (time.monotonic() - stopped))))
        assert check(readiness(cluster), "vault") == "unavailable"
    finally:
        restarting = time.monotonic()
        cluster.start_vault()
    started = time.monotonic()
    for base in bases:
        wait_for(
            f"Harbor's records on {base}",
            lambda base=base: harbor.call("GET", "/api/v1/patients", base=base).status_code == 200,
            timeout=20,
        )
    recovered = time.monotonic()
    assert check(readiness(cluster), "vault") == "ok"
    print(
        f"\nvault down {started - stopped:.0f} s ({rounds} rounds: warm 200, cold 503 on every worker); "
        f"OpenBao restart {started - restarting:.1f} s, cold reads 200 on every worker "
        f"{recovered - started:.2f} s after it was back"
    )


def test_video_sessions_resume_on_another_worker_when_theirs_is_killed(cluster):
    doctor = Api(cluster, DOCTOR)
    visits = [
        new_visit(cluster, doctor, email)
        for email in ("ada.brook@patients.northwind.example", "ben.carter@patients.northwind.example")
    ]
    try:
        result = asyncio.run(asyncio.wait_for(kill_a_worker_under_calls(cluster, visits), 120))
    finally:
        cluster.restart_worker(0)
    wait_for("the restarted worker", lambda: unauthenticated().get(f"{workers(cluster)[0]}/healthz").ok, 30)
    for visit in visits:
        encounter = doctor.get(f"/api/v1/encounters/{visit.encounter}")
        assert encounter["status"] == "in-progress" and not encounter["documentation_required"], encounter
    print(
        f"\nworker0 killed: {result['dropped']} of {result['sockets']} sockets dropped, all resumed on worker1 "
        f"{result['resumed_after']:.2f} s after the kill, signalling flowing {result['flowing_after']:.2f} s"
    )


async def kill_a_worker_under_calls(cluster: Cluster, visits: list[Visit]) -> dict:
    port = cluster.http_port
    sessions = []
    try:
        for visit in visits:
            doctor, patient = await join(
                visit, port
            )  # nginx (least_conn) spreads the sockets over both workers
            await negotiate(doctor, patient, "before")
            sessions.append((visit, doctor, patient))
        sockets = [s for _, d, p in sessions for s in (d, p)]

        killed = time.monotonic()
        await asyncio.to_thread(cluster.services["worker0"].kill)
        dropped = await settled(sockets)
        assert 0 < len(dropped) < len(sockets), (
            f"{len(dropped)} of {len(sockets)} sockets dropped: they were not spread over both workers"
        )

        for visit, doctor, patient in sessions:
            for me, peer in ((doctor, patient), (patient, doctor)):
                if me not in dropped:
                    continue
                seen = me.last_seq
                await me.resume()  # through nginx: worker0 refuses connections, worker1 takes it
                received = [await me.receive()]
                while received[-1]["type"] != "restart_ice":
                    received.append(await me.receive())
                welcome = next(m for m in received if m["type"] == "welcome")
                assert welcome["resumed"] is True and welcome["encounter"]["status"] == "in-progress"
                assert received[0]["seq"] == seen + 1  # replay from what it missed, nothing repeated
                if peer not in dropped:
                    user = visit.doctor_user if me is doctor else visit.patient_user
                    assert (await peer.until("restart_ice"))["user"] == user
        resumed_after = time.monotonic() - killed

        for _, doctor, patient in sessions:
            await negotiate(doctor, patient, "after")
        return {
            "sockets": len(sockets),
            "dropped": len(dropped),
            "resumed_after": resumed_after,
            "flowing_after": time.monotonic() - killed,
        }
    finally:
        await leave(*[s for _, d, p in sessions for s in (d, p)])


def test_with_redis_down_signalling_says_unavailable_records_keep_working_and_calls_rejoin(cluster):
    doctor = Api(cluster, DOCTOR)
    visit = new_visit(cluster, doctor, "cleo.dunn@patients.northwind.example")
    result = asyncio.run(asyncio.wait_for(redis_outage(cluster, visit), REDIS_DOWN + 120))

    encounter = doctor.get(f"/api/v1/encounters/{visit.encounter}")
    assert encounter["status"] == "in-progress" and not encounter["documentation_required"], encounter
    timeline = doctor.get(f"/api/v1/encounters/{visit.encounter}/timeline")
    interrupted = [e for e in timeline if e["kind"] == "video_interrupted"]
    assert len(interrupted) == 2 and all(
        e["detail"]["reason"] == "signalling_unavailable" for e in interrupted
    )
    notes = doctor.every(f"/api/v1/encounters/{visit.encounter}/notes")
    assert [n["id"] for n in notes] == [result["note"]]  # written while Redis was down
    assert check(readiness(cluster), "redis") == "ok"
    print(
        f"\nredis down {result['down']:.0f} s: open sockets told signalling_unavailable/4503 within "
        f"{result['told_after']:.2f} s, {result['refused']} joins refused alike, records API 200 throughout; "
        f"back empty: old token resume_rejected, fresh join welcomed {result['rejoined_after']:.2f} s after start"
    )


async def redis_outage(cluster: Cluster, visit: Visit) -> dict:
    port = cluster.http_port
    doctor, patient = await join(visit, port)
    await negotiate(doctor, patient, "before")
    redis = cluster.services["redis"]
    again: list[Signal] = []
    try:
        await asyncio.to_thread(redis.stop)
        stopped = time.monotonic()
        await refused_as_unavailable(doctor)
        await refused_as_unavailable(patient)
        told_after = time.monotonic() - stopped

        refused, note = 0, ""
        while True:
            # A client retrying with backoff: new joins are refused the same way while Redis is down.
            fresh = Signal(visit.call, "patient", port)
            await fresh.open()
            await refused_as_unavailable(fresh)
            refused += 1
            # The records never needed Redis: reads and writes go on, and readiness names what is missing.
            assert (await asyncio.to_thread(visit.doctor.get, f"/api/v1/encounters/{visit.encounter}"))[
                "status"
            ] == "in-progress"
            await asyncio.to_thread(visit.doctor.get, "/api/v1/patients")
            if not note:
                note = (
                    await asyncio.to_thread(
                        visit.doctor.post,
                        f"/api/v1/encounters/{visit.encounter}/notes",
                        expect=201,
                        json={"body": "Written while video signalling was down."},
                    )
                )["id"]
            report = await asyncio.to_thread(readiness, cluster)
            assert check(report, "redis") == "unavailable" and report["status"] != "ok", report
            left = REDIS_DOWN - (time.monotonic() - stopped)
            if left <= 0:
                break
            await asyncio.sleep(min(5.0, left))
    finally:
        await asyncio.to_thread(redis.start)
    started = time.monotonic()
    try:
        # Redis keeps no data: the resume token it held is gone, and the client is told to join afresh.
        await doctor.resume()
        refusal = await doctor.receive()
        assert refusal["type"] == "error" and refusal["code"] == "resume_rejected", refusal
        doctor_again, patient_again = await join(visit, port)
        again = [doctor_again, patient_again]
        rejoined_after = time.monotonic() - started
        await negotiate(doctor_again, patient_again, "after")
        return {
            "down": started - stopped,
            "told_after": told_after,
            "refused": refused,
            "note": note,
            "rejoined_after": rejoined_after,
        }
    finally:
        await leave(*again)
        await doctor.close()
        await patient.close()


def test_the_audit_backlog_grows_while_the_shipper_is_down_then_drains_with_nothing_lost_or_doubled(
    cluster, tmp_path
):
    doctor = Api(cluster, DOCTOR)
    patients = [p["id"] for p in doctor.get("/api/v1/patients")["results"]]
    wait_until_shipped(cluster)
    prefix = f"drill-ship-{uuid.uuid4().hex[:8]}-"

    def read_a_record(api: Api, request_id: str) -> requests.Response:
        patient = patients[hash(request_id) % len(patients)]
        return api.call("GET", f"/api/v1/patients/{patient}", request_id=request_id)  # one audit event

    load = Traffic(doctor, prefix, read_a_record, threads=3).start()
    shipper = cluster.services["shipper"]
    try:
        wait_for("audited load", lambda: load.count(200) >= 30, timeout=30, interval=0.2)
        shipper.kill()
        killed = time.monotonic()
        samples = []  # (seconds since the kill, backlog age, audit_outbox check, readiness status)
        while time.monotonic() - killed < SHIPPER_DOWN:
            report = readiness(cluster)
            age = report["gauges"]["audit_outbox_oldest_age_seconds"]
            samples.append((time.monotonic() - killed, age, check(report, "audit_outbox"), report["status"]))
            time.sleep(min(3.0, max(0.0, SHIPPER_DOWN - (time.monotonic() - killed))))
        queued = load.count(after=killed)
    finally:
        shipper.start()
    restarted = time.monotonic()
    try:
        # The backlog goes while the load goes on; then the load stops and the outbox empties.
        wait_for("the backlog to be shipped", lambda: (outbox_age(cluster) or 0) < 5, timeout=60)
        caught_up = time.monotonic() - restarted
    finally:
        outcomes = load.stop()
    drained = wait_until_shipped(cluster)

    if samples[0][1] is None:
        samples.pop(0)  # read just after the kill, between two committed reads: nothing was waiting yet
    ages = [age for _, age, _, _ in samples]
    assert all(age is not None for age in ages), samples
    assert all(b >= a for a, b in itertools.pairwise(ages)), f"the backlog's age went down: {samples}"
    assert ages[-1] >= SHIPPER_DOWN - 10, samples
    for since, age, status, overall in samples:
        if age > MAX_LAG + 3:
            assert status == "unavailable" and overall != "ok", samples
        elif age < MAX_LAG - 3:
            assert status == "ok", samples

    statuses = Counter(o.status for o in outcomes)
    assert set(statuses) == {200}, statuses
    served = {o.request_id for o in outcomes}
    logged = {
        rid: [e for e in events if e["resource"]["type"] == "Patient"]
        for rid, events in audit_entries_by_request(cluster, prefix).items()
    }
    assert set(logged) == served, f"{len(served - set(logged))} requests missing from the log"
    doubled = {rid: len(events) for rid, events in logged.items() if len(events) != 1}
    assert not doubled, f"requests with more than one event: {list(doubled.items())[:5]}"
    org = {e["org"] for events in logged.values() for e in events}
    assert len(org) == 1
    with psycopg.connect(cluster.env["AUDIT_READER_DATABASE_URL"], autocommit=True) as conn:
        total, distinct, first, last = conn.execute(
            "SELECT count(*), count(DISTINCT event_id), min(seq), max(seq) FROM audit_entry WHERE org_id = %s",
            [org.pop()],
        ).fetchone()
    assert total == distinct and (first, last) == (0, total - 1), (total, distinct, first, last)

    exported, keys = export_and_verify(cluster, tmp_path, "northwind")
    in_export = Counter(
        e["request_id"]
        for e in exported
        if e["request_id"].startswith(prefix) and e["resource"]["type"] == "Patient"
    )
    assert set(in_export) == served and set(in_export.values()) == {1}
    print(
        f"\nshipper down {restarted - killed:.0f} s under {len(outcomes)} audited reads ({queued} meanwhile): "
        f"backlog age {ages[0]:.0f} -> {ages[-1]:.0f} s, audit_outbox failing from "
        f"{next((s for s, a, st, _ in samples if st != 'ok'), float('nan')):.0f} s; restarted: backlog under "
        f"5 s after {caught_up:.1f} s, outbox empty {drained:.1f} s after the load; {len(served)} requests "
        f"each logged once; export of {len(exported)} entries verified with {keys} pinned key(s)"
    )


def manage(cluster: Cluster, *args: str) -> str:
    result = subprocess.run(
        [sys.executable, str(ROOT / "manage.py"), *args],
        env=cluster.env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, f"manage.py {args[0]}: {result.stderr[-2000:]}"
    return result.stdout


def export_and_verify(cluster: Cluster, tmp_path: Path, org: str) -> tuple[list[dict], int]:
    """audit_export, then the offline verifier with the signing key read from Vault (README, For auditors)."""
    out = tmp_path / f"{org}-audit"
    manage(cluster, "audit_export", "--org", org, "--out", str(out))
    printed = manage(
        cluster,
        "shell",
        "--verbosity",
        "0",
        "-c",
        "from audit.signer import CheckpointSigner; print(*CheckpointSigner().vkeys(), sep=chr(10))",
    )
    vkeys = [line for line in printed.split() if VKEY.match(line)]
    pins = []
    for n, vkey in enumerate(vkeys):
        pin = tmp_path / f"signer-{n}.vkey"
        pin.write_text(vkey + "\n")
        pins += ["--key", str(pin)]
    assert pins, "no verifier key from Vault"
    verify = subprocess.run(
        [sys.executable, "-m", "audit.verify", str(out), *pins, "--check-derived"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert verify.returncode == 0 and verify.stdout.startswith("OK:"), verify.stdout + verify.stderr
    entries = [json.loads(line) for line in (out / "entries.ndjson").read_text().splitlines() if line]
    return entries, len(vkeys)


@contextlib.contextmanager
def writes_held_at_the_insert(cluster: Cluster) -> Iterator[None]:
    """Lock the notes table against inserts (as the superuser, straight to PostgreSQL) until at least one write
    waits on it; the block then restarts the server, which ends the lock with everything else."""
    blocker = psycopg.connect(cluster.admin_url, dbname=cluster.dbname)
    try:
        blocker.execute("LOCK TABLE clinic_clinicalnote IN SHARE MODE")

        def waiting() -> int:
            with psycopg.connect(cluster.admin_url, dbname=cluster.dbname, autocommit=True) as conn:
                row = conn.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND wait_event_type = 'Lock'",
                    [cluster.dbname],
                ).fetchone()
                return row[0] if row else 0

        wait_for("a write waiting on the lock", waiting, timeout=10, interval=0.05)
        yield
    finally:
        with contextlib.suppress(psycopg.Error):
            blocker.close()


def worker_tracebacks(cluster: Cluster) -> str:
    """The workers' logged tracebacks, for an assertion message (an answer was not what it should be)."""
    found = []
    for log in sorted(cluster.logdir.glob("worker*.log")):
        text = log.read_text(errors="replace")
        found += [f"{log.name}: {part[:3000]}" for part in text.split("Traceback")[1:]]
    return "\n".join(found[-3:]) or "no traceback in the workers' logs"


def test_a_postgresql_restart_fails_writes_cleanly_then_they_recover_with_no_partial_write(cluster):
    doctor = Api(cluster, DOCTOR)
    visit = new_visit(cluster, doctor, "eva.frost@patients.northwind.example")
    for action in ("arrive", "admit", "start"):
        doctor.post(f"/api/v1/encounters/{visit.encounter}/{action}")
    prefix = f"drill-pg-{uuid.uuid4().hex[:8]}-"

    def write_a_note(api: Api, request_id: str) -> requests.Response:
        path = f"/api/v1/encounters/{visit.encounter}/notes"
        return api.call("POST", path, request_id=request_id, json={"body": f"Note {request_id}"})

    writes = Traffic(doctor, prefix, write_a_note, threads=3).start()
    try:
        wait_for("writes before the restart", lambda: writes.count(201) >= 15, timeout=30, interval=0.2)
        # Writes are in flight when the server goes: a lock holds them inside their transactions (insert
        # waiting), so the stop cuts open transactions every time rather than only when timing happens to.
        with writes_held_at_the_insert(cluster):
            stopping = time.monotonic()
            cluster.restart_postgres(down_seconds=POSTGRES_DOWN)
        back = time.monotonic()
        wait_for("a write after the restart", lambda: writes.count(201, after=back), timeout=20, interval=0.1)
        recovered = time.monotonic() - back
        wait_for("more writes after the restart", lambda: writes.count(201, after=back) >= 30, timeout=30)
    finally:
        outcomes = writes.stop()

    statuses = Counter(o.status for o in outcomes)
    assert set(statuses) <= {201, 503}, (
        {o.status: (o.body, o.error) for o in outcomes if o.status not in (201, 503)},
        worker_tracebacks(cluster),
    )
    failed = [o for o in outcomes if o.status == 503]
    assert failed, "no write failed: the restart cut no open transaction"
    assert {o.code for o in failed} == {"database_unavailable"}, Counter(o.code for o in failed)
    assert all(o.retry_after for o in failed)
    slowest = max(o.seconds for o in outcomes)
    assert slowest < 15, f"a request took {slowest:.1f} s"
    assert max(o.started for o in failed) < back + 5, "writes kept failing after the restart"

    # No partial writes: every 201 note exists exactly once, and nothing of a 503 is anywhere.
    stored = doctor.every(f"/api/v1/encounters/{visit.encounter}/notes")
    created = {o.body["id"]: o.request_id for o in outcomes if o.status == 201}
    assert len(stored) == len({n["id"] for n in stored}) == len(created)
    assert {n["id"] for n in stored} == set(created)
    assert {n["body"] for n in stored} == {f"Note {rid}" for rid in created.values()}

    # The shipper rode out the restart, and the audit trail matches the answers: events for every 201,
    # none for any 503 (its transaction, outbox row included, rolled back whole).
    assert cluster.services["shipper"].running
    drained = wait_until_shipped(cluster)
    logged = audit_entries_by_request(cluster, prefix)
    assert set(created.values()) <= set(logged), "a stored note has no audit event"
    assert not {o.request_id for o in failed} & set(logged), "a refused write left audit events"
    assert doctor.get(f"/api/v1/encounters/{visit.encounter}")["status"] == "in-progress"
    print(
        f"\npostgres restarted ({back - stopping:.1f} s, {POSTGRES_DOWN:.0f} s down) under {len(outcomes)} "
        f"writes: {statuses[201]} stored, {len(failed)} answered 503 database_unavailable, slowest "
        f"{slowest:.2f} s; first write stored {recovered:.2f} s after the restart; audit outbox empty "
        f"{drained:.1f} s later"
    )


def test_workers_reuse_their_database_connections_and_no_tenant_context_crosses_them(cluster):
    """Each worker keeps a pool of client connections to PgBouncer (DATABASE_POOL_SIZE), which itself hands
    each transaction any of its few server connections: interleaved requests of two clinics from several
    threads each see only their own clinic, and the workers log in to PgBouncer a few times, not per request.
    Last in the module: it reads both clinics, which would warm the keys the Vault drill needs cold, and it
    shows the pools recovered from the PostgreSQL restart."""
    northwind, harbor = Api(cluster, DOCTOR), Api(cluster, "dr.okafor@harbor.example", host=HARBOR)
    own = {
        api.host: {p["id"] for p in api.every("/api/v1/patients")} for api in (northwind, harbor)
    }  # also warms each worker's pool a little
    assert own[NORTHWIND] and own[HARBOR] and not own[NORTHWIND] & own[HARBOR]
    pool_size = int(cluster.worker_env["DATABASE_POOL_SIZE"])
    before, rounds, seen = pgbouncer_logins(cluster), 40, []
    lock = threading.Lock()

    def reader(api: Api) -> None:
        for _ in range(rounds):
            page = api.get("/api/v1/patients")
            detail = api.get(f"/api/v1/patients/{page['results'][0]['id']}")
            with lock:
                seen.append((api.host, {p["id"] for p in page["results"]} | {detail["id"]}))

    threads = [
        threading.Thread(target=reader, args=(api.fork(),)) for api in (northwind, harbor, northwind, harbor)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert len(seen) == 4 * rounds, "a reader failed (see above)"
    for host, ids in seen:
        assert ids <= own[host], f"{host} was shown another clinic's patients: {ids - own[host]}"
    logins = pgbouncer_logins(cluster) - before
    requests_made = 2 * len(seen)
    assert logins <= len(cluster.worker_ports) * pool_size, (logins, requests_made)
    print(f"\n{requests_made} requests from 4 threads of two clinics: {logins} new PgBouncer logins")
