"""The outside security test's signalling attacks (issue 11, findings 11 and 12) replayed against a real uvicorn
server on loopback, as the tester ran them: what the server answers on the wire (an HTTP status at the
handshake, a close frame and its code), not only what the ASGI application does
(tests/video/test_signalling_attacks.py has the rest).

The server trusts X-Forwarded-Proto from 127.0.0.1 (TRUSTED_PROXIES, as `make cluster` configures it for nginx),
so the scheme a TLS-terminating proxy reports is the one the Origin is compared with.
"""

from __future__ import annotations

import asyncio
import json

import pytest
from websockets.asyncio import client as websockets_client
from websockets.exceptions import ConnectionClosed, InvalidStatus

from tests.video.test_aiortc_call import uvicorn_server
from tests.video.test_signalling import committed, visit

pytestmark = pytest.mark.django_db(transaction=False)


@pytest.fixture(scope="module")
def port(tmp_path_factory):
    with uvicorn_server(
        tmp_path_factory.mktemp("uvicorn-attacks") / "server.log",
        {"TRUSTED_PROXIES": "127.0.0.1"},
        drop=("REDIS_URL",),
    ) as p:
        yield p


@pytest.fixture
def call(clinics):
    return committed(visit)


async def open_socket(call, port: int, path: str | None = None, origin: str | None = None, headers=None):
    host = f"{call['host']}:{port}"
    path = path or f"/ws/v1/encounters/{call['encounter']}/signal"
    return await websockets_client.connect(
        f"ws://{host}{path}",
        origin=origin or f"http://{host}",  # type: ignore[arg-type]
        additional_headers={"Authorization": f"Bearer {call['tokens']['doctor']}", **(headers or {})},
        proxy=None,
        host="127.0.0.1",
        port=port,
        open_timeout=10,
    )


async def receive(ws, kind: str) -> dict:
    while (message := json.loads(await asyncio.wait_for(ws.recv(), 10)))["type"] != kind:
        pass
    return message


async def test_a_frame_nested_past_the_parsers_recursion_limit_leaves_the_socket_open(call, port):
    ws = await open_socket(call, port)
    await receive(ws, "welcome")
    await ws.send('{"type":' + "[" * 950)
    assert (await receive(ws, "error"))["code"] == "invalid_message"
    await ws.send(json.dumps({"type": "ping"}))
    await receive(ws, "pong")
    await ws.close()


async def test_a_malformed_last_seq_is_closed_with_a_reason(call, port):
    ws = await open_socket(
        call, port, path=f"/ws/v1/encounters/{call['encounter']}/signal?resume=x&last_seq=abc"
    )
    assert (await receive(ws, "error"))["code"] == "invalid_request"
    with pytest.raises(ConnectionClosed) as closed:
        await asyncio.wait_for(ws.recv(), 10)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 4400


@pytest.mark.parametrize(
    "path",
    [
        "/ws/v1/encounters/not-a-uuid/signal",
        "/ws/v1/nothing-here",
        "/ws/v1/encounters/" + "-" * 36 + "/signal",
    ],
)
@pytest.mark.parametrize("authenticated", [True, False])
async def test_a_path_that_is_no_encounters_socket_is_refused_with_403_not_500(
    call, port, path, authenticated
):
    headers = {} if authenticated else {"Authorization": ""}
    with pytest.raises(InvalidStatus) as refused:
        await open_socket(call, port, path=path, headers=headers)
    assert refused.value.response.status_code == 403


@pytest.mark.parametrize(
    "origin",
    ["http://{h}:9999", "https://{h}:4443", "file://{h}", "http://{h}", "https://{h}:{p}"],
)
async def test_an_origin_on_another_scheme_or_port_is_refused(call, port, origin):
    with pytest.raises(InvalidStatus) as refused:
        await open_socket(call, port, origin=origin.format(h=call["host"], p=port))
    assert refused.value.response.status_code == 403


async def test_behind_a_tls_proxy_the_https_page_on_the_same_host_and_port_is_accepted(call, port):
    https_page = f"https://{call['host']}:{port}"
    ws = await open_socket(call, port, origin=https_page, headers={"X-Forwarded-Proto": "https"})
    await receive(ws, "welcome")
    await ws.close()
    # ...and only it: an http page, through the same proxy.
    with pytest.raises(InvalidStatus):
        await open_socket(
            call, port, origin=f"http://{call['host']}:{port}", headers={"X-Forwarded-Proto": "https"}
        )
