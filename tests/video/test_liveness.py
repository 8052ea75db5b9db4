"""Heartbeats and the sweeper (video/liveness.py): a participant whose worker died without closing the socket.

A SIGKILLed worker runs no disconnect handler: its consumers just stop, the participant stays `connected` in
the session store and its heartbeat stops. In process that is a consumer task cancelled (the consumer's
disconnect never runs), or the records written straight into the store. The in-process tests run on both
stores: memory, and Redis (a throwaway redis-server: the liveness records are keys shared by every encounter,
so these tests keep off a Redis other runs use). The last test SIGKILLs a real uvicorn worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import signal
import time
import uuid

import pytest

from clinic.models import Encounter, EncounterEvent
from tenancy.context import tenant_context
from tests.tools import require_tool
from tests.video import test_signalling as signalling
from tests.video.test_aiortc_call import Signal, uvicorn_process
from tests.video.test_signalling import committed, receive_until, visit
from tests.video.test_two_workers import throwaway_redis
from video import liveness, session
from video.session import ParticipantState

pytestmark = pytest.mark.django_db(transaction=False)

HEARTBEAT = 0.2  # so a participant is stale after 0.6 s
SWEEP = 0.1
CATCH_UP = 0.1
GRACE = 2.0


@pytest.fixture(scope="module")
def private_redis():
    binary = shutil.which("redis-server")
    require_tool(binary, "no redis-server binary (apt-get install redis-server)")
    with throwaway_redis(binary) as port:
        yield f"redis://127.0.0.1:{port}/0"


def flushed(url: str) -> str:
    import redis

    redis.Redis.from_url(url).flushdb()  # a server of our own: nothing left from an earlier test
    return url


@pytest.fixture(params=["memory", "redis"])
def store(request):
    session.reset_store()
    if request.param == "redis":
        session._store = session.RedisStore(flushed(request.getfixturevalue("private_redis")))
    yield request.param
    session.reset_store()


@pytest.fixture
def quick(settings):
    settings.VIDEO_HEARTBEAT_SECONDS = HEARTBEAT
    settings.VIDEO_SWEEP_SECONDS = SWEEP
    settings.VIDEO_CATCH_UP_SECONDS = CATCH_UP
    settings.VIDEO_GRACE_SECONDS = GRACE
    return settings


@pytest.fixture
async def call(clinics, store, quick):
    call = committed(visit)
    call["opened"] = []
    yield call
    # Every consumer ends here, not in the event loop's teardown: there a cancellation swallowed by redis-py
    # (redis/redis-py#2028) would hang the run.
    for ws in call["opened"]:
        if ws._future is not None and not ws.future.done():
            await ws.send_input({"type": "websocket.disconnect", "code": 1000})
            await asyncio.wait({ws.future}, timeout=5)
            await kill(ws)


def socket(call, who: str, **kwargs):
    ws = signalling.socket(call, who, **kwargs)
    call["opened"].append(ws)
    return ws


async def joined(call, who: str, **kwargs):
    ws = socket(call, who, **kwargs)
    connected, _ = await ws.connect()
    assert connected
    return ws, await receive_until(ws, "welcome")


def encounter_state(call) -> tuple[str, bool, list[tuple[str, dict]]]:
    def read():
        with tenant_context(org_id=call["org"].id, role="platform"):
            encounter = Encounter.objects.get(pk=call["encounter"])
            timeline = [
                (e.kind, e.detail) for e in EncounterEvent.objects.filter(encounter=encounter).order_by("at")
            ]
            return encounter.status, encounter.documentation_required, timeline

    return committed(read)


def kinds(timeline, kind: str) -> list[dict]:
    return [detail for k, detail in timeline if k == kind]


async def in_call(call):
    doctor, _ = await joined(call, "doctor")
    patient, welcome = await joined(call, "patient")
    await receive_until(doctor, "waiting")
    await doctor.send_json_to({"type": "admit", "user": call["patient"]})
    admitted = await receive_until(patient, "admitted")
    for ws in (doctor, patient):  # the admission's last message: the doctor's consumer is idle again
        await receive_until(ws, "state")
    return doctor, patient, welcome, admitted


async def kill(ws) -> None:
    """What a killed worker does to its consumer: it stops, and no disconnect handler runs. Cancelled again
    until it ends: redis-py can swallow a cancellation that lands in a command (redis/redis-py#2028)."""
    while not ws.future.done():
        ws.future.cancel()
        await asyncio.wait({ws.future}, timeout=0.1)
    with contextlib.suppress(asyncio.CancelledError):
        ws.future.result()


async def presence(ws, status: str, timeout: float = 10) -> dict:
    message = await receive_until(ws, "presence", timeout)
    while message["status"] != status:
        message = await receive_until(ws, "presence", timeout)
    return message


async def test_a_participant_whose_worker_died_is_swept_and_the_visit_flagged_after_the_grace_period(call):
    doctor, patient, _, _ = await in_call(call)
    killed = time.time()
    await kill(patient)
    participants = await session.get_store().get_participants(call["encounter"])
    assert participants[call["patient"]].status == "connected"  # as the dead worker left it

    dropped = await presence(doctor, "dropped")
    assert dropped["user"] == call["patient"] and dropped["role"] == "patient"
    assert 0 < dropped["grace_seconds"] <= GRACE
    swept_after = time.time() - killed
    assert swept_after >= 3 * HEARTBEAT - HEARTBEAT  # not before the heartbeat went stale
    # The sweeper tells the others before it writes the timeline (one step later, in the database thread):
    # the entry may land just after the presence does.
    deadline = time.monotonic() + 5
    while True:
        status, flagged, timeline = encounter_state(call)
        interrupted = kinds(timeline, "video_interrupted")
        if interrupted or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.05)
    assert (status, flagged) == ("in-progress", False)  # within the grace period
    assert [d["reason"] for d in interrupted] == ["connection_lost"] and interrupted[0]["role"] == "patient"

    state = await receive_until(doctor, "state", timeout=GRACE + 5)
    while not state.get("documentation_required"):
        state = await receive_until(doctor, "state", timeout=GRACE + 5)
    assert time.time() - killed >= GRACE - HEARTBEAT  # the grace period counted from the last heartbeat
    status, flagged, timeline = encounter_state(call)
    assert (status, flagged) == ("finished", True)
    reasons = [d["reason"] for d in kinds(timeline, "documentation_required")]
    assert reasons == ["patient dropped and did not return within the grace period"]
    await asyncio.sleep(5 * SWEEP)  # later sweeps change nothing
    assert encounter_state(call)[2] == timeline


