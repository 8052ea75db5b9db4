"""A clinic day under load (locust): practitioners and patients against the loopback cluster.

Practitioners sign in once, search patients by email (blind index), open charts, list encounters, run video
visits over the signalling socket (video/PROTOCOL.md) and write and sign notes. Patients sign in once, read their
own record, encounters, care team and access log, and ask for a video visit with someone on their care team,
then join it from the waiting room. tests/drills/test_load.py runs this file headless in a subprocess (gevent's
monkey-patching stays out of pytest) and checks what it recorded against the exported audit log:

    locust -f tests/load/locustfile.py --headless -u 60 -r 10 -t 10m --host http://127.0.0.1:PORT

Environment:

- `LOAD_ACCOUNTS` (required): a JSON file `{"password": ..., "clinics": [{"slug", "host", "practitioners":
  [email, ...], "patients": [email, ...]}]}` naming the demo accounts (the drill writes it from seed_demo).
- `LOAD_RECORD_DIR` (default: the working directory): where each locust process writes
  `audited-<pid>.ndjson`, one line per audited request or video step with the audit events it must have
  produced, and `timings-<pid>.csv`, every request's time, kind, name, latency and outcome.
- `LOAD_THINK` (default 1): multiplies every wait time (0.5 halves the think time, 2 doubles it).

Every HTTP request carries its own `X-Request-ID` (the server keeps a well-formed one, tenancy/middleware.py,
and the audit events of that request carry it); a response that does not echo it back is a failure. Video
events are recorded on the server with a request id of their own, so video steps are matched by action,
encounter and user instead. Tokens are reused for the whole run: one sign-in per simulated user, never one per
request (sign-in costs an Argon2 hash, and failed ones count towards a lockout).
"""

from __future__ import annotations

import csv
import functools
import inspect
import itertools
import json
import os
import random
import socket
import time
import uuid
from collections import Counter, defaultdict, deque
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import gevent
from gevent.event import AsyncResult, Event
from locust import FastHttpUser, between, events, task
from locust.exception import RescheduleTask
from websockets.sync.client import ClientConnection, connect

THINK = float(os.environ.get("LOAD_THINK", "1"))
RECORD_DIR = Path(os.environ.get("LOAD_RECORD_DIR", "."))
# How long a patient waits in the queue for a practitioner to pick up their visit request before giving up
# (no failure: a practitioner busy with someone else is a clinic day, not an error).
QUEUE_PATIENCE = 15.0
# How long either side of a visit waits for the other's next message: far beyond any healthy latency, so only a
# lost or refused message fails.
MESSAGE_TIMEOUT = 30.0
# websockets 17 warns unless connect() is a context manager or `legacy=True` asks for the connection itself;
# older versions have no such flag and return the connection.
DIRECT = {"legacy": True} if "legacy" in inspect.signature(connect).parameters else {}
FAKE_SDP = "v=0\r\no=- 4611731400430051336 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n" + "a=load-test\r\n" * 40


def _accounts() -> dict:
    path = os.environ.get("LOAD_ACCOUNTS")
    if not path:
        raise RuntimeError("set LOAD_ACCOUNTS to the accounts file (see this module's docstring)")
    return json.loads(Path(path).read_text())


ACCOUNTS: dict | None = None


def accounts() -> dict:
    global ACCOUNTS
    if ACCOUNTS is None:
        ACCOUNTS = _accounts()
    return ACCOUNTS


# -- what this process recorded ---------------------------------------------------------------------------


