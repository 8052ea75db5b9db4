"""Signalling session state: who is in which encounter, resume tokens, and each participant's message stream.

Every message the server sends a participant is appended to that participant's stream with the next sequence
number, so a client that reconnects gets exactly what it missed, on any worker. With REDIS_URL the state
lives in Redis (several workers); without it, in this process's memory (one worker).

The liveness records (video/liveness.py) live here too: the heartbeat of every socket a worker holds
(`seen`, by participant key "<org>/<encounter>/<user>"), the drops whose grace period is running (`drops`,
by drop key "<org>/<encounter>/<user>/<dropped_at>", scored by when the grace period ends) and the
sweeper's lock.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, replace
from typing import cast

from django.conf import settings

STREAM_KEEP = 500  # messages kept per participant for replay
STORE_CONNECTIONS = 100  # Redis connections of one worker's session store (more commands wait for one)
SEEN = "video:liveness:seen"  # sorted set: participant key -> last heartbeat (epoch seconds)
DROPS = "video:liveness:drops"  # sorted set: drop key -> end of its grace period (epoch seconds)


@dataclass
class ParticipantState:
    """A participant's live state in one encounter's session, shared by every worker: which connection
    speaks for them, whether they are connected, dropped (and since when) or gone, and whether admitted.
    Keyed by user id; the participant themselves is `video.services.Participant`."""

    user_id: str
    role: str  # practitioner | patient
    connection: str  # the live connection's id ("" while dropped)
    status: str  # connected | dropped | left
    admitted: bool
    dropped_at: float = 0.0


class MemoryStore:
    def __init__(self) -> None:
        self._participants: dict[str, dict[str, dict]] = {}
        self._streams: dict[tuple[str, str], list[tuple[int, dict]]] = {}
        self._seq: dict[tuple[str, str], int] = {}
        self._tokens: dict[str, tuple[dict, float]] = {}
        self._lock = asyncio.Lock()
        self._seen: dict[str, float] = {}
        self._drops: dict[str, float] = {}
        self._locks: dict[str, tuple[str, float]] = {}

    async def get_participants(self, encounter: str) -> dict[str, ParticipantState]:
        return {u: ParticipantState(**p) for u, p in self._participants.get(encounter, {}).items()}

    async def get_participant(self, encounter: str, user: str) -> ParticipantState | None:
        raw = self._participants.get(encounter, {}).get(user)
        return None if raw is None else ParticipantState(**raw)

    async def put_participant(self, encounter: str, participant: ParticipantState) -> None:
        self._participants.setdefault(encounter, {})[participant.user_id] = asdict(participant)

    async def append(self, encounter: str, user: str, message: dict) -> int:
        async with self._lock:
            key = (encounter, user)
            seq = self._seq.get(key, 0) + 1
            self._seq[key] = seq
            stream = self._streams.setdefault(key, [])
            stream.append((seq, {**message, "seq": seq}))
            del stream[:-STREAM_KEEP]
            return seq

    async def last_seq(self, encounter: str, user: str) -> int:
        return self._seq.get((encounter, user), 0)

    async def last_seqs(self, streams: list[tuple[str, str]]) -> list[int]:
        return [self._seq.get(stream, 0) for stream in streams]

    async def since(self, encounter: str, user: str, after: int) -> list[dict] | None:
        """Messages after `after`; None when some were already trimmed (the client must rejoin afresh)."""
        stream = self._streams.get((encounter, user), [])
        if stream and after < stream[0][0] - 1:
            return None
        return [message for seq, message in stream if seq > after]

    async def issue_token(self, claims: dict, ttl: float) -> str:
        token = secrets.token_urlsafe(32)
        self._tokens[token] = (claims, time.time() + ttl)
        return token

    async def redeem_token(self, token: str, user: str, encounter: str) -> dict | None:
        """Single use, by the user and encounter it was issued for: their presentation uses it up; anyone
        else's is refused and leaves it for its owner (a stolen token cannot lock its owner out)."""
        entry = self._tokens.get(token)
        if entry is None or entry[0].get("user") != user or entry[0].get("encounter") != encounter:
            return None
        del self._tokens[token]
        return entry[0] if entry[1] >= time.time() else None

    async def revoke_tokens(self, encounter: str, user: str) -> None:
        for token, (claims, _) in list(self._tokens.items()):
            if claims.get("encounter") == encounter and claims.get("user") == user:
                self._tokens.pop(token, None)

    # -- liveness (video/liveness.py); nothing awaits between a read and its write, so each is atomic ----

    async def now(self) -> float:
        return time.time()

    async def heartbeat(self, keys: Iterable[str], at: float | None = None) -> None:
        self._seen.update(dict.fromkeys(keys, time.time() if at is None else at))

    async def stale(self, before: float, limit: int) -> list[tuple[str, float]]:
        return sorted(((k, v) for k, v in self._seen.items() if v < before), key=lambda kv: kv[1])[:limit]

    async def forget_seen(self, key: str, seen_at: float) -> None:
        if self._seen.get(key) == seen_at:
            del self._seen[key]

    async def drop_if_stale(
        self, encounter: str, user: str, key: str, before: float, dropped_at: float
    ) -> ParticipantState | None:
        raw = self._participants.get(encounter, {}).get(user)
        seen_at = self._seen.get(key)
        if raw is None or raw["status"] != "connected" or seen_at is None or seen_at >= before:
            return None
        me = ParticipantState(**raw)
        dropped = replace(me, connection="", status="dropped", dropped_at=dropped_at)
        self._participants[encounter][user] = asdict(dropped)
        return me

    async def watch_drop(self, key: str, due: float) -> None:
        self._drops[key] = due

    async def due_drops(self, now: float, limit: int) -> list[tuple[str, float]]:
        return sorted(((k, v) for k, v in self._drops.items() if v <= now), key=lambda kv: kv[1])[:limit]

    async def claim_drop(self, key: str, now: float, lease: float) -> bool:
        due = self._drops.get(key)
        if due is None or due > now:
            return False
        self._drops[key] = now + lease
        return True

    async def drop_done(self, key: str) -> None:
        self._drops.pop(key, None)

    async def lock(self, name: str, holder: str, ttl: float) -> bool:
        current = self._locks.get(name)
        if current is not None and current[1] > time.time():
            return False
        self._locks[name] = (holder, time.time() + ttl)
        return True

    async def unlock(self, name: str, holder: str) -> None:
        if self._locks.get(name, ("", 0.0))[0] == holder:
            del self._locks[name]


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def reconnect_once():
    """A connection error is retried once, on a fresh connection. After Redis restarts, every connection in the
    pool is dead, and redis-py (8.x) hands them out without noticing: without the retry each one fails its
    first command, long after Redis is back. Timeouts are not retried: the command may have run (an INCR run
    twice would skip a sequence number)."""
    from redis.asyncio.retry import Retry
    from redis.backoff import NoBackoff
    from redis.exceptions import ConnectionError as RedisConnectionError

    return Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,))