async def test_a_swept_participant_who_resumes_within_the_grace_period_is_not_flagged(call):
    doctor, patient, welcome, admitted = await in_call(call)
    await kill(patient)
    await presence(doctor, "dropped")
    back = socket(call, "patient", query=f"resume={welcome['resume_token']}&last_seq={admitted['seq']}")
    connected, _ = await back.connect()
    assert connected
    assert (await receive_until(back, "welcome"))["resumed"] is True
    assert (await receive_until(doctor, "restart_ice"))["user"] == call["patient"]
    await asyncio.sleep(GRACE + 10 * SWEEP)  # past the end of the grace period, many sweeps later
    status, flagged, timeline = encounter_state(call)
    assert (status, flagged) == ("in-progress", False)
    assert kinds(timeline, "documentation_required") == []
    # Still in the call, and still heartbeating: never swept again.
    await doctor.send_json_to({"type": "offer", "sdp": "v=0 still here"})
    assert (await receive_until(back, "offer"))["sdp"] == "v=0 still here"
    assert [d.get("reason") for d in kinds(timeline, "video_interrupted")] == ["connection_lost"]


async def test_a_message_whose_flush_notice_was_lost_is_delivered_by_the_catch_up_once(call):
    doctor, patient, _, _ = await in_call(call)
    before = liveness.caught_up
    # What a lost notice leaves behind: the message in the doctor's stream, and nothing telling the consumer.
    seq = await session.get_store().append(call["encounter"], call["doctor"], {"type": "lost_notice_probe"})
    started = time.monotonic()
    message = await receive_until(doctor, "lost_notice_probe", timeout=5)
    assert message["seq"] == seq
    assert time.monotonic() - started < 2 * CATCH_UP + 1.5  # about two intervals, never the client's ping
    # Counted by the catch-up, once at most: a late notice of the admission may flush it first.
    await asyncio.sleep(2 * CATCH_UP)
    assert before <= liveness.caught_up <= before + 1
    await doctor.send_json_to({"type": "ping"})
    pong = await doctor.receive_json_from(timeout=5)
    assert pong["type"] == "pong"  # the ping's flush does not send it twice
    await patient.send_json_to({"type": "offer", "sdp": "v=0 with its notice"})
    assert (await receive_until(doctor, "offer"))["sdp"] == "v=0 with its notice"


