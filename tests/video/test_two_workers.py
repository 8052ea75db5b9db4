"""Two ASGI workers sharing Redis: a participant who joined on worker A drops and resumes on worker B.

Two uvicorn processes on loopback ports, both with REDIS_URL (the Channels layer and the signalling session
store, video/session.py RedisStore), on a Redis database of their own. The machine's Redis on 127.0.0.1:6379
is used when it answers; otherwise a throwaway `redis-server` on a free loopback port is started. Without
either the test is skipped, except in CI (CI=true), where it fails.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator

import pytest

from tests.tools import require_tool
from tests.video.test_aiortc_call import Signal, free_port, uvicorn_server
from tests.video.test_signalling import committed, visit

pytestmark = pytest.mark.django_db(transaction=False)

REDIS_DB = 13  # a database of its own on a shared Redis; keys are per encounter (random ids) and expire


def redis_answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")
    except OSError:
        return False


@contextlib.contextmanager
def throwaway_redis(binary: str) -> Iterator[int]:
    port = free_port()
    process = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while not redis_answers(port):
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail("redis-server did not start")
            time.sleep(0.05)
        yield port
    finally:
        process.terminate()
        process.wait(timeout=10)


@pytest.fixture(scope="module")
def redis_url():
    if redis_answers(6379):
        yield f"redis://127.0.0.1:6379/{REDIS_DB}"
        return
    binary = shutil.which("redis-server")
    require_tool(
        binary, "no Redis on 127.0.0.1:6379 and no redis-server binary (apt-get install redis-server)"
    )
    with throwaway_redis(binary) as port:
        yield f"redis://127.0.0.1:{port}/{REDIS_DB}"


@pytest.fixture(scope="module")
def workers(redis_url, tmp_path_factory):
    logs = tmp_path_factory.mktemp("uvicorn-workers")
    env = {"REDIS_URL": redis_url}
    with uvicorn_server(logs / "a.log", env) as a, uvicorn_server(logs / "b.log", env) as b:
        yield {"a": a, "b": b}


async def scenario(call: dict, workers: dict) -> dict:
    doctor, patient = Signal(call, "doctor", workers["a"]), Signal(call, "patient", workers["a"])
    try:
        await doctor.open()
        await doctor.until("welcome")
        await patient.open()
        await patient.until("welcome")
        await doctor.until("waiting")
        await doctor.send({"type": "admit", "user": call["patient"]})
        await patient.until("admitted")
        await doctor.send({"type": "offer", "sdp": "v=0 first offer"})
        assert (await patient.until("offer"))["sdp"] == "v=0 first offer"
        seen = patient.last_seq

        cut = time.monotonic()
        patient.cut()
        presence = await doctor.until("presence")
        while presence["status"] == "connected":  # the patient's arrival, before the cut
            presence = await doctor.until("presence")
        assert presence["status"] == "dropped" and presence["user"] == call["patient"]
        await doctor.send({"type": "offer", "sdp": "v=0 sent while away"})
        await doctor.send({"type": "candidate", "candidate": {"candidate": "while away"}})
        await asyncio.sleep(0.2)

        patient.port = workers["b"]  # the reconnect lands on the other worker
        await patient.resume()
        received = []
        while not received or received[-1]["type"] != "restart_ice":
            received.append(await patient.receive())
        resumed_after = time.monotonic() - cut
        kinds = [m["type"] for m in received]
        assert received[0]["seq"] == seen + 1  # nothing lost, nothing repeated (Signal checks the order)
        replayed = [m for m in received if m["type"] in ("offer", "candidate")]
        assert [m.get("sdp") or m["candidate"]["candidate"] for m in replayed] == [
            "v=0 sent while away",
            "while away",
        ]
        welcome = next(m for m in received if m["type"] == "welcome")
        assert welcome["resumed"] is True and kinds.index("welcome") > kinds.index("candidate")
        assert (await doctor.until("restart_ice"))["user"] == call["patient"]  # told across workers

        # Signalling keeps flowing both ways between the two workers.
        await patient.send({"type": "answer", "sdp": "v=0 answer from worker b"})
        assert (await doctor.until("answer"))["sdp"] == "v=0 answer from worker b"
        await doctor.send({"type": "offer", "sdp": "v=0 from worker a"})
        assert (await patient.until("offer"))["sdp"] == "v=0 from worker a"
        return {"resumed_after": resumed_after}
    finally:
        await doctor.close()
        await patient.close()


def test_a_participant_resumes_on_the_other_worker(clinics, workers):
    call = committed(visit)
    result = asyncio.run(asyncio.wait_for(scenario(call, workers), 60))
    print(f"\ncut on worker A -> resumed signalling on worker B: {result['resumed_after']:.3f} s")
    assert result["resumed_after"] < 5


async def reused_token_scenario(call: dict, workers: dict) -> None:
    doctor, patient = Signal(call, "doctor", workers["a"]), Signal(call, "patient", workers["a"])
    try:
        await doctor.open()
        await doctor.until("welcome")
        await patient.open()
        await patient.until("welcome")
        token = patient.resume_token
        patient.cut()
        while (await doctor.until("presence"))["status"] != "dropped":
            pass
        patient.port = workers["b"]
        await patient.resume()
        await patient.until("welcome")
        await patient.close()
        again = Signal(call, "patient", workers["a"])
        again.resume_token = token
        await again.resume()
        error = await again.receive()
        assert error["type"] == "error" and error["code"] == "resume_rejected"
        await again.close()
    finally:
        await doctor.close()
        await patient.close()


def test_a_resume_token_used_on_one_worker_is_refused_on_the_other(clinics, workers):
    call = committed(visit)
    asyncio.run(asyncio.wait_for(reused_token_scenario(call, workers), 60))