# A due drop is claimed by moving its score to the end of a lease: whoever moved it settles it, and if that
# worker dies first the lease runs out and the drop is due again.
CLAIM = """
local due = redis.call('ZSCORE', KEYS[1], ARGV[1])
if due and tonumber(due) <= tonumber(ARGV[2]) then
    redis.call('ZADD', KEYS[1], ARGV[3], ARGV[1])
    return 1
end
return 0
"""
BEAT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
for _, key in ipairs(ARGV) do
    redis.call('ZADD', KEYS[1], now, key)
end
return 1
"""
# Removes a heartbeat only if no newer one replaced it meanwhile.
FORGET_IF = """
local seen = redis.call('ZSCORE', KEYS[1], ARGV[1])
if seen and tonumber(seen) == tonumber(ARGV[2]) then
    return redis.call('ZREM', KEYS[1], ARGV[1])
end
return 0
"""
UNLOCK = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
    return redis.call('DEL', KEYS[1])
end
return 0
"""


# Numbers a participant's next message and stores it with its number, atomically. ARGV[1] is the message's JSON
# object without "seq"; the stored member is the same object with "seq" first.
APPEND = """
local seq = redis.call('INCR', KEYS[1])
local body = ARGV[1]
local member
if body == '{}' then
    member = '{"seq": ' .. seq .. '}'
else
    member = '{"seq": ' .. seq .. ', ' .. string.sub(body, 2)
end
redis.call('ZADD', KEYS[2], seq, member)
redis.call('ZREMRANGEBYRANK', KEYS[2], 0, -tonumber(ARGV[2]) - 1)
redis.call('EXPIRE', KEYS[2], ARGV[3])
return seq
"""