async def test_two_sweepers_at_once_flag_the_visit_once(call):
    doctor, patient, _, _ = await in_call(call)
    # Stopped first: on a loaded machine the kills can take longer than a heartbeat goes stale, and this
    # process's own sweep would mark the drop (at the real last heartbeat) before the sweeps below.
    await liveness.stop()  # the sweeps below are the only ones
    await kill(doctor)
    await kill(patient)
    store = session.get_store()
    org = str(call["org"].id)
    now = time.time()
    last_seen = now - 0.7  # stale: no heartbeat for more than three intervals
    await store.heartbeat(
        [liveness.participant_key(org, call["encounter"], who) for who in (call["doctor"], call["patient"])],
        at=last_seen,
    )
    # Without the lock too: the lock only saves the work, every step is claimed or compare-and-set.
    await asyncio.gather(
        *(liveness.sweep_unlocked(now) for _ in range(3)), liveness.sweep(now), liveness.sweep(now)
    )
    participants = await store.get_participants(call["encounter"])
    assert {p.status for p in participants.values()} == {"dropped"}
    assert {p.dropped_at for p in participants.values()} == {last_seen}
    later = last_seen + GRACE + 0.01
    await asyncio.gather(
        *(liveness.sweep_unlocked(later) for _ in range(3)), liveness.sweep(later), liveness.sweep(later)
    )
    status, flagged, timeline = encounter_state(call)
    assert (status, flagged) == ("finished", True)
    assert len(kinds(timeline, "documentation_required")) == 1
    interrupted = kinds(timeline, "video_interrupted")
    assert sorted(d["role"] for d in interrupted) == ["patient", "practitioner"]  # once each
    assert await store.due_drops(later + 3600, 10) == []  # nothing left to settle
    assert await store.stale(later + 3600, 10) == []


async def test_after_an_outage_the_grace_period_counts_from_the_sweep_not_from_the_last_heartbeat(call):
    """A participant whose heartbeat stopped long ago because signalling itself was down (Redis unreachable,
    no worker running) gets a whole grace period from when signalling is back, not none."""
    _, patient, _, _ = await in_call(call)
    await liveness.stop()  # first, so that no sweep of this process's own marks the drop before ours
    await kill(patient)
    store = session.get_store()
    key = liveness.participant_key(str(call["org"].id), call["encounter"], call["patient"])
    await store.heartbeat([key], at=time.time() - 600)  # ten minutes without a heartbeat
    now = time.time()
    await liveness.sweep(now)
    me = (await store.get_participants(call["encounter"]))[call["patient"]]
    dropped_at = now - liveness.stale_seconds() - 2 * SWEEP
    assert (me.status, me.dropped_at) == ("dropped", dropped_at)
    assert encounter_state(call)[:2] == ("in-progress", False)
    await liveness.sweep(dropped_at + GRACE - 0.01)
    assert encounter_state(call)[:2] == ("in-progress", False)
    await liveness.sweep(dropped_at + GRACE)
    assert encounter_state(call)[:2] == ("finished", True)


async def test_a_stalled_worker_s_socket_is_closed_so_that_its_client_resumes(call):
    """The heartbeat stopped but the worker still holds the socket (it was stalled): once swept, the socket is
    closed with 4408, and the client resumes (its peer was told it dropped)."""
    doctor, patient, welcome, admitted = await in_call(call)
    await liveness.stop()  # this process stalls: no heartbeat, no sweep of its own
    store = session.get_store()
    key = liveness.participant_key(str(call["org"].id), call["encounter"], call["patient"])
    await store.heartbeat([key], at=time.time() - 10)
    await liveness.sweep()
    assert (await patient.receive_output(5))["code"] == liveness.LOST
    await presence(doctor, "dropped")
    back = socket(call, "patient", query=f"resume={welcome['resume_token']}&last_seq={admitted['seq']}")
    await back.connect()
    assert (await receive_until(back, "welcome"))["resumed"] is True
    assert (await store.get_participants(call["encounter"]))[call["patient"]].status == "connected"


