"""Liveness of signalling sockets across workers: heartbeats, and a sweeper for the workers that died.

Why this exists: a socket that closes runs the consumer's disconnect handler, which marks the participant
dropped and starts the grace timer (`watch_grace`, an asyncio task in that worker). A worker that is killed
(SIGKILL, out of memory, its node lost) runs neither, and neither does one whose disconnect handler could not
reach Redis: the participant would stay `connected` in the shared store forever, and a visit whose participant
never came back would never be flagged documentation-required. A dropped participant's timer would also die
with a worker killed or scaled down during the grace period.

So every worker process runs one task (started by its first signalling socket) that

- catches up: every VIDEO_CATCH_UP_SECONDS it reads the last sequence number of every stream whose socket it
  holds (one MGET) and flushes a socket that still has not sent a message that was already there at the
  previous look. A message reaches its socket through a flush notice in the channel layer, and channels_redis
  delivers at most once: a notice can be lost (a full channel, or a receive cancelled with the message in
  flight when another socket of the process closes). The load test found one: a practitioner's `state` sat in
  the stream for 30 s until the client pinged. Now a lost notice costs at most two catch-up intervals.

- heartbeats: every VIDEO_HEARTBEAT_SECONDS it writes the time (Redis's clock, so the hosts' clocks need
  not agree) into the `seen` record of every participant whose socket it holds, one write for all of them.
  A live worker keeps its participants fresh; a dead one stops, whatever killed it.
- sweeps: every VIDEO_SWEEP_SECONDS, if it wins a short lock (so one worker sweeps at a time), it
  1. treats a participant still `connected` whose heartbeat is older than three heartbeat intervals as a
     drop: marked dropped (only if the record is still the one it read: a resume in between wins), the
     interruption goes to the audit log and the timeline (reason `connection_lost`), the others get
     `presence: dropped`, and the socket, if its worker is merely stalled and still holds it, is closed
     (4408) so that the client resumes;
  2. settles every drop whose grace period is over, exactly as the worker that saw a socket close does:
     still dropped since that drop, the visit is finished and flagged documentation-required and everyone
     gets `state` with `documentation_required: true`.

The grace period of a swept drop counts from the last heartbeat, as a prompt sweep finds it; but from no
earlier than the staleness bound and two sweep intervals before the sweep that found it: a participant who
could not have come back because signalling itself was down (Redis unreachable, no worker running) still has
most of a grace period once it is back.

Every drop, seen by a worker or swept, is recorded in the store's `drops` with the end of its grace period.
Whoever settles it (the worker's own timer, or any sweeper once the timer is late) first claims it with a
lease; a settler that dies lets the lease run out and the drop is settled again. The encounter is flagged at
most once in any case: video.services.grace_expired flags only an encounter still in progress or arrived, and
checks that under a row lock.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from typing import Protocol

from channels.db import database_sync_to_async
from channels.layers import get_channel_layer
from django.conf import settings

from . import services
from .session import ParticipantState, get_store

logger = logging.getLogger(__name__)

SWEEP_LOCK = "video:liveness:sweeper"
CLAIM_LEASE_SECONDS = 60.0  # a settler that dies with a claimed drop: it is due again after this
BATCH = 200  # participants or drops looked at per sweep (the rest wait for the next one)
LOST = 4408  # close code for a socket its own worker had stopped vouching for: the client resumes

# The sockets this process holds: connection id -> participant key.
_live: dict[str, str] = {}
_task: asyncio.Task | None = None


class Socket(Protocol):
    """What the catch-up needs of a consumer: its stream, how far it has sent, and a way to send the rest."""

    encounter_id: str
    user: str
    sent: int

    async def catch_up(self) -> int: ...


# The welcomed sockets of this process, for the catch-up: connection id -> consumer; and, per connection, the
# stream's last sequence number at the previous look.
_sockets: dict[str, Socket] = {}
_seen_seq: dict[str, int] = {}
_catching_up: set[asyncio.Task] = set()
caught_up = 0  # messages the catch-up delivered: their notice lost, or late a whole interval (/metrics)


def heartbeat_seconds() -> float:
    return float(getattr(settings, "VIDEO_HEARTBEAT_SECONDS", 10))


def stale_seconds() -> float:
    return 3 * heartbeat_seconds()


def sweep_seconds() -> float:
    return float(getattr(settings, "VIDEO_SWEEP_SECONDS", 5))


def catch_up_seconds() -> float:
    return float(getattr(settings, "VIDEO_CATCH_UP_SECONDS", 1))


def encounter_group(encounter: str) -> str:
    return f"video.{encounter}"


def user_group(encounter: str, user: str) -> str:
    return f"video.{encounter}.{user}"


def participant_key(org_id: str, encounter: str, user: str) -> str:
    return f"{org_id}/{encounter}/{user}"


def drop_key(org_id: str, encounter: str, user: str, dropped_at: float) -> str:
    return f"{org_id}/{encounter}/{user}/{dropped_at!r}"


# -- the sockets of this process -------------------------------------------------------------------------


async def hold(connection: str, key: str) -> None:
    """A consumer is about to mark its participant connected: heartbeat first (a sweeper that reads the new
    record then also reads a fresh heartbeat), and from now on with every beat of this process."""
    ensure_running()
    _live[connection] = key
    await get_store().heartbeat([key])


def release(connection: str) -> None:
    """The consumer is done with its socket (closed, refused, failed or cancelled): no more heartbeats."""
    _live.pop(connection, None)
    _sockets.pop(connection, None)
    _seen_seq.pop(connection, None)


def watch(connection: str, socket: Socket) -> None:
    """The socket was welcomed (its `sent` is where its stream starts): from now on it is caught up."""
    _sockets[connection] = socket


async def beat() -> None:
    keys = set(_live.values())
    if keys:
        await get_store().heartbeat(keys)


async def catch_up() -> None:
    """Flushes every socket that has not sent a message its stream held at the previous look (one MGET for
    all of them). A message only just appended is left to its notice: a flush here is for the lost ones."""
    sockets = list(_sockets.items())
    if not sockets:
        return
    seqs = await get_store().last_seqs([(socket.encounter_id, socket.user) for _, socket in sockets])
    for (connection, socket), seq in zip(sockets, seqs, strict=True):
        before = _seen_seq.get(connection, 0)
        _seen_seq[connection] = seq
        if socket.sent < min(before, seq) and connection in _sockets:
            task = asyncio.get_running_loop().create_task(_flush(connection, socket))
            _catching_up.add(task)  # kept until done: the loop holds tasks only weakly
            task.add_done_callback(_catching_up.discard)


async def _flush(connection: str, socket: Socket) -> None:
    global caught_up
    try:
        sent = await socket.catch_up()
    except Exception as exc:  # the socket closed meanwhile, or Redis failed: the next look tries again
        logger.debug("video catch-up of %s failed: %s: %s", connection, type(exc).__name__, exc)
        return
    if sent:
        caught_up += sent
        logger.info(
            "video: %d message(s) for user %s of encounter %s delivered by the catch-up (notice lost or late)",
            sent,
            socket.user,
            socket.encounter_id,
        )


# -- the task ------------------------------------------------------------------------------------------


def ensure_running() -> None:
    """One heartbeat-and-sweep task per process (per event loop), started by the first signalling socket."""
    global _task
    loop = asyncio.get_running_loop()
    if _task is not None and not _task.done() and _task.get_loop() is loop:
        return
    _task = loop.create_task(run(), name="video-liveness")


async def stop() -> None:
    """Stops this process's task (tests). Cancelled again until it ends: redis-py (8.1) can swallow a
    cancellation that lands in a command (redis/redis-py#2028)."""
    global _task
    task, _task = _task, None
    if task is None or task.get_loop() is not asyncio.get_running_loop():
        return
    while not task.done():
        task.cancel()
        await asyncio.wait({task}, timeout=0.1)
    with contextlib.suppress(asyncio.CancelledError):
        task.result()


async def run() -> None:
    next_beat = next_sweep = next_catch_up = time.monotonic()
    failing = {"beat": False, "sweep": False, "catch-up": False}
    while True:
        now = time.monotonic()
        steps = (
            ("beat", next_beat, beat),
            ("sweep", next_sweep, sweep),
            ("catch-up", next_catch_up, catch_up),
        )
        for name, due, step in steps:
            if now < due:
                continue
            try:
                await step()
                failing[name] = False
            except Exception as exc:
                # Redis or the database unreachable: tried again next time; said once per outage.
                level = logging.DEBUG if failing[name] else logging.WARNING
                logger.log(level, "video liveness %s failed: %s: %s", name, type(exc).__name__, exc)
                failing[name] = True
        if now >= next_beat:
            next_beat = now + heartbeat_seconds()
        if now >= next_sweep:
            next_sweep = now + sweep_seconds()
        if now >= next_catch_up:
            next_catch_up = now + catch_up_seconds()
        await asyncio.sleep(max(0.01, min(next_beat, next_sweep, next_catch_up) - time.monotonic()))


# -- sweeping ------------------------------------------------------------------------------------------


async def sweep(now: float | None = None) -> None:
    """One sweep, if no other worker is sweeping."""
    store = get_store()
    holder = uuid.uuid4().hex
    # Released after the sweep; the expiry only frees the lock of a worker killed while sweeping.
    if not await store.lock(SWEEP_LOCK, holder, ttl=max(1.0, 2 * sweep_seconds())):
        return
    try:
        await sweep_unlocked(now)
    finally:
        await store.unlock(SWEEP_LOCK, holder)


async def sweep_unlocked(now: float | None = None) -> None:
    """The sweep itself. Safe to run in several places at once (every step is claimed or compare-and-set);
    the lock only saves the work."""
    store = get_store()
    now = await store.now() if now is None else now  # Redis's clock, as the heartbeats are
    layer = get_channel_layer()
    bound = stale_seconds()
    for key, seen_at in await store.stale(now - bound, BATCH):
        try:
            await lose(layer, key, seen_at, now, bound)
        except Exception:
            logger.exception("video liveness: could not sweep %s", key)
    for key, _ in await store.due_drops(now, BATCH):
        try:
            await settle(layer, key, now)
        except Exception:
            logger.exception("video liveness: could not settle the drop %s", key)


async def lose(layer, key: str, seen_at: float, now: float, bound: float) -> None:
    """A participant whose heartbeat stopped: dropped at its last heartbeat (see the module's docstring)."""
    store = get_store()
    org_id, encounter, user = key.split("/")
    me = (await store.get_participants(encounter)).get(user)
    if me is None or me.status != "connected":
        await store.forget_seen(key, seen_at)  # dropped, left or expired by now: nothing to watch
        return
    dropped_at = max(seen_at, now - bound - 2 * sweep_seconds())  # see the module's docstring
    due = dropped_at + services.grace_seconds()
    drop = drop_key(org_id, encounter, user, dropped_at)
    await store.watch_drop(drop, due)  # first: a sweeper that dies right after the next step leaves it due
    lost = await store.drop_if_stale(encounter, user, key, now - bound, dropped_at)
    if lost is None:
        # Resumed meanwhile (or another sweeper marked this very drop): the entry stays, and is settled, or
        # found to be no drop, when it is due.
        return
    await store.forget_seen(key, seen_at)
    logger.warning(
        "video participant %s of encounter %s lost (last heartbeat %.1f s ago): dropped",
        user,
        encounter,
        now - seen_at,
    )
    # A worker that is only stalled still holds the socket: closed, so that its client resumes.
    await layer.group_send(user_group(encounter, user), {"type": "video.lost", "connection": lost.connection})
    await tell_others(
        layer,
        encounter,
        user,
        {
            "type": "presence",
            "user": user,
            "role": lost.role,
            "status": "dropped",
            "grace_seconds": max(0.0, due - now),
        },
    )
    await database_sync_to_async(services.connection_lost)(org_id, encounter, user, lost.role, seen_at)


async def settle(layer, drop: str, now: float) -> None:
    """A drop whose grace period is over, claimed so that one settler handles it."""
    store = get_store()
    if not await store.claim_drop(drop, now, CLAIM_LEASE_SECONDS):
        return  # settled meanwhile, or another settler holds it
    org_id, encounter, user, dropped_at = drop.split("/")
    await did_not_come_back(layer, org_id, encounter, user, float(dropped_at))
    await store.drop_done(drop)


async def did_not_come_back(layer, org_id: str, encounter: str, user: str, dropped_at: float) -> bool:
    """Still dropped since `dropped_at`: the visit ends as undocumented (once), and everyone is told."""
    store = get_store()
    me = (await store.get_participants(encounter)).get(user)
    if me is None or me.status != "dropped" or me.dropped_at != dropped_at:
        return False  # back in time (or left deliberately)
    flagged = await database_sync_to_async(services.grace_expired)(org_id, encounter, user, me.role)
    if flagged:
        # The visit is over: every socket's seat (video/seat.py) is checked against the database again.
        await layer.group_send(encounter_group(encounter), {"type": "video.seat"})
        message = {
            "type": "state",
            "documentation_required": True,
            "encounter": {"id": encounter, "status": "finished"},
        }
        for p in (await store.get_participants(encounter)).values():
            await deliver(layer, encounter, p, message)
    return flagged


async def tell_others(layer, encounter: str, user: str, message: dict) -> None:
    for p in (await get_store().get_participants(encounter)).values():
        if p.user_id != user and p.status != "left":
            await deliver(layer, encounter, p, message)


async def deliver(layer, encounter: str, p: ParticipantState, message: dict) -> None:
    await get_store().append(encounter, p.user_id, message)
    await layer.group_send(user_group(encounter, p.user_id), {"type": "video.flush"})