class RedisStore:
    def __init__(self, url: str) -> None:
        import redis.asyncio as redis

        # A blocking pool: a command waits (up to 2 s) for one of the worker's connections. redis-py's default
        # pool (100 connections) raises MaxConnectionsError instead, and a burst of more than 100 sockets' store
        # commands on one worker (200 pings at once in tests/bench/test_video.py) closed them all with
        # signalling_unavailable.
        pool = redis.BlockingConnectionPool.from_url(
            url,
            max_connections=STORE_CONNECTIONS,
            timeout=2,
            socket_timeout=2,
            socket_connect_timeout=2,
            retry=reconnect_once(),
        )
        self._redis = redis.Redis(connection_pool=pool)
        self._append = self._redis.register_script(APPEND)

    @staticmethod
    def _p(encounter: str) -> str:
        return f"video:participants:{encounter}"

    async def get_participants(self, encounter: str) -> dict[str, ParticipantState]:
        raw = await self._redis.hgetall(self._p(encounter))  # type: ignore[misc]  # redis stubs: sync|async
        return {_text(k): ParticipantState(**json.loads(v)) for k, v in raw.items()}

    async def get_participant(self, encounter: str, user: str) -> ParticipantState | None:
        raw = await self._redis.hget(self._p(encounter), user)  # type: ignore[misc]  # redis stubs: sync|async
        return None if raw is None else ParticipantState(**json.loads(raw))

    async def put_participant(self, encounter: str, participant: ParticipantState) -> None:
        await self._redis.hset(self._p(encounter), participant.user_id, json.dumps(asdict(participant)))
        await self._redis.expire(self._p(encounter), 86400)

    async def append(self, encounter: str, user: str, message: dict) -> int:
        # One script, so numbering and storing are one step: as two round trips, a message numbered N+1 by
        # one worker could be stored before N by another, a flush in between would read N+1 and move past N,
        # and N was lost (the load test found it: an offer or answer never arrived).
        body = json.dumps({k: v for k, v in message.items() if k != "seq"})
        seq = await self._append(
            keys=[f"video:seq:{encounter}:{user}", f"video:stream:{encounter}:{user}"],
            args=[body, STREAM_KEEP, 86400],
        )
        return int(seq)

    async def last_seq(self, encounter: str, user: str) -> int:
        value = await self._redis.get(f"video:seq:{encounter}:{user}")
        return int(value) if value else 0

    async def last_seqs(self, streams: list[tuple[str, str]]) -> list[int]:
        """The last sequence number of each (encounter, user) stream, in one round trip."""
        if not streams:
            return []
        values = await self._redis.mget([f"video:seq:{encounter}:{user}" for encounter, user in streams])
        return [int(value) if value else 0 for value in values]

    async def since(self, encounter: str, user: str, after: int) -> list[dict] | None:
        key = f"video:stream:{encounter}:{user}"
        first = await self._redis.zrange(key, 0, 0, withscores=True)
        if first and after < int(first[0][1]) - 1:
            return None
        messages = await self._redis.zrangebyscore(key, after + 1, "+inf")
        return [json.loads(m) for m in messages]  # type: ignore[arg-type]  # members are JSON bytes

    @staticmethod
    def _token(encounter: str, user: str, token: str) -> str:
        # The key names the token's encounter and user: another user's presentation looks up a key that does
        # not exist, so it can neither redeem nor use up the token (MemoryStore.redeem_token).
        return f"video:token:{encounter}:{user}:{token}"

    async def issue_token(self, claims: dict, ttl: float) -> str:
        token = secrets.token_urlsafe(32)
        key = self._token(claims["encounter"], claims["user"], token)
        await self._redis.set(key, json.dumps(claims), ex=max(1, int(ttl)))
        return token

    async def redeem_token(self, token: str, user: str, encounter: str) -> dict | None:
        raw = await self._redis.getdel(self._token(encounter, user, token))
        return json.loads(raw) if raw else None

    async def revoke_tokens(self, encounter: str, user: str) -> None:
        # Encounter and user are UUIDs: no glob characters in the pattern but the final "*".
        async for key in self._redis.scan_iter(match=self._token(encounter, user, "*"), count=500):
            await self._redis.delete(key)

    # -- liveness (video/liveness.py) ------------------------------------------------------------------

    async def now(self) -> float:
        """Redis's clock: heartbeats and sweeps on several hosts compare times from one clock."""
        seconds, microseconds = await self._redis.time()
        return seconds + microseconds / 1e6

    async def heartbeat(self, keys: Iterable[str], at: float | None = None) -> None:
        """Stamps the participants with Redis's time (or `at`), in one round trip."""
        keys = list(keys)
        if not keys:
            return
        if at is None:
            await self._redis.eval(BEAT, 1, SEEN, *keys)
        else:
            await self._redis.zadd(SEEN, dict.fromkeys(keys, at))

    async def stale(self, before: float, limit: int) -> list[tuple[str, float]]:
        rows = await self._redis.zrangebyscore(
            SEEN, "-inf", f"({before!r}", start=0, num=limit, withscores=True
        )
        return [(_text(k), float(v)) for k, v in cast(list[tuple[bytes, float]], rows)]

    async def forget_seen(self, key: str, seen_at: float) -> None:
        await self._redis.eval(FORGET_IF, 1, SEEN, key, repr(seen_at))

    async def drop_if_stale(
        self, encounter: str, user: str, key: str, before: float, dropped_at: float
    ) -> ParticipantState | None:
        """Marks the participant dropped at `dropped_at` if they are still connected and their heartbeat is
        still older than `before`: read and write under WATCH, so a resume that lands in between (it
        heartbeats before it writes the participant) wins, and nothing else in the record is lost."""
        from redis.exceptions import WatchError

        async with self._redis.pipeline(transaction=True) as pipe:
            try:
                await pipe.watch(self._p(encounter))
                raw = await pipe.hget(self._p(encounter), user)
                seen_at = await pipe.zscore(SEEN, key)
                if raw is None or seen_at is None or float(seen_at) >= before:
                    return None
                me = ParticipantState(**json.loads(raw))
                if me.status != "connected":
                    return None
                dropped = replace(me, connection="", status="dropped", dropped_at=dropped_at)
                pipe.multi()
                pipe.hset(self._p(encounter), user, json.dumps(asdict(dropped)))
                await pipe.execute()
            except WatchError:
                return None  # the record changed meanwhile: the next sweep looks again
        return me

    async def watch_drop(self, key: str, due: float) -> None:
        await self._redis.zadd(DROPS, {key: due})

    async def due_drops(self, now: float, limit: int) -> list[tuple[str, float]]:
        rows = await self._redis.zrangebyscore(DROPS, "-inf", repr(now), start=0, num=limit, withscores=True)
        return [(_text(k), float(v)) for k, v in cast(list[tuple[bytes, float]], rows)]

    async def claim_drop(self, key: str, now: float, lease: float) -> bool:
        claimed = await self._redis.eval(CLAIM, 1, DROPS, key, repr(now), repr(now + lease))
        return bool(claimed)

    async def drop_done(self, key: str) -> None:
        await self._redis.zrem(DROPS, key)

    async def lock(self, name: str, holder: str, ttl: float) -> bool:
        return bool(await self._redis.set(name, holder, nx=True, px=max(1, int(ttl * 1000))))

    async def unlock(self, name: str, holder: str) -> None:
        await self._redis.eval(UNLOCK, 1, name, holder)


_store: MemoryStore | RedisStore | None = None


def get_store() -> MemoryStore | RedisStore:
    global _store
    if _store is None:
        _store = RedisStore(settings.REDIS_URL) if settings.REDIS_URL else MemoryStore()
    return _store


def reset_store() -> None:
    global _store
    _store = None