async def test_a_drop_seen_by_a_worker_that_then_dies_is_settled_by_a_sweeper(call):
    """The socket closed normally, and the worker that saw it died during the grace period (its timer with
    it): another worker's sweeper flags the visit."""
    doctor, patient, _, _ = await in_call(call)
    await patient.disconnect()
    await presence(doctor, "dropped")
    for task in asyncio.all_tasks():  # the worker's grace timer dies with it
        if task.get_coro().__name__ == "watch_grace":  # type: ignore[union-attr]
            task.cancel()
    state = await receive_until(doctor, "state", timeout=GRACE + 5)
    while not state.get("documentation_required"):
        state = await receive_until(doctor, "state", timeout=GRACE + 5)
    status, flagged, timeline = encounter_state(call)
    assert (status, flagged) == ("finished", True)
    assert len(kinds(timeline, "documentation_required")) == 1


async def test_a_participant_who_left_or_is_gone_is_not_swept(call):
    doctor, patient, _, _ = await in_call(call)
    await patient.send_json_to({"type": "leave"})
    await presence(doctor, "left")
    await liveness.stop()
    store = session.get_store()
    org = str(call["org"].id)
    ghost = str(uuid.uuid4())
    await store.put_participant(
        call["encounter"],
        ParticipantState(user_id=ghost, role="patient", connection="x", status="left", admitted=True),
    )
    stale = time.time() - 60
    await store.heartbeat(
        [liveness.participant_key(org, call["encounter"], who) for who in (call["patient"], ghost)], at=stale
    )
    await liveness.sweep()  # the doctor's heartbeat, stopped a moment ago, is not stale yet
    status, flagged, timeline = encounter_state(call)
    assert (status, flagged) == ("in-progress", False)
    assert kinds(timeline, "video_interrupted") == []
    assert await store.stale(time.time() + 3600, 10) == [
        (liveness.participant_key(org, call["encounter"], call["doctor"]), pytest.approx(time.time(), abs=5))
    ]


# -- two uvicorn workers on Redis: one is SIGKILLed ----------------------------------------------------------


async def kill_scenario(call: dict, doctor_port: int, patient_port: int, patient_worker) -> dict:
    doctor, patient = Signal(call, "doctor", doctor_port), Signal(call, "patient", patient_port)
    try:
        await doctor.open()
        await doctor.until("welcome")
        await patient.open()
        await patient.until("welcome")
        await doctor.until("waiting")
        await doctor.send({"type": "admit", "user": call["patient"]})
        await patient.until("admitted")

        killed = time.monotonic()
        patient_worker.send_signal(signal.SIGKILL)  # no disconnect handler, no grace timer
        patient_worker.wait(timeout=10)
        message = await doctor.receive(timeout=30)
        while message["type"] != "presence" or message["status"] != "dropped":
            message = await doctor.receive(timeout=30)
        assert message["user"] == call["patient"]
        dropped_after = time.monotonic() - killed
        while not (message["type"] == "state" and message.get("documentation_required")):
            message = await doctor.receive(timeout=30)
        return {"dropped_after": dropped_after, "flagged_after": time.monotonic() - killed}
    finally:
        await doctor.close()
        await patient.close()


def test_the_surviving_worker_flags_the_visit_of_a_participant_whose_worker_was_killed(
    clinics, private_redis, tmp_path
):
    env = {
        "REDIS_URL": private_redis,
        "VIDEO_HEARTBEAT_SECONDS": "0.5",
        "VIDEO_SWEEP_SECONDS": "0.25",
        "VIDEO_GRACE_SECONDS": "4",
    }
    call = committed(visit)
    flushed(private_redis)
    with (
        uvicorn_process(tmp_path / "a.log", env) as (a, worker_a),
        uvicorn_process(tmp_path / "b.log", env) as (
            b,
            _,
        ),
    ):
        result = asyncio.run(asyncio.wait_for(kill_scenario(call, b, a, worker_a), 90))
    print(
        f"\nworker holding the patient SIGKILLed: dropped by the survivor's sweeper after "
        f"{result['dropped_after']:.2f} s, visit flagged after {result['flagged_after']:.2f} s"
    )
    assert 1.0 <= result["dropped_after"] < 4  # stale after 3 heartbeats (1.5 s), swept within ~a sweep
    assert result["flagged_after"] >= 4 - 0.5  # a whole grace period from the last heartbeat
    status, flagged, timeline = encounter_state(call)
    assert (status, flagged) == ("finished", True)
    lost = [d for d in kinds(timeline, "video_interrupted") if d.get("reason") == "connection_lost"]
    assert [d["role"] for d in lost] == ["patient"]  # (the doctor's own close afterwards is a normal drop)
    assert len(kinds(timeline, "documentation_required")) == 1
