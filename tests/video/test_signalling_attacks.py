"""Attacks on the signalling socket from the outside security test (issue 11, findings 11-13), each replayed
against the real ASGI application (Channels, in-memory layer and store, real PostgreSQL) and shown to fail.

11: a frame nested deep enough to exhaust the JSON parser's recursion, a malformed `last_seq` on resume, and a
    handshake on a path that is not an encounter's socket: each ends in a clean refusal, never a crashed
    consumer (no close frame, the seat left taken) or an HTTP 500.
12: the Origin is compared by scheme, host and port, not by host name alone.
13: a resume evicts the socket it resumes, and a resume token presented by another user is not used up.
"""

from __future__ import annotations

import asyncio
import json

import pytest
from channels.layers import get_channel_layer

from config.asgi import application
from tests.video import test_signalling as signalling
from tests.video.communicator import WebsocketCommunicator
from tests.video.test_liveness import flushed, private_redis  # noqa: F401  # private_redis: a fixture
from tests.video.test_signalling import committed, receive_until, visit
from video import liveness, session

pytestmark = pytest.mark.django_db(transaction=False)
BOTH_STORES = pytest.mark.parametrize("call", ["memory", "redis"], indirect=True)


@pytest.fixture
async def call(clinics, request):
    """A visit on the in-memory session store, or (parametrized "redis") on a throwaway Redis of its own:
    resume tokens are redeemed by each store its own way."""
    session.reset_store()
    if getattr(request, "param", "memory") == "redis":
        session._store = session.RedisStore(flushed(request.getfixturevalue("private_redis")))
    call = committed(visit)
    call["opened"] = []
    yield call
    # Every consumer ends here, not in the event loop's teardown, where a cancellation swallowed by redis-py
    # would hang the run (as in tests/video/test_liveness.py).
    for ws in call["opened"]:
        if ws._future is not None and not ws.future.done():
            await ws.send_input({"type": "websocket.disconnect", "code": 1000})
            await asyncio.wait({ws.future}, timeout=5)
    session.reset_store()


def socket(call, who: str, **kwargs) -> WebsocketCommunicator:
    ws = signalling.socket(call, who, **kwargs)
    call["opened"].append(ws)
    return ws


async def joined(call, who: str, **kwargs):
    ws = socket(call, who, **kwargs)
    connected, _ = await ws.connect()
    assert connected
    return ws, await receive_until(ws, "welcome")


def nested(depth: int) -> str:
    return "[" * depth + "]" * depth


async def admitted_pair(call):
    doctor, _ = await joined(call, "doctor")
    patient, welcome = await joined(call, "patient")
    await receive_until(doctor, "waiting")
    await doctor.send_json_to({"type": "admit", "user": call["patient"]})
    await receive_until(patient, "admitted")
    await receive_until(doctor, "state")
    last = await receive_until(patient, "state")  # the last message of the admission: the stream is quiet
    return doctor, patient, welcome, last


# -- 11: crashes ------------------------------------------------------------------------------------------


async def test_a_frame_nested_past_the_parsers_recursion_limit_gets_an_error_and_the_socket_goes_on(call):
    doctor, _ = await joined(call, "doctor")
    frame = '{"type":' + "[" * 950  # ~1 KiB, far under the 64 KiB cap: RecursionError in json.loads
    await doctor.send_input({"type": "websocket.receive", "text": frame})
    assert (await receive_until(doctor, "error"))["code"] == "invalid_message"
    await doctor.send_json_to({"type": "ping"})
    assert (await receive_until(doctor, "pong"))["type"] == "pong"
    # Closed normally, the seat is released at once (no `already_active` until a sweeper runs).
    await doctor.disconnect()
    again, welcome = await joined(call, "doctor")
    assert welcome["resumed"] is False
    await again.disconnect()


async def test_a_deeply_nested_payload_is_not_relayed_to_the_peer(call):
    """Nested just shallow enough to parse in the sender, it would be re-encoded and parsed again in the
    receiving participant's consumer: refused on arrival instead."""
    doctor, patient, _, _ = await admitted_pair(call)
    await doctor.send_input(
        {"type": "websocket.receive", "text": '{"type": "candidate", "candidate": ' + nested(400) + "}"}
    )
    assert (await receive_until(doctor, "error"))["code"] == "invalid_message"
    await patient.send_json_to({"type": "ping"})
    while (message := await patient.receive_json_from())["type"] != "pong":
        assert message["type"] != "candidate"
    # An ordinary candidate (nested twice) still goes through.
    await doctor.send_json_to({"type": "candidate", "candidate": {"candidate": "x", "sdpMid": "0"}})
    assert (await receive_until(patient, "candidate"))["candidate"]["sdpMid"] == "0"
    await doctor.disconnect()
    await patient.disconnect()