class Recorder:
    """Audited requests and video steps (for the audit check) and every request's timing (for the report).

    The files are per process, so several locust processes (--processes) never write to the same one.
    """

    def __init__(self) -> None:
        self.audited = None
        self.timings: list[tuple[float, str, str, float, int]] = []
        self.started = time.time()
        self.counters: Counter[str] = Counter()

    def expect(self, key: dict, events_: list[list[str]]) -> None:
        """`key` identifies the request (request_id) or the video step (kind ws); `events_` lists the audit
        events it must have produced, each [action, resource type, resource id] (+ actor user for video)."""
        if self.audited is None:
            RECORD_DIR.mkdir(parents=True, exist_ok=True)
            # Line-buffered: a killed process still leaves every line it completed.
            self.audited = (RECORD_DIR / f"audited-{os.getpid()}.ndjson").open("a", buffering=1)
        self.audited.write(json.dumps({**key, "expect": events_}) + "\n")

    def timing(self, kind: str, name: str, ms: float, ok: bool) -> None:
        self.timings.append((time.time() - self.started, kind, name, ms, int(ok)))

    def close(self) -> None:
        if self.audited is not None:
            self.audited.close()
            self.audited = None
        RECORD_DIR.mkdir(parents=True, exist_ok=True)
        with (RECORD_DIR / f"timings-{os.getpid()}.csv").open("w", newline="") as handle:
            out = csv.writer(handle)
            out.writerow(["t", "kind", "name", "ms", "ok"])
            out.writerows((f"{t:.3f}", k, n, f"{ms:.2f}", ok) for t, k, n, ms, ok in self.timings)
        (RECORD_DIR / f"counters-{os.getpid()}.json").write_text(json.dumps(self.counters))


RECORD = Recorder()


@events.test_start.add_listener
def _on_test_start(**_kwargs) -> None:
    RECORD.started = time.time()


@events.request.add_listener
def _on_request(request_type, name, response_time, exception=None, **_kwargs) -> None:
    RECORD.timing("WS" if request_type == "WS" else "HTTP", name, response_time or 0.0, exception is None)


@events.quitting.add_listener
def _on_quitting(**_kwargs) -> None:
    RECORD.close()


# -- the waiting room between patients and practitioners (in this process) -------------------------------


class VisitRequest:
    """A patient asking one practitioner for a video visit; the practitioner answers with an encounter."""

    def __init__(self, patient_id: str, patient_user: str) -> None:
        self.patient_id = patient_id
        self.patient_user = patient_user
        self.claimed = Event()
        self.abandoned = False
        self.encounter: AsyncResult = AsyncResult()


class Board:
    """Which practitioners are online here, and the patients queued for each (by membership id).

    gevent switches only on I/O, so checking and setting `abandoned` and `claimed` cannot interleave.
    """

    def __init__(self) -> None:
        self.online: Counter[str] = Counter()
        self.queues: dict[str, deque[VisitRequest]] = defaultdict(deque)

    def ask(self, practitioner: str, request: VisitRequest) -> None:
        self.queues[practitioner].append(request)

    def claim(self, practitioner: str) -> VisitRequest | None:
        queue = self.queues[practitioner]
        while queue:
            request = queue.popleft()
            if not request.abandoned:
                request.claimed.set()
                return request
        return None


BOARD = Board()


class VisitError(Exception):
    """A visit step that did not happen as video/PROTOCOL.md says (a locust failure, request type WS)."""


# -- users ----------------------------------------------------------------------------------------------


