"""Two aiortc peers (practitioner and patient) in a real call: signalled through the project's WebSocket served by
uvicorn on a loopback port, relayed only through a local coturn with the credentials the server hands out in
`welcome` / `admitted`, exchanging a generated audio tone and data-channel messages both ways.

Then the patient's WebSocket is cut. The patient reconnects with its resume token and last `seq`; on
`restart_ice` both sides build a new RTCPeerConnection (aiortc cannot restart ICE) and the call flows again.
The time from the cut to resumed signalling and to data flowing again is printed.

Everything stays on loopback: uvicorn on 127.0.0.1, coturn listening on 127.0.0.1 and relaying on its own
loopback address (127.0.0.2), the only peer address its test configuration lets through.

coturn missing: skipped, except in CI (CI=true), where it fails.
"""

from __future__ import annotations

import array
import asyncio
import contextlib
import fractions
import json
import math
import os
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiortc import (
    RTCConfiguration,
    RTCIceServer,
    RTCIceTransportPolicy,
    RTCPeerConnection,
    RTCSessionDescription,
)
from aiortc.mediastreams import AudioStreamTrack, MediaStreamError
from websockets.asyncio import client as websockets_client

from devstack.coturn import prepare_local_turn, turnserver_binary
from devstack.launcher import server_command
from tests.tools import require_tool
from tests.video.test_signalling import committed, visit

ROOT = Path(__file__).resolve().parent.parent.parent

pytestmark = pytest.mark.django_db(transaction=False)


# -- servers: coturn and uvicorn on loopback ----------------------------------------------------------------


def require_coturn() -> None:
    require_tool(turnserver_binary(), "turnserver is not installed (apt-get install coturn)")


@pytest.fixture(scope="module")
def coturn(tmp_path_factory):
    """A local coturn (test variant of the shipped configuration) and the environment naming it."""
    require_coturn()
    secret = os.urandom(24).hex()
    server = prepare_local_turn(tmp_path_factory.mktemp("coturn-aiortc"), [secret])
    server.start()
    try:
        yield {
            "TURN_SHARED_SECRETS": secret,
            # aiortc uses only the first URL: UDP.
            "TURN_URLS": f"turn:{server.listening_ip}:{server.ports.listening}?transport=udp",
            "server": server,
        }
    finally:
        server.stop()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def uvicorn_server(log: Path, env_overrides: dict[str, str], drop: tuple[str, ...] = ()) -> Iterator[int]:
    """uvicorn serving config.asgi on a free loopback port with the test database's environment; yields the
    port and stops the process afterwards."""
    with uvicorn_process(log, env_overrides, drop) as (port, _):
        yield port