@BOTH_STORES
@pytest.mark.parametrize("last_seq", ["abc", "1.5", "-1", "1e3", "", "9" * 40])
async def test_a_malformed_last_seq_is_refused_and_leaves_the_resume_token_usable(call, last_seq):
    doctor, patient, welcome, admitted = await admitted_pair(call)
    await patient.disconnect()
    await receive_until(doctor, "presence")
    bad = socket(call, "patient", query=f"resume={welcome['resume_token']}&last_seq={last_seq}")
    await bad.connect()
    error = await bad.receive_json_from()
    assert error["type"] == "error" and error["code"] == "invalid_request" and error["seq"] == 0
    assert await bad.receive_close() == 4400
    # The token was not used up: the same client, with a well-formed last_seq, resumes.
    good = socket(call, "patient", query=f"resume={welcome['resume_token']}&last_seq={admitted['seq']}")
    await good.connect()
    assert (await receive_until(good, "welcome"))["resumed"] is True
    await good.disconnect()
    await doctor.disconnect()


@pytest.mark.parametrize(
    "path",
    [
        "/ws/v1/encounters/not-a-uuid/signal",
        "/ws/v1/encounters/" + "-" * 36 + "/signal",  # 36 of the old pattern's characters, not a UUID
        "/ws/v1/encounters/0123456789abcdef0123456789abcdef0123/signal",
        "/ws/v1/encounters//signal",
        "/ws/v1/unknown",
        "/",
    ],
)
@pytest.mark.parametrize("authenticated", [True, False])
async def test_a_handshake_on_a_path_that_is_no_encounters_socket_is_refused(call, path, authenticated):
    headers = [(b"host", call["host"].encode()), (b"origin", f"http://{call['host']}".encode())]
    if authenticated:
        headers.append((b"authorization", f"Bearer {call['tokens']['doctor']}".encode()))
    ws = WebsocketCommunicator(application, path, headers=headers)
    call["opened"].append(ws)
    connected, _ = await ws.connect()  # an exception here is what the server answered with a 500
    assert not connected  # refused before the handshake completes: HTTP 403


async def test_an_upper_case_encounter_id_is_the_same_encounter(call):
    """Session state is keyed by the canonical id: another spelling is the same seat, not a second one."""
    first, _ = await joined(call, "doctor")
    second = socket(call, "doctor", encounter=call["encounter"].upper())
    await second.connect()
    assert (await receive_until(second, "error"))["code"] == "already_active"
    await first.disconnect()


# -- 12: Origin -------------------------------------------------------------------------------------------


async def opens(call, host: str, origin: str | None, scheme: str = "ws") -> bool:
    headers = [(b"host", host.encode()), (b"authorization", f"Bearer {call['tokens']['doctor']}".encode())]
    if origin is not None:
        headers.append((b"origin", origin.encode()))
    path = f"/ws/v1/encounters/{call['encounter']}/signal"
    ws = WebsocketCommunicator(application, path, headers=headers, scheme=scheme)
    call["opened"].append(ws)
    connected, _ = await ws.connect()
    if connected:
        await ws.disconnect()
    return connected


@pytest.mark.parametrize(
    ("host", "origin", "scheme"),
    [
        ("{h}:8000", "http://{h}:9999", "ws"),  # another port: another origin
        ("{h}:8000", "https://{h}:4443", "ws"),
        ("{h}:8000", "file://{h}", "ws"),
        ("{h}:8000", "http://{h}", "ws"),  # port 80 is not 8000
        ("{h}", "http://{h}:8080", "ws"),  # a Host without its port is port 80
        ("{h}", "https://{h}", "ws"),  # an https page, a plain socket
        ("{h}", "http://{h}", "wss"),  # an http page, a TLS socket
        ("{h}:443", "http://{h}:443", "wss"),
        ("{h}", "null", "ws"),  # sandboxed iframe, file:// or data: page
        ("{h}", "http://user@{h}", "ws"),
        ("{h}", "http://{h}/path", "ws"),
        ("{h}", "http://{h}:notaport", "ws"),
        ("{h}:99999", "http://{h}:99999", "ws"),
    ],
)
async def test_an_origin_on_another_scheme_or_port_is_refused(call, host, origin, scheme):
    assert not await opens(call, host.format(h=call["host"]), origin.format(h=call["host"]), scheme)


