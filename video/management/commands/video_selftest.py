"""`python manage.py video_selftest`: the pre-flight check an operator runs before clinic hours.

Two aiortc peers in this process call each other relay-only (iceTransportPolicy=relay) through the configured
TURN server (the first of settings.TURN_URLS, which is the one aiortc uses) with credentials from
video.turn.turn_credentials for two synthetic users. It prints whether the relay works, the candidate types of
the selected pairs, the relayed addresses and the round-trip time of data-channel pings. It exits non-zero with
a message when TURN is not configured, unreachable, refuses the credentials or relays nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import statistics
import time

from django.core.management.base import BaseCommand, CommandError

from video.turn import TurnUnavailable, turn_credentials


def _pairs(pc) -> list[tuple[str, str, str, str]]:
    """(local type, local address, remote type, remote address) of every nominated ICE pair."""
    transports = []
    if pc.sctp is not None:
        transports.append(pc.sctp.transport.transport)
    for transceiver in pc.getTransceivers():
        if transceiver.receiver.transport is not None:
            transports.append(transceiver.receiver.transport.transport)
    found = []
    for ice in {id(t): t for t in transports}.values():
        for pair in ice._connection._nominated.values():  # aioice: the selected pair per component
            local, remote = pair.local_candidate, pair.remote_candidate
            found.append(
                (local.type, f"{local.host}:{local.port}", remote.type, f"{remote.host}:{remote.port}")
            )
    return found


async def _call(credentials: list[dict], pings: int, timeout: float) -> dict:
    from aiortc import (
        RTCConfiguration,
        RTCIceServer,
        RTCIceTransportPolicy,
        RTCPeerConnection,
    )

    def config(creds: dict) -> RTCConfiguration:
        return RTCConfiguration(
            iceServers=[
                RTCIceServer(
                    urls=creds["uris"][0], username=creds["username"], credential=creds["credential"]
                )
            ],
            iceTransportPolicy=RTCIceTransportPolicy.RELAY,
        )

    caller, callee = RTCPeerConnection(config(credentials[0])), RTCPeerConnection(config(credentials[1]))
    result: dict = {"stage": "gathering relay candidates"}
    try:

        async def run() -> None:
            opened = asyncio.Event()
            replies: asyncio.Queue[float] = asyncio.Queue()
            channel = caller.createDataChannel("selftest")
            channel.on("open", opened.set)
            channel.on("message", lambda message: replies.put_nowait(time.perf_counter()))

            @callee.on("datachannel")
            def on_channel(incoming) -> None:
                incoming.on("message", lambda message: incoming.send(message))

            started = time.perf_counter()
            await caller.setLocalDescription(await caller.createOffer())
            if "typ relay" not in caller.localDescription.sdp:
                raise CommandError(
                    "The TURN server gave no relay candidate: unreachable, or it refused the credentials."
                )
            await callee.setRemoteDescription(caller.localDescription)
            await callee.setLocalDescription(await callee.createAnswer())
            if "typ relay" not in callee.localDescription.sdp:
                raise CommandError("The TURN server gave the second peer no relay candidate.")
            result["stage"] = "connecting through the relay"
            await caller.setRemoteDescription(callee.localDescription)
            await opened.wait()
            result["connect_seconds"] = time.perf_counter() - started
            result["stage"] = "pinging over the data channel"
            rtts = []
            for number in range(pings):
                sent = time.perf_counter()
                channel.send(f"ping {number}")
                rtts.append((await replies.get()) - sent)
            result["rtts"] = rtts
            result["pairs"] = {"caller": _pairs(caller), "callee": _pairs(callee)}

        await asyncio.wait_for(run(), timeout)
        return result
    except TimeoutError as exc:
        raise CommandError(
            f"No relayed connection within {timeout:g} s ({result['stage']}): the TURN server is unreachable, "
            "refuses the credentials, or does not relay between its own allocations."
        ) from exc
    finally:
        for pc in (caller, callee):
            with contextlib.suppress(Exception):
                await asyncio.wait_for(pc.close(), 5)


class Command(BaseCommand):
    help = (
        "Call through the configured TURN server relay-only with aiortc and report whether the relay works."
    )

    def add_arguments(self, parser) -> None:
        parser.add_argument("--timeout", type=float, default=20.0, help="seconds for the whole call (20)")
        parser.add_argument("--pings", type=int, default=5, help="data-channel pings to time (5)")

    def handle(self, *args, **options) -> None:
        try:
            credentials = [turn_credentials(f"video-selftest-{side}") for side in ("caller", "callee")]
        except TurnUnavailable as exc:
            raise CommandError(f"TURN is not configured: {exc}") from exc
        url = credentials[0]["uris"][0]
        self.stdout.write(f"TURN server: {url} (relay-only; aiortc uses the first of TURN_URLS)")
        if not url.startswith(("turn:", "turns:")):
            raise CommandError(f"The first TURN URL is not a turn: or turns: URL: {url}")
        result = asyncio.run(_call(credentials, max(1, options["pings"]), options["timeout"]))
        problems = []
        for side, pairs in result["pairs"].items():
            if not pairs:
                problems.append(f"{side}: no selected candidate pair")
            for local_type, local, remote_type, remote in pairs:
                self.stdout.write(f"{side}: selected pair {local_type} {local} -> {remote_type} {remote}")
                if local_type != "relay" or remote_type != "relay":
                    problems.append(f"{side}: the selected pair is {local_type} -> {remote_type}, not relay")
        if problems:
            raise CommandError("; ".join(problems))
        rtts_ms = [rtt * 1000 for rtt in result["rtts"]]
        self.stdout.write(f"Connected through the relay in {result['connect_seconds']:.2f} s.")
        self.stdout.write(
            f"Data-channel round trip: median {statistics.median(rtts_ms):.1f} ms, "
            f"min {min(rtts_ms):.1f} ms, max {max(rtts_ms):.1f} ms over {len(rtts_ms)} pings."
        )
        self.stdout.write(self.style.SUCCESS("Relay works: candidate types relay/relay on both sides."))