class ClinicUser(FastHttpUser):
    """One person at one clinic with one bearer token for the whole run."""

    abstract = True
    connection_timeout = 30.0
    network_timeout = 60.0

    def pick_account(self) -> tuple[dict, str]:
        raise NotImplementedError

    def on_start(self) -> None:
        self.clinic, self.email = self.pick_account()
        self.clinic_host = self.clinic["host"]
        target = urlsplit(self.host)
        self.target = (target.hostname or "127.0.0.1", target.port or 80)
        self.token = ""
        body = self.api(
            "POST",
            "/api/v1/auth/tokens",
            name="POST /auth/tokens",
            json={"email": self.email, "password": accounts()["password"]},
            ok=(201,),
            expect=lambda body: [["login", "Session", ""]],
        )
        self.token = body["token"]
        me = self.api("GET", "/api/v1/auth/me", name="GET /auth/me")
        self.user_id = me["user"]["id"]
        self.membership_id = me["membership_id"]

    # -- HTTP -------------------------------------------------------------------------------------------

    def api(
        self,
        method: str,
        path: str,
        *,
        name: str,
        json: Any = None,
        ok: tuple[int, ...] = (200,),
        expect=None,
    ) -> Any:
        """One request with its own request id; a status outside `ok` or a lost request id is a failure and
        ends the task. `expect(body)` lists the audit events the request must have produced."""
        request_id = f"load-{uuid.uuid4().hex}"
        headers = {"Host": self.clinic_host, "X-Request-ID": request_id, "Accept": "application/json"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        with self.client.request(
            method, path, name=name, json=json, headers=headers, catch_response=True
        ) as response:
            if response.status_code not in ok:
                response.failure(f"HTTP {response.status_code}: {(response.text or '')[:300]}")
                raise RescheduleTask()
            if response.headers.get("X-Request-ID") != request_id:
                response.failure(f"request id not kept: {response.headers.get('X-Request-ID')!r}")
                raise RescheduleTask()
            try:
                body = response.json() if response.content else None
            except ValueError:
                response.failure("not JSON")
                raise RescheduleTask() from None
            if expect is not None:
                expected = expect(body)
                RECORD.expect({"kind": "http", "request_id": request_id, "name": name}, expected)
            return body

    def page_reads(self, resource: str, field: str = "id"):
        """The audit events of a list page: one read per row (clinic.views.paginate)."""
        return lambda body: [["read", resource, row[field]] for row in body["results"]]

    # -- the signalling socket --------------------------------------------------------------------------

    def ws_event(self, name: str, started: float, exc: Exception | None = None) -> None:
        self.environment.events.request.fire(
            request_type="WS",
            name=name,
            response_time=(time.perf_counter() - started) * 1000,
            response_length=0,
            exception=exc,
            context={},
        )

    def ws_open(self, encounter_id: str, name: str) -> tuple[ClientConnection, dict]:
        """Connect to the encounter's signalling socket through nginx; answer the `welcome`."""
        started = time.perf_counter()
        try:
            sock = socket.create_connection(self.target, timeout=10)
            ws = connect(
                f"ws://{self.clinic_host}:{self.target[1]}/ws/v1/encounters/{encounter_id}/signal",
                sock=sock,
                origin=f"http://{self.clinic_host}:{self.target[1]}",  # type: ignore[arg-type]
                additional_headers={"Authorization": f"Bearer {self.token}"},
                proxy=None,
                open_timeout=MESSAGE_TIMEOUT,
                ping_interval=None,
                user_agent_header="telemed-load/1",
                **DIRECT,
            )
            ws.encounter_id = encounter_id  # type: ignore[attr-defined]  # named in failures
        except Exception as exc:
            self.ws_event(name, started, exc)
            raise RescheduleTask() from exc
        try:
            welcome = self.ws_wait(ws, {"welcome"})
        except VisitError as exc:
            ws.close()
            self.ws_event(name, started, exc)
            raise RescheduleTask() from exc
        self.ws_event(name, started)
        return ws, welcome

    def ws_wait(self, ws: ClientConnection, kinds: set[str], timeout: float = MESSAGE_TIMEOUT) -> dict:
        """The next message of one of `kinds`, skipping the others (presence, state...); an `error` fails.

        A message that does not come in time is a failure. Before reporting it, the socket is probed with a
        `ping` (answered directly, outside the numbered stream) and watched for as long again, so the failure
        says whether the server was alive, and whether the message came late or not at all."""
        wanted = "/".join(sorted(kinds))
        started = time.monotonic()
        deadline = started + timeout
        probe_sent = pong_at = None
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                if probe_sent is None:
                    probe_sent = time.monotonic()
                    deadline = probe_sent + timeout
                    ws.send(json.dumps({"type": "ping"}))
                    continue
                pong = f"pong after {pong_at - probe_sent:.1f} s" if pong_at else "no pong"
                raise VisitError(
                    f"no {wanted} within {timeout:.0f} s (last seq {getattr(ws, 'last_seq', 0)}); "
                    f"probe: {pong}, and no {wanted} within {timeout:.0f} s more; "
                    f"encounter {getattr(ws, 'encounter_id', '?')}"
                )
            try:
                raw = ws.recv(timeout=remaining)
            except TimeoutError:
                continue
            except Exception as exc:
                raise VisitError(f"socket closed waiting for {wanted}: {exc}") from exc
            message = json.loads(raw)
            if message.get("seq"):
                ws.last_seq = message["seq"]  # type: ignore[attr-defined]
            if message.get("type") == "error":
                raise VisitError(f"server error {message.get('code')}: {message.get('message')}")
            if message.get("type") == "pong" and probe_sent is not None and pong_at is None:
                pong_at = time.monotonic()
            if message.get("type") in kinds:
                if probe_sent is not None:
                    pong = f"pong after {pong_at - probe_sent:.1f} s" if pong_at else "no pong"
                    raise VisitError(
                        f"{wanted} came only after {time.monotonic() - started:.0f} s "
                        f"(seq {message.get('seq')}; probe: {pong}); encounter {getattr(ws, 'encounter_id', '?')}"
                    )
                return message

    def ws_step(self, name: str, ws: ClientConnection, send: dict | None, kinds: set[str]) -> dict:
        """Send a message (if any) and time until the awaited answer arrives: one WS request in the stats."""
        started = time.perf_counter()
        try:
            if send is not None:
                ws.send(json.dumps(send))
            message = self.ws_wait(ws, kinds)
        except Exception as exc:
            self.ws_event(name, started, exc)
            ws.close()
            raise RescheduleTask() from exc
        self.ws_event(name, started)
        return message

    def ws_fail(self, name: str, message: str) -> None:
        """A visit step that went against the protocol: a failure in the stats, and the task ends."""
        self.ws_event(name, time.perf_counter(), VisitError(message))
        raise RescheduleTask()

    def expect_video(self, encounter_id: str, actions: list[str]) -> None:
        RECORD.expect(
            {"kind": "ws", "encounter": encounter_id},
            [[action, "Encounter", encounter_id, self.user_id] for action in actions],
        )


def waiting_room_first(method):
    """A patient in this practitioner's waiting room comes before whatever the practitioner would do next."""

    @functools.wraps(method)
    def run(self: Practitioner) -> None:
        request = BOARD.claim(self.membership_id)
        if request is not None:
            self.see(request)
            return
        method(self)

    return run


class Practitioner(ClinicUser):
    """A practitioner's day: worklist, charts, searches, video visits with notes, documentation."""

    weight = 1
    wait_time = between(0.5 * THINK, 2.0 * THINK)
    _next = itertools.count()

    def pick_account(self) -> tuple[dict, str]:
        pairs = [(clinic, email) for clinic in accounts()["clinics"] for email in clinic["practitioners"]]
        return pairs[next(Practitioner._next) % len(pairs)]

    def on_start(self) -> None:
        super().on_start()
        # The morning worklist: the patients in this practitioner's care (row policies decide which).
        worklist = self.api(
            "GET", "/api/v1/patients", name="GET /patients (worklist)", expect=self.page_reads("Patient")
        )
        self.patients = [{"id": row["id"], "email": row["email"]} for row in worklist["results"]]
        self.documentable: deque[str] = deque(maxlen=20)
        BOARD.online[self.membership_id] += 1

    def on_stop(self) -> None:
        if getattr(self, "membership_id", None):
            BOARD.online[self.membership_id] -= 1

    def a_patient(self) -> dict:
        if not self.patients:
            raise RescheduleTask()
        return random.choice(self.patients)

    @task(5)
    @waiting_room_first
    def search_patient(self) -> None:
        patient = self.a_patient()
        self.api(
            "GET",
            f"/api/v1/patients?email={patient['email']}",
            name="GET /patients?email=",
            expect=self.page_reads("Patient"),
        )

    @task(8)
    @waiting_room_first
    def open_chart(self) -> None:
        patient = self.a_patient()
        self.api(
            "GET",
            f"/api/v1/patients/{patient['id']}",
            name="GET /patients/{id}",
            expect=lambda body: [["read", "Patient", body["id"]]],
        )
        history = self.api(
            "GET",
            f"/api/v1/encounters?patient={patient['id']}",
            name="GET /encounters?patient=",
            expect=self.page_reads("Encounter"),
        )
        mine = [row for row in history["results"] if row["practitioner"] == self.membership_id]
        if mine:
            encounter = random.choice(mine)
            self.api(
                "GET",
                f"/api/v1/encounters/{encounter['id']}",
                name="GET /encounters/{id}",
                expect=lambda body: [["read", "Encounter", body["id"]]],
            )
            if encounter["status"] in ("arrived", "in-progress", "finished"):
                self.documentable.append(encounter["id"])

    @task(2)
    @waiting_room_first
    def list_encounters(self) -> None:
        self.api("GET", "/api/v1/encounters", name="GET /encounters", expect=self.page_reads("Encounter"))

    @task(3)
    @waiting_room_first
    def document(self) -> None:
        """Late documentation: an addendum note on one of this practitioner's own encounters, signed."""
        if not self.documentable:
            self.open_chart()
            return
        self.write_note(random.choice(self.documentable), "Addendum: results reviewed, plan unchanged.")

    def write_note(self, encounter_id: str, body: str, sign: bool = True) -> str:
        note = self.api(
            "POST",
            f"/api/v1/encounters/{encounter_id}/notes",
            name="POST /encounters/{id}/notes",
            json={"body": body},
            ok=(201,),
            expect=lambda body: [["create", "ClinicalNote", body["id"]]],
        )
        if sign:
            self.sign_note(note["id"])
        return note["id"]

    def sign_note(self, note_id: str) -> None:
        self.api(
            "POST",
            f"/api/v1/notes/{note_id}/sign",
            name="POST /notes/{id}/sign",
            expect=lambda body: [["update", "ClinicalNote", body["id"]]],
        )

    @task(2)
    def waiting_room(self) -> None:
        """Look at the waiting room list; if a patient of this practitioner asked for a visit, see them."""
        self.api(
            "GET",
            "/api/v1/encounters?status=arrived",
            name="GET /encounters?status=arrived",
            expect=self.page_reads("Encounter"),
        )
        request = BOARD.claim(self.membership_id)
        if request is not None:
            self.see(request)

    def see(self, request: VisitRequest) -> None:
        try:
            self.run_visit(request)
        except BaseException as exc:
            # The patient must not wait for an encounter that will never come.
            if not request.encounter.ready():
                request.encounter.set_exception(VisitError(f"the practitioner's side stopped: {exc!r}"))
            raise

    def run_visit(self, request: VisitRequest) -> None:
        encounter = self.api(
            "POST",
            "/api/v1/encounters",
            name="POST /encounters",
            json={
                "patient": request.patient_id,
                "practitioner": self.membership_id,
                "scheduled_at": datetime.now(UTC).isoformat(),
                "reason": "Video follow-up requested through the portal",
            },
            ok=(201,),
            expect=lambda body: [["create", "Encounter", body["id"]]],
        )
        encounter_id = encounter["id"]
        ws, _welcome = self.ws_open(encounter_id, "join (practitioner)")
        self.expect_video(encounter_id, ["video_join"])
        try:
            request.encounter.set(encounter_id)
            waiting = self.ws_step("wait: patient in the waiting room", ws, None, {"waiting"})
            if waiting.get("user") != request.patient_user:
                self.ws_fail("wait: patient in the waiting room", f"unexpected patient {waiting.get('user')}")
            # `state` follows the admission: committed (admit and start) before it is sent.
            self.ws_step("admit -> state", ws, {"type": "admit", "user": request.patient_user}, {"state"})
            self.expect_video(encounter_id, ["update", "update"])
            self.ws_step("offer -> answer", ws, {"type": "offer", "sdp": FAKE_SDP}, {"answer"})
            self.ws_step(
                "candidate -> candidate",
                ws,
                {"type": "candidate", "candidate": {"candidate": "candidate:1 1 udp 1 127.0.0.1 9 typ host"}},
                {"candidate"},
            )
            # During the visit: the note is drafted while talking, and signed once the visit has ended.
            note_id = self.write_note(encounter_id, "Video visit: symptoms improving; continue.", sign=False)
            self.ws_step("ping -> pong", ws, {"type": "ping"}, {"pong"})
            self.ws_step("end -> ended", ws, {"type": "end"}, {"ended"})
            self.expect_video(encounter_id, ["update"])
        finally:
            ws.close()
        self.sign_note(note_id)
        self.documentable.append(encounter_id)


class Patient(ClinicUser):
    """A patient at home: own record, visits, care team, the accounting of disclosures, and video visits."""

    weight = 3
    wait_time = between(1.0 * THINK, 4.0 * THINK)
    _next = itertools.count()

    def pick_account(self) -> tuple[dict, str]:
        pairs = [(clinic, email) for clinic in accounts()["clinics"] for email in clinic["patients"]]
        return pairs[next(Patient._next) % len(pairs)]

    def on_start(self) -> None:
        super().on_start()
        # A patient's list holds their own record only (row policies).
        own = self.api(
            "GET", "/api/v1/patients", name="GET /patients (own)", expect=self.page_reads("Patient")
        )
        if len(own["results"]) != 1:
            raise RuntimeError(f"{self.email} sees {len(own['results'])} patient records, not one")
        self.patient_id = own["results"][0]["id"]
        self.care_team = self.read_care_team()

    def read_care_team(self) -> list[str]:
        team = self.api(
            "GET",
            f"/api/v1/patients/{self.patient_id}/care-team",
            name="GET /patients/{id}/care-team",
            expect=self.page_reads("CareTeamMember"),
        )
        return [row["practitioner"] for row in team["results"] if row["active"]]

    @task(4)
    def my_record(self) -> None:
        self.api(
            "GET",
            f"/api/v1/patients/{self.patient_id}",
            name="GET /patients/{id} (own)",
            expect=lambda body: [["read", "Patient", body["id"]]],
        )

    @task(2)
    def my_encounters(self) -> None:
        self.api(
            "GET", "/api/v1/encounters", name="GET /encounters (own)", expect=self.page_reads("Encounter")
        )

    @task(1)
    def my_care_team(self) -> None:
        self.care_team = self.read_care_team()

    @task(1)
    def access_log(self) -> None:
        # The accounting of disclosures reads the audit database; it writes no audit event of its own.
        self.api("GET", "/api/v1/me/access-log", name="GET /me/access-log")

    @task(2)
    def video_visit(self) -> None:
        """Ask a practitioner on the care team for a visit; join from the waiting room once it is set up."""
        available = [p for p in self.care_team if BOARD.online[p] > 0]
        if not available:
            RECORD.counters["visit: no practitioner online"] += 1
            return
        request = VisitRequest(self.patient_id, self.user_id)
        BOARD.ask(random.choice(available), request)
        if not request.claimed.wait(timeout=QUEUE_PATIENCE):
            request.abandoned = True  # no switch since the wait returned: the claim cannot slip in between
            RECORD.counters["visit: not picked up in time"] += 1
            return
        started = time.perf_counter()
        try:
            encounter_id = request.encounter.get(timeout=MESSAGE_TIMEOUT)
        except (Exception, gevent.Timeout) as exc:
            self.ws_event("wait: visit set up", started, VisitError(repr(exc)))
            raise RescheduleTask() from exc
        self.ws_event("wait: visit set up", started)
        RECORD.counters["visit: joined"] += 1
        # The visit page loads the encounter first.
        self.api(
            "GET",
            f"/api/v1/encounters/{encounter_id}",
            name="GET /encounters/{id} (own)",
            expect=lambda body: [["read", "Encounter", body["id"]]],
        )
        ws, welcome = self.ws_open(encounter_id, "join (patient)")
        try:
            self.expect_video(encounter_id, ["video_join"])
            if welcome["you"]["admitted"]:
                self.ws_fail("join (patient)", "admitted before the practitioner admitted")
            self.ws_step("wait: admitted", ws, None, {"admitted"})
            # After the welcome the server checked the patient in (planned -> arrived) before it told the
            # practitioner, who admits only then: the admission proves that update is committed.
            self.expect_video(encounter_id, ["update"])
            self.ws_step("wait: offer", ws, None, {"offer"})
            self.ws_step(
                "answer + candidate -> candidate",
                ws,
                {"type": "answer", "sdp": FAKE_SDP},
                {"candidate"},
            )
            ws.send(
                json.dumps(
                    {"type": "candidate", "candidate": {"candidate": "candidate:2 1 udp 1 127.0.0.1 9"}}
                )
            )
            self.ws_step("wait: end of the visit", ws, None, {"ended"})
        finally:
            ws.close()