@contextlib.contextmanager
def uvicorn_process(
    log: Path, env_overrides: dict[str, str], drop: tuple[str, ...] = ()
) -> Iterator[tuple[int, subprocess.Popen]]:
    """uvicorn_server, yielding the process too (for a test that kills it)."""
    port = free_port()
    env = dict(os.environ)
    for name in ("TURN_SHARED_SECRETS", "TURN_URLS", *drop):
        env.pop(name, None)
    env.update({"DJANGO_SECURE_COOKIES": "false", "PYTHONUNBUFFERED": "1", "VIDEO_GRACE_SECONDS": "120"})
    env.update(env_overrides)
    with log.open("wb") as out:
        # The command line `make run` serves with (no forwarded headers trusted), at warning level.
        process = subprocess.Popen(
            [*server_command("127.0.0.1", str(port), env), "--log-level", "warning"],
            env=env,
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 30
        while True:
            if process.poll() is not None:
                pytest.fail(f"uvicorn exited ({process.returncode}):\n{log.read_text()[-4000:]}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"uvicorn did not answer within 30 s:\n{log.read_text()[-4000:]}")
            time.sleep(0.1)
        yield port, process
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)


@pytest.fixture(scope="module")
def asgi_port(coturn, tmp_path_factory):
    log = tmp_path_factory.mktemp("uvicorn-aiortc") / "server.log"
    env = {k: v for k, v in coturn.items() if k.startswith("TURN_")}
    with uvicorn_server(log, env, drop=("REDIS_URL",)) as port:
        yield port


# -- the signalling client -------------------------------------------------------------------------------


class Signal:
    """One participant's WebSocket to /ws/v1/encounters/<id>/signal (the `websockets` client library)."""

    def __init__(self, call: dict, who: str, port: int):
        self.call, self.who, self.port = call, who, port
        self.ws = None
        self.last_seq = 0
        self.resume_token = ""
        self.turn: dict | None = None

    async def open(self, query: str = "") -> None:
        host = f"{self.call['host']}:{self.port}"
        path = f"/ws/v1/encounters/{self.call['encounter']}/signal" + (f"?{query}" if query else "")
        self.ws = await websockets_client.connect(
            f"ws://{host}{path}",
            origin=f"http://{host}",
            additional_headers={"Authorization": f"Bearer {self.call['tokens'][self.who]}"},
            proxy=None,
            host="127.0.0.1",  # *.localhost names: connect on loopback, the Host header keeps the name
            port=self.port,
            open_timeout=10,
        )

    async def resume(self) -> None:
        await self.open(f"resume={self.resume_token}&last_seq={self.last_seq}")

    def cut(self) -> None:
        """The network goes away: the TCP connection is dropped without a close handshake."""
        assert self.ws is not None
        self.ws.transport.abort()

    async def send(self, message: dict) -> None:
        assert self.ws is not None
        await self.ws.send(json.dumps(message))

    async def receive(self, timeout: float = 10.0) -> dict:
        assert self.ws is not None
        message = json.loads(await asyncio.wait_for(self.ws.recv(), timeout))
        seq = message.get("seq", 0)
        if seq:
            assert seq == self.last_seq + 1, f"{self.who}: seq {seq} after {self.last_seq}"
            self.last_seq = seq
        if message.get("resume_token"):
            self.resume_token = message["resume_token"]
        if message.get("turn"):
            self.turn = message["turn"]
        return message

    async def until(self, kind: str, timeout: float = 10.0) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            message = await self.receive(max(0.1, deadline - time.monotonic()))
            if message["type"] == kind:
                return message
            if message["type"] == "error":
                raise AssertionError(f"{self.who}: {message}")

    async def close(self) -> None:
        if self.ws is not None:
            with contextlib.suppress(Exception):
                await self.ws.close()


# -- the media side --------------------------------------------------------------------------------------


class Tone(AudioStreamTrack):
    """A 440 Hz sine wave in 20 ms frames (48 kHz, mono, s16), paced like a microphone."""

    def __init__(self, frequency: float = 440.0):
        super().__init__()
        self.frequency = frequency
        self.sample = 0

    async def recv(self):
        frame = await super().recv()  # silence with the right timing and pts
        samples = frame.samples
        rate = frame.sample_rate
        data = bytearray()
        for i in range(samples):
            value = int(8000 * math.sin(2 * math.pi * self.frequency * (self.sample + i) / rate))
            data += value.to_bytes(2, "little", signed=True)
        self.sample += samples
        plane = frame.planes[0]
        frame.planes[0].update(bytes(data[: plane.buffer_size]).ljust(plane.buffer_size, b"\0"))
        frame.time_base = fractions.Fraction(1, rate)
        return frame


def relay_config(turn: dict) -> RTCConfiguration:
    return RTCConfiguration(
        iceServers=[
            RTCIceServer(urls=turn["uris"][0], username=turn["username"], credential=turn["credential"])
        ],
        iceTransportPolicy=RTCIceTransportPolicy.RELAY,
    )


def nominated_pairs(pc: RTCPeerConnection) -> list[tuple[str, str]]:
    """(local, remote) candidate types of every nominated ICE pair of this peer connection's transports."""
    transports = []
    if pc.sctp is not None:
        transports.append(pc.sctp.transport.transport)
    for transceiver in pc.getTransceivers():
        if transceiver.receiver.transport is not None:
            transports.append(transceiver.receiver.transport.transport)
    pairs = []
    for ice in {id(t): t for t in transports}.values():
        connection = ice._connection  # aioice.Connection
        for pair in connection._nominated.values():
            pairs.append((pair.local_candidate.type, pair.remote_candidate.type))
    return pairs


def loudest(pcm: bytes) -> int:
    samples = array.array("h", pcm[: len(pcm) // 2 * 2])
    return max((abs(v) for v in samples), default=0)


class Peer:
    """One side of the call: an RTCPeerConnection with a tone going out, frames and messages counted in."""

    def __init__(self, name: str, turn: dict):
        self.name = name
        self.pc = RTCPeerConnection(relay_config(turn))
        self.pc.addTrack(Tone(440.0 if name == "doctor" else 660.0))
        self.channel = None
        self.messages: asyncio.Queue[str] = asyncio.Queue()
        self.frames = 0
        self.loud_frames = 0
        self.tasks: list[asyncio.Task] = []
        self.pc.on("track", self._on_track)
        self.pc.on("datachannel", self._use_channel)

    def _use_channel(self, channel) -> None:
        self.channel = channel
        channel.on("message", lambda message: self.messages.put_nowait(message))

    def _on_track(self, track) -> None:
        async def read() -> None:
            while True:
                try:
                    frame = await track.recv()
                except MediaStreamError:
                    return
                self.frames += 1
                if frame.format.name == "s16" and loudest(bytes(frame.planes[0])) > 1000:
                    self.loud_frames += 1

        if track.kind == "audio":
            self.tasks.append(asyncio.ensure_future(read()))

    async def offer(self) -> dict:
        self._use_channel(self.pc.createDataChannel("chat"))
        await self.pc.setLocalDescription(await self.pc.createOffer())  # gathers: aiortc does not trickle
        return {"type": "offer", "sdp": self.pc.localDescription.sdp}

    async def answer(self, sdp: str) -> dict:
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="offer"))
        await self.pc.setLocalDescription(await self.pc.createAnswer())
        return {"type": "answer", "sdp": self.pc.localDescription.sdp}

    async def accept(self, sdp: str) -> None:
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="answer"))

    async def channel_open(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while self.channel is None or self.channel.readyState != "open":
            assert time.monotonic() < deadline, (
                f"{self.name}: data channel not open ({self.pc.iceConnectionState})"
            )
            await asyncio.sleep(0.02)

    async def frames_after(self, count: int, timeout: float = 20.0) -> None:
        target = self.frames + count
        deadline = time.monotonic() + timeout
        while self.frames < target:
            assert time.monotonic() < deadline, f"{self.name}: {self.frames} audio frames, wanted {target}"
            await asyncio.sleep(0.02)

    async def close(self) -> None:
        await self.pc.close()
        for task in self.tasks:
            task.cancel()


async def exchange(doctor: Peer, patient: Peer, tag: str) -> None:
    """A data-channel message each way, and audio frames (a tone, not silence) arriving on both sides."""
    await doctor.channel_open()
    await patient.channel_open()
    doctor.channel.send(f"hello patient {tag}")
    patient.channel.send(f"hello doctor {tag}")
    assert await asyncio.wait_for(patient.messages.get(), 10) == f"hello patient {tag}"
    assert await asyncio.wait_for(doctor.messages.get(), 10) == f"hello doctor {tag}"
    await doctor.frames_after(25)
    await patient.frames_after(25)
    assert doctor.loud_frames > 0 and patient.loud_frames > 0, "only silence arrived"


def assert_relayed(peer: Peer) -> None:
    pairs = nominated_pairs(peer.pc)
    assert pairs, f"{peer.name}: no nominated ICE pair"
    assert all(pair == ("relay", "relay") for pair in pairs), f"{peer.name}: {pairs}"


async def negotiate(doctor_signal: Signal, patient_signal: Signal, doctor: Peer) -> Peer:
    """The practitioner (impolite) offers; the patient answers with a new peer connection."""
    await doctor_signal.send(await doctor.offer())
    offer = await patient_signal.until("offer")
    assert offer["from"] == doctor_signal.call["doctor"]
    assert patient_signal.turn is not None
    patient = Peer("patient", patient_signal.turn)
    await patient_signal.send(await patient.answer(offer["sdp"]))
    answer = await doctor_signal.until("answer")
    await doctor.accept(answer["sdp"])
    return patient


# -- the test --------------------------------------------------------------------------------------------


async def scenario(call: dict, port: int) -> dict:
    doctor_signal, patient_signal = Signal(call, "doctor", port), Signal(call, "patient", port)
    peers: list[Peer] = []
    try:
        await doctor_signal.open()
        welcome = await doctor_signal.until("welcome")
        assert welcome["turn"]["uris"][0].startswith("turn:127.0.0.1:")
        await patient_signal.open()
        pwelcome = await patient_signal.until("welcome")
        assert "turn" not in pwelcome  # not admitted yet: no credentials
        await doctor_signal.until("waiting")
        await doctor_signal.send({"type": "admit", "user": call["patient"]})
        admitted = await patient_signal.until("admitted")
        assert admitted["turn"]["username"] and admitted["turn"]["credential"]

        doctor = Peer("doctor", doctor_signal.turn)
        peers.append(doctor)
        patient = await negotiate(doctor_signal, patient_signal, doctor)
        peers.append(patient)
        await exchange(doctor, patient, "1")
        assert_relayed(doctor)
        assert_relayed(patient)

        # The phone loses its network: the socket is cut without a close handshake.
        cut = time.monotonic()
        patient_signal.cut()
        await asyncio.sleep(0)
        await patient_signal.resume()
        resumed = await patient_signal.until("welcome")
        assert resumed["resumed"] is True and resumed["turn"]["username"]
        await patient_signal.until("restart_ice")
        signalling = time.monotonic() - cut
        assert (await doctor_signal.until("restart_ice"))["user"] == call["patient"]

        # aiortc cannot restart ICE: both sides build a new peer connection, the practitioner offers again.
        for peer in peers:
            await peer.close()
        peers.clear()
        doctor = Peer("doctor", doctor_signal.turn)
        peers.append(doctor)
        patient = await negotiate(doctor_signal, patient_signal, doctor)
        peers.append(patient)
        await doctor.channel_open()
        await patient.channel_open()
        doctor.channel.send("ping after resume")
        assert await asyncio.wait_for(patient.messages.get(), 10) == "ping after resume"
        flowing = time.monotonic() - cut
        await exchange(doctor, patient, "2")
        assert_relayed(doctor)
        assert_relayed(patient)
        return {"signalling": signalling, "data": flowing}
    finally:
        for peer in peers:
            await peer.close()
        await doctor_signal.close()
        await patient_signal.close()


def test_two_aiortc_peers_relay_through_coturn_and_survive_a_cut_socket(clinics, coturn, asgi_port):
    call = committed(visit)
    times = asyncio.run(asyncio.wait_for(scenario(call, asgi_port), 120))
    print(
        f"\ncut -> resumed signalling: {times['signalling']:.3f} s; "
        f"cut -> data flowing again (new peer connections, relay): {times['data']:.3f} s"
    )
    assert times["signalling"] < 5
    assert times["data"] < 15
