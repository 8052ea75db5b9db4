"""The signalling WebSocket: /ws/v1/encounters/<id>/signal (protocol in video/PROTOCOL.md).

The consumer translates between the socket and video.services / video.session; it holds no state another
worker would need: participants, resume tokens and every participant's numbered message stream live in the
session store, so a client may resume on any worker.

Without Redis (the session store and the channel layer) there is no signalling: every socket is told
`signalling_unavailable` and closed with 4503, the visit itself stays as it is in PostgreSQL, and a
participant who was in the call has the interruption recorded in the encounter's timeline.

One socket per participant: a socket sends its participant's stream only while the participant record names its
connection. A takeover or a resume elsewhere evicts it through the channel layer; should that notice be lost,
the socket finds out at its next flush and closes, before it sends anything.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid

from channels.consumer import get_handler_name
from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer
from redis.exceptions import RedisError

from . import liveness, services
from .errors import SignallingCode
from .seat import Seat
from .session import ParticipantState, get_store

RELAYED = {"offer", "answer", "candidate", "ice_restart"}
# The steps that change the visit: checked against the database every time, not on the seat's confirmation.
CHECKED_EVERY_TIME = {"admit", "deny", "end", "leave"}
MAX_MESSAGE_BYTES = services.MAX_MESSAGE_BYTES
SIGNALLING_UNAVAILABLE = 4503  # Redis unreachable: try again shortly (the client reconnects with backoff)
INVALID_REQUEST = 4400  # a malformed query string: nothing was looked up or redeemed
INTERNAL_ERROR = 4500  # a bug: the socket is closed cleanly and the participant dropped (it may resume)
# A resume token outlives any visit (12 h, the visit window's end); what bounds a resume is within_grace.
RESUME_TOKEN_SECONDS = 12 * 3600
CONFLICT = 4409  # the participant is another connection's: already_active, or this one was evicted
EVICTIONS = {
    SignallingCode.TAKEN_OVER: "This visit moved to another window.",  # takeover=1
    SignallingCode.REPLACED: "This visit continues on another connection.",  # resumed elsewhere meanwhile
}

logger = logging.getLogger(__name__)


_group = liveness.encounter_group
_user_group = liveness.user_group


def turn_for(user_id: str) -> dict | None:
    try:
        from .turn import turn_credentials
    except ImportError:
        return None
    try:
        return turn_credentials(user_id)
    except Exception:  # TURN not configured: signalling still works, the client is told
        return None


class SignalConsumer(AsyncJsonWebsocketConsumer):
    participant: services.Participant | None = None
    participation: services.Participation | None = None
    seat: Seat | None = None  # the participation's confirmation, renewed within the bound (video/seat.py)
    seat_refused = False  # told not_found: the participation was revoked
    joined = False  # welcomed into the call (not merely refused or still connecting)
    dropped = False  # disconnect() ran

    async def __call__(self, scope, receive, send) -> None:
        # Redis fails under any handler (the store) or under the channel layer's receive loop, which
        # Channels runs outside them: both end here rather than as a 1011 with a stack trace.
        try:
            await super().__call__(scope, receive, send)
        except RedisError as exc:
            await self.signalling_unavailable(exc)
        except Exception:
            # Anything else is a bug, but it must not end as a socket cut without a close frame and a participant
            # left `connected` (already_active) until a sweeper notices: close cleanly and drop.
            logger.exception("video signalling failed for encounter %s", getattr(self, "encounter_id", "?"))
            await self.internal_error()
        finally:
            liveness.release(getattr(self, "connection_id", ""))  # however it ended, even cancelled

    async def dispatch(self, message) -> None:
        """Channels' dispatch, without its `aclose_old_connections()` before every handler: that is a hop to the
        one database thread for each relayed message and each flush notice, queued behind the seat checks (a
        tenth of the relay's event loop, and its latency, with 2,000 sockets; issue 13). Every database access
        of this consumer goes through database_sync_to_async, which closes old connections before and after."""
        handler = getattr(self, get_handler_name(message), None)
        if handler is None:
            raise ValueError(f"No handler for message type {message['type']}")
        await handler(message)

    async def signalling_unavailable(self, exc: Exception) -> None:
        encounter = getattr(self, "encounter_id", "?")
        logger.warning(
            "video signalling unavailable for encounter %s: %s: %s", encounter, type(exc).__name__, exc
        )
        with contextlib.suppress(Exception):  # the client may be gone already
            await self.refuse(
                SignallingCode.SIGNALLING_UNAVAILABLE,
                "Video signalling is temporarily unavailable; reconnecting shortly.",
                SIGNALLING_UNAVAILABLE,
            )
        if self.joined and self.participation is not None and self.participant is not None:
            # Redis cannot hold the drop (nor run its grace period), so the timeline records the
            # interruption; the encounter itself is untouched and the participants join again afterwards.
            try:
                await database_sync_to_async(services.record)(
                    self.participant,
                    self.participation,
                    "interrupted",
                    self.encounter_id,
                    reason="signalling_unavailable",
                )
            except Exception:
                logger.exception("could not record the interruption of encounter %s", self.encounter_id)

    async def internal_error(self) -> None:
        with contextlib.suppress(Exception):  # the client may be gone already
            await self.refuse(SignallingCode.INTERNAL_ERROR, "Something went wrong.", INTERNAL_ERROR)
        if not self.dropped:
            # The drop, with its grace period, as for any lost socket: the client may resume.
            try:
                await self.disconnect(INTERNAL_ERROR)
            except Exception:
                logger.exception("could not drop the participant of encounter %s", self.encounter_id)

    # -- connecting ----------------------------------------------------------------------------------

    async def connect(self) -> None:
        # The route admits UUIDs only (video/routing.py); session state is keyed by the canonical spelling,
        # so an upper-case path is the same participant, not a second one beside it.
        self.encounter_id = str(uuid.UUID(self.scope["url_route"]["kwargs"]["encounter_id"]))
        self.connection_id = uuid.uuid4().hex
        self.sent = 0
        self.flushing = (
            asyncio.Lock()
        )  # one flush at a time: the handlers' and the catch-up's (no duplicates)
        liveness.ensure_running()  # this process's heartbeats and sweeper (video/liveness.py)
        await self.accept()
        try:
            request = services.connect_request(self.scope.get("query_string", b""))
        except services.Refused as refused:
            await self.refuse(refused.code, refused.message, INVALID_REQUEST)
            return
        self.participant = await database_sync_to_async(services.authenticate)(self.scope)
        if self.participant is None:
            await self.refuse(SignallingCode.NOT_AUTHENTICATED, "Sign in first.", 4401)
            return
        checked_at = time.monotonic()
        try:
            self.participation = await database_sync_to_async(services.participation)(
                self.participant, self.encounter_id
            )
        except services.NotFound:
            await database_sync_to_async(services.record)(
                self.participant, None, "join", self.encounter_id, outcome="denied"
            )
            await self.refuse(SignallingCode.NOT_FOUND, "Not found.", 4404)
            return
        self.seat = Seat(
            self.participant, self.encounter_id, self.participation, checked_at, on_revoked=self.seat_lost
        )
        self.user = str(self.participant.user_id)
        store = get_store()
        participants = await store.get_participants(self.encounter_id)
        mine = participants.get(self.user)
        resumed = False
        if request.resume:
            # Redeemed only by the user and encounter it was issued for: anyone else's presentation is refused
            # without using it up (video/session.py).
            claims = await store.redeem_token(request.resume, user=self.user, encounter=self.encounter_id)
            if claims is None or not await within_grace(store, mine):
                await database_sync_to_async(services.record)(
                    self.participant, self.participation, "resume", self.encounter_id, outcome="denied"
                )
                await self.refuse(
                    SignallingCode.RESUME_REJECTED, "That resume token is not valid for you here.", 4401
                )
                return
            resumed = True
        if mine is not None and mine.status == "connected":
            if resumed:
                # The token's holder is the participant: the socket it resumes from may still look open here
                # (a half-open TCP connection), and it must not go on receiving the stream beside this one.
                eviction = SignallingCode.REPLACED
            elif request.takeover:
                eviction = SignallingCode.TAKEN_OVER
                await store.revoke_tokens(self.encounter_id, self.user)
            else:
                await self.refuse(
                    SignallingCode.ALREADY_ACTIVE,
                    "This visit is open in another window; connect with takeover=1 to move it here.",
                    CONFLICT,
                )
                return
            await self.channel_layer.group_send(
                _user_group(self.encounter_id, self.user),
                {"type": "video.evict", "keep": self.connection_id, "code": eviction.value},
            )
        admitted = (
            self.participation.admitted
            or self.participation.role == "practitioner"
            or bool(mine and mine.admitted)
        )
        # Heartbeats for this socket (video/liveness.py) start before it is marked connected.
        await liveness.hold(
            self.connection_id,
            liveness.participant_key(str(self.participant.org_id), self.encounter_id, self.user),
        )
        await store.put_participant(
            self.encounter_id,
            ParticipantState(
                user_id=self.user,
                role=self.participation.role,
                connection=self.connection_id,
                status="connected",
                admitted=admitted,
            ),
        )
        await self.channel_layer.group_add(_group(self.encounter_id), self.channel_name)
        await self.channel_layer.group_add(_user_group(self.encounter_id, self.user), self.channel_name)
        await database_sync_to_async(services.record)(
            self.participant, self.participation, "resume" if resumed else "join", self.encounter_id
        )
        if resumed:
            missed = await store.since(self.encounter_id, self.user, request.last_seq)
            if missed is None:
                await self.refuse(SignallingCode.RESUME_EXPIRED, "Too much was missed: join again.", 4410)
                return
            self.sent = request.last_seq
        else:
            # A fresh join starts at the end of the stream: nothing from an earlier connection is replayed.
            self.sent = await store.last_seq(self.encounter_id, self.user)
        await self.welcome(resumed)
        self.joined = True
        liveness.watch(self.connection_id, self)  # from here on, a lost flush notice is caught up
        if resumed:
            await self.flush()
            await self.broadcast({"type": "restart_ice", "reason": "resumed", "user": self.user})
        elif self.participation.role == "patient" and not admitted:
            await database_sync_to_async(services.arrive)(self.participant, self.participation)
            await self.broadcast({"type": "waiting", "user": self.user}, only_role="practitioner")
        await self.broadcast(
            {"type": "presence", "user": self.user, "role": self.participation.role, "status": "connected"},
            exclude_self=True,
        )

    async def welcome(self, resumed: bool) -> None:
        assert self.participation is not None
        store = get_store()
        token = await store.issue_token(
            {"user": self.user, "encounter": self.encounter_id, "connection": self.connection_id},
            # Kept while its holder is connected, however long the visit: within_grace bounds the resume by
            # the drop's grace period, which counts from the drop, not from this welcome.
            ttl=RESUME_TOKEN_SECONDS,
        )
        participants = await store.get_participants(self.encounter_id)
        me = participants[self.user]
        message = {
            "type": "welcome",
            "resumed": resumed,
            "you": {
                "user": self.user,
                "role": self.participation.role,
                "polite": self.participation.role == "patient",
                "admitted": me.admitted,
            },
            "encounter": {"id": self.encounter_id, "status": self.participation.status},
            "participants": [
                {"user": p.user_id, "role": p.role, "status": p.status}
                for p in participants.values()
                if p.user_id != self.user
            ],
            "resume_token": token,
            "grace_seconds": services.grace_seconds(),
        }
        if me.admitted:
            message["turn"] = turn_for(self.user)
        await self.deliver(self.user, message)

    async def refuse(self, code: SignallingCode, message: str, close_code: int) -> None:
        await self.send_json({"type": "error", "seq": 0, "code": code.value, "message": message})
        await self.close(code=close_code)

    # -- delivery: every server message goes through the participant's numbered stream ------------

    async def deliver(self, user: str, message: dict) -> None:
        await get_store().append(self.encounter_id, user, message)
        await self.channel_layer.group_send(_user_group(self.encounter_id, user), {"type": "video.flush"})

    async def broadcast(
        self, message: dict, only_role: str | None = None, exclude_self: bool = False
    ) -> None:
        for p in (await get_store().get_participants(self.encounter_id)).values():
            if exclude_self and p.user_id == self.user:
                continue
            if only_role and p.role != only_role:
                continue
            if p.status == "left":
                continue
            await self.deliver(p.user_id, message)

    async def flush(self) -> int:
        async with self.flushing:
            if self.participation is None:
                return 0
            store = get_store()
            me = await store.get_participant(self.encounter_id, self.user)
            if me is not None and me.connection not in ("", self.connection_id):
                # Another connection holds the participant and this socket missed its eviction notice. A record
                # without a connection (dropped by a sweeper, left, denied) still lets the last messages out.
                await self.evicted(SignallingCode.REPLACED)
                return 0
            messages = await store.since(self.encounter_id, self.user, self.sent) or []
            for message in messages:
                await self.send_json(message)
                self.sent = message["seq"]
            return len(messages)

    async def catch_up(self) -> int:
        """Called by this process's liveness task when the stream holds a message this socket has not sent
        for a whole catch-up interval: its flush notice was lost (video/liveness.py)."""
        if self.participation is None:
            return 0
        return await self.flush()

    async def video_flush(self, event) -> None:
        if self.participation is not None:
            await self.flush()

    async def video_evict(self, event) -> None:
        if event.get("keep") != self.connection_id:
            code = event.get("code", SignallingCode.TAKEN_OVER.value)
            await self.evicted(SignallingCode(code))  # type: ignore[call-arg]  # a lookup by value

    async def evicted(self, code: SignallingCode) -> None:
        if self.participation is None:
            return
        self.participation = None  # this connection no longer speaks for the user, nor receives the stream
        await self.send_json({"type": "error", "seq": 0, "code": code.value, "message": EVICTIONS[code]})
        await self.close(code=CONFLICT)

    async def video_seat(self, event) -> None:
        """The encounter changed on the server's side (ended): the next message is checked against the
        database, not on the seat's last confirmation."""
        if self.seat is not None:
            self.seat.invalidate()

    async def seat_lost(self) -> None:
        """The participation is gone (the encounter ended, the membership or the patient's record no longer
        theirs), or the sign-in the socket was opened with ended (the token revoked or expired, the session
        signed out, a lockout): refused and closed, once, whether a message or the seat's renewal found it."""
        if self.participation is None or self.seat_refused:
            return
        self.seat_refused = True  # the participation stays: closing drops the participant as before
        if self.seat is not None and self.seat.signed_out:
            await self.refuse(
                SignallingCode.NOT_AUTHENTICATED, "Your sign-in has ended: sign in again.", 4401
            )
        else:
            await self.refuse(SignallingCode.NOT_FOUND, "Not found.", 4404)

    async def video_close(self, event) -> None:
        await self.close(code=event.get("code", 4000))

    async def video_lost(self, event) -> None:
        """A sweeper took this socket for lost (this worker's heartbeat stopped, so it was stalled) and told
        the others it dropped: closed, so that the client resumes (video/liveness.py)."""
        if event.get("connection") == self.connection_id:
            liveness.release(self.connection_id)
            await self.close(code=liveness.LOST)

    # -- messages from the client --------------------------------------------------------------------

    async def receive(self, text_data=None, bytes_data=None, **kwargs) -> None:
        """Frames are parsed here (services.parse_message), before the JSON layer: an oversized, binary,
        malformed or too deeply nested frame gets an error and is dropped, never a crashed consumer (which
        would cut the visit's socket and leave the participant `connected`)."""
        if self.participation is None or self.participant is None:
            return
        try:
            content = services.parse_message(text_data)
        except services.Refused as refused:
            await self.error(refused.code, refused.message)
            return
        await self.receive_json(content, **kwargs)

    async def receive_json(self, content, **kwargs) -> None:
        if self.participation is None or self.participant is None or self.seat_refused:
            return
        kind = content["type"]
        if kind == "ping":
            # Also send whatever the stream holds that this socket has not sent: a flush notice lost in the
            # channel layer (channels_redis drops messages to a full channel) then costs one ping interval.
            await self.flush()
            if self.participation is not None:  # not evicted meanwhile
                await self.send_json({"type": "pong", "seq": 0, "at": time.time()})
            return
        if kind == "ack":
            return
        # Organization and encounter are checked again for every message: on a confirmation at most
        # VIDEO_SEAT_CHECK_SECONDS old for a relayed one, against the database for a step that changes the visit.
        assert self.seat is not None
        try:
            if kind in CHECKED_EVERY_TIME:
                self.participation = await self.seat.check_now()
            else:
                self.participation = await self.seat.confirm()
        except services.NotFound:
            await self.seat_lost()
            return
        store = get_store()
        participants = await store.get_participants(self.encounter_id)
        me = participants.get(self.user)
        if me is None or me.connection != self.connection_id:
            await self.refuse(SignallingCode.TAKEN_OVER, EVICTIONS[SignallingCode.TAKEN_OVER], CONFLICT)
            return
        if kind in RELAYED:
            if not me.admitted:
                await self.error(SignallingCode.NOT_ADMITTED, "Wait to be admitted.")
                return
            for p in participants.values():
                if p.user_id != self.user and p.admitted and p.status != "left":
                    payload = {k: v for k, v in content.items() if k in ("sdp", "candidate", "description")}
                    await self.deliver(p.user_id, {"type": kind, "from": self.user, **payload})
            return
        if kind in ("admit", "deny"):
            await self.admit_or_deny(kind, content, participants)
            return
        if kind == "end":
            if self.participation.role != "practitioner":
                await self.error(SignallingCode.NOT_PERMITTED, "Only the practitioner ends the visit.")
                return
            try:
                status = await database_sync_to_async(services.end)(self.participant, self.participation)
            except Exception:
                await self.error(
                    SignallingCode.INVALID_STATE, "The visit cannot be ended in its current state."
                )
                return
            await self.broadcast({"type": "ended", "encounter": {"id": self.encounter_id, "status": status}})
            await self.channel_layer.group_send(_group(self.encounter_id), {"type": "video.seat"})
            return
        if kind == "leave":
            await store.put_participant(
                self.encounter_id,
                ParticipantState(
                    user_id=self.user, role=me.role, connection="", status="left", admitted=me.admitted
                ),
            )
            await database_sync_to_async(services.record)(
                self.participant, self.participation, "leave", self.encounter_id
            )
            await self.broadcast(
                {"type": "presence", "user": self.user, "role": me.role, "status": "left"}, exclude_self=True
            )
            self.participation = None
            await self.close(code=1000)
            return
        await self.error(SignallingCode.UNKNOWN_TYPE, f"Unknown message type {kind[:40]!r}.")

    async def admit_or_deny(self, kind: str, content: dict, participants: dict) -> None:
        assert self.participation is not None and self.participant is not None
        if self.participation.role != "practitioner":
            await self.error(SignallingCode.NOT_PERMITTED, "Only the practitioner admits or denies.")
            return
        target = participants.get(str(content.get("user", "")))
        if target is None or target.role != "patient":
            await self.error(SignallingCode.NOT_FOUND, "No such patient in the waiting room.")
            return
        store = get_store()
        if kind == "deny":
            await store.put_participant(
                self.encounter_id,
                ParticipantState(
                    user_id=target.user_id, role="patient", connection="", status="left", admitted=False
                ),
            )
            await store.revoke_tokens(self.encounter_id, target.user_id)
            await self.deliver(target.user_id, {"type": "denied"})
            await self.channel_layer.group_send(
                _user_group(self.encounter_id, target.user_id), {"type": "video.close", "code": 4403}
            )
            return
        status = await database_sync_to_async(services.admit)(self.participant, self.participation)
        target.admitted = True
        await store.put_participant(self.encounter_id, target)
        await self.deliver(
            target.user_id,
            {
                "type": "admitted",
                "turn": turn_for(target.user_id),
                "encounter": {"id": self.encounter_id, "status": status},
            },
        )
        await self.broadcast({"type": "state", "encounter": {"id": self.encounter_id, "status": status}})

    async def error(self, code: SignallingCode, message: str) -> None:
        await self.deliver(self.user, {"type": "error", "code": code.value, "message": message})

    # -- dropping ------------------------------------------------------------------------------------

    async def disconnect(self, code) -> None:
        self.dropped = True
        liveness.release(getattr(self, "connection_id", ""))
        if self.participation is None or self.participant is None:
            return
        await self.channel_layer.group_discard(_group(self.encounter_id), self.channel_name)
        await self.channel_layer.group_discard(_user_group(self.encounter_id, self.user), self.channel_name)
        store = get_store()
        me = (await store.get_participants(self.encounter_id)).get(self.user)
        if me is None or me.connection != self.connection_id or me.status != "connected":
            return
        dropped_at = time.time()
        due = dropped_at + services.grace_seconds()
        drop = liveness.drop_key(str(self.participant.org_id), self.encounter_id, self.user, dropped_at)
        # Recorded before the participant is marked dropped: if this worker dies before the grace period is
        # over, another worker's sweeper settles the drop (video/liveness.py).
        await store.watch_drop(drop, due)
        await store.put_participant(
            self.encounter_id,
            ParticipantState(
                user_id=self.user,
                role=me.role,
                connection="",
                status="dropped",
                admitted=me.admitted,
                dropped_at=dropped_at,
            ),
        )
        await database_sync_to_async(services.record)(
            self.participant, self.participation, "interrupted", self.encounter_id, close_code=code
        )
        await self.broadcast(
            {
                "type": "presence",
                "user": self.user,
                "role": me.role,
                "status": "dropped",
                "grace_seconds": services.grace_seconds(),
            },
            exclude_self=True,
        )
        asyncio.get_running_loop().create_task(watch_grace(self.channel_layer, drop, due))


async def within_grace(store, me: ParticipantState | None) -> bool:
    """A resume comes from a participant still connected (a half-open socket) or dropped less than the grace
    period ago; one who left, or was dropped for longer, joins afresh."""
    if me is None or me.status == "left":
        return False
    return me.status == "connected" or await store.now() <= me.dropped_at + services.grace_seconds()


async def watch_grace(layer, drop: str, due: float) -> None:
    """After the grace period, a participant still dropped since this drop ends the visit as undocumented.
    The timer of the worker that saw the socket close; should it die first, a sweeper settles the drop."""
    await asyncio.sleep(max(0.0, due - time.time()))
    try:
        await liveness.settle(layer, drop, max(time.time(), due))
    except Exception:
        logger.exception("could not settle the drop %s (a sweeper tries again)", drop)