@pytest.mark.parametrize(
    ("host", "origin", "scheme"),
    [
        ("{h}:8000", "http://{h}:8000", "ws"),  # uvicorn serving the page itself
        ("{h}", "http://{h}", "ws"),
        ("{h}", "http://{h}:80", "ws"),  # the default port, spelled out
        ("{h}", "https://{h}", "wss"),  # TLS at a proxy: uvicorn takes wss from a trusted X-Forwarded-Proto
        ("{h}:8443", "https://{h}:8443", "wss"),
        ("{H}", "http://{h}", "ws"),  # host names are case-insensitive
    ],
)
async def test_the_pages_own_scheme_host_and_port_is_accepted(call, host, origin, scheme):
    assert await opens(
        call, host.format(h=call["host"], H=call["host"].upper()), origin.format(h=call["host"]), scheme
    )


# -- 13: resume -------------------------------------------------------------------------------------------


@BOTH_STORES
async def test_resuming_with_a_live_sockets_token_evicts_that_socket(call):
    doctor, patient, welcome, admitted = await admitted_pair(call)
    second = socket(call, "patient", query=f"resume={welcome['resume_token']}&last_seq={admitted['seq']}")
    await second.connect()
    assert (await receive_until(second, "welcome"))["resumed"] is True
    # The first socket is told it was replaced and closed; it receives nothing of the stream after that.
    messages = []
    while (message := await patient.receive_output())["type"] != "websocket.close":
        messages.append(message)
    assert message["code"] == 4409
    assert [m for m in map(_json, messages) if m.get("seq")] == []
    assert [m["code"] for m in map(_json, messages) if m["type"] == "error"] == ["replaced"]
    # The stream goes to the new socket only.
    await doctor.send_json_to({"type": "offer", "sdp": "after the resume"})
    assert (await receive_until(second, "offer"))["sdp"] == "after the resume"
    await second.disconnect()
    await doctor.disconnect()


async def test_a_socket_that_missed_its_eviction_sends_nothing_more(call):
    """The eviction notice travels through the channel layer, which may lose it: a socket still open after
    its seat moved to another connection is closed when it next flushes, and sends nothing of the stream."""
    doctor, patient, welcome, admitted = await admitted_pair(call)
    # The notice is lost: the first socket is no longer in its user's group when the resume evicts it.
    layer = get_channel_layer()
    group = liveness.user_group(call["encounter"], call["patient"])
    for channel in list(layer.groups.get(group, {})):  # the in-memory layer's members: the first socket only
        await layer.group_discard(group, channel)
    second = socket(call, "patient", query=f"resume={welcome['resume_token']}&last_seq={admitted['seq']}")
    await second.connect()
    await receive_until(second, "welcome")
    await doctor.send_json_to({"type": "offer", "sdp": "for the new socket"})
    await patient.send_json_to({"type": "ping"})  # flushes: the offer is in the stream, not yet sent here
    error = await patient.receive_json_from()
    assert error["type"] == "error" and error["code"] == "replaced"
    assert await patient.receive_close() == 4409
    await second.disconnect()
    await doctor.disconnect()


@BOTH_STORES
async def test_a_resume_token_presented_by_another_user_is_refused_and_not_used_up(call):
    doctor, patient, welcome, admitted = await admitted_pair(call)
    await patient.disconnect()
    await receive_until(doctor, "presence")
    thief = socket(call, "doctor", query=f"resume={welcome['resume_token']}&last_seq=0")
    await thief.connect()
    assert (await thief.receive_json_from())["code"] == "resume_rejected"
    assert await thief.receive_close() == 4401
    back = socket(call, "patient", query=f"resume={welcome['resume_token']}&last_seq={admitted['seq']}")
    await back.connect()
    assert (await receive_until(back, "welcome"))["resumed"] is True
    await back.disconnect()


def _json(message: dict) -> dict:
    return json.loads(message["text"])
