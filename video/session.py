"""Signalling session state: who is in which encounter, resume tokens, and each participant's message stream.

Every message the server sends a participant is appended to that participant's stream with the next sequence
number, so a client that reconnects gets exactly what it missed, on any worker. With REDIS_URL the state
lives in Redis (several workers); without it, in this process's memory (one worker).
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from dataclasses import asdict, dataclass

from django.conf import settings

STREAM_KEEP = 500  # messages kept per participant for replay


@dataclass
class Participant:
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

    async def get_participants(self, encounter: str) -> dict[str, Participant]:
        return {u: Participant(**p) for u, p in self._participants.get(encounter, {}).items()}

    async def put_participant(self, encounter: str, participant: Participant) -> None:
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

    async def redeem_token(self, token: str) -> dict | None:
        """Single use: a token presented once is gone, whether or not it was accepted."""
        entry = self._tokens.pop(token, None)
        if entry is None or entry[1] < time.time():
            return None
        return entry[0]

    async def revoke_tokens(self, encounter: str, user: str) -> None:
        for token, (claims, _) in list(self._tokens.items()):
            if claims.get("encounter") == encounter and claims.get("user") == user:
                self._tokens.pop(token, None)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


class RedisStore:
    def __init__(self, url: str) -> None:
        import redis.asyncio as redis

        self._redis = redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2)

    @staticmethod
    def _p(encounter: str) -> str:
        return f"video:participants:{encounter}"

    async def get_participants(self, encounter: str) -> dict[str, Participant]:
        raw = await self._redis.hgetall(self._p(encounter))  # type: ignore[misc]  # redis stubs: sync|async
        return {_text(k): Participant(**json.loads(v)) for k, v in raw.items()}

    async def put_participant(self, encounter: str, participant: Participant) -> None:
        await self._redis.hset(self._p(encounter), participant.user_id, json.dumps(asdict(participant)))
        await self._redis.expire(self._p(encounter), 86400)

    async def append(self, encounter: str, user: str, message: dict) -> int:
        seq = await self._redis.incr(f"video:seq:{encounter}:{user}")
        key = f"video:stream:{encounter}:{user}"
        await self._redis.zadd(key, {json.dumps({**message, "seq": seq}): seq})
        await self._redis.zremrangebyrank(key, 0, -STREAM_KEEP - 1)
        await self._redis.expire(key, 86400)
        return int(seq)

    async def last_seq(self, encounter: str, user: str) -> int:
        value = await self._redis.get(f"video:seq:{encounter}:{user}")
        return int(value) if value else 0

    async def since(self, encounter: str, user: str, after: int) -> list[dict] | None:
        key = f"video:stream:{encounter}:{user}"
        first = await self._redis.zrange(key, 0, 0, withscores=True)
        if first and after < int(first[0][1]) - 1:
            return None
        messages = await self._redis.zrangebyscore(key, after + 1, "+inf")
        return [json.loads(m) for m in messages]  # type: ignore[arg-type]  # members are JSON bytes

    async def issue_token(self, claims: dict, ttl: float) -> str:
        token = secrets.token_urlsafe(32)
        await self._redis.set(f"video:token:{token}", json.dumps(claims), ex=max(1, int(ttl)))
        return token

    async def redeem_token(self, token: str) -> dict | None:
        raw = await self._redis.getdel(f"video:token:{token}")
        return json.loads(raw) if raw else None

    async def revoke_tokens(self, encounter: str, user: str) -> None:
        async for key in self._redis.scan_iter(match="video:token:*", count=500):
            raw = await self._redis.get(key)
            if raw:
                claims = json.loads(raw)
                if claims.get("encounter") == encounter and claims.get("user") == user:
                    await self._redis.delete(key)


_store: MemoryStore | RedisStore | None = None


def get_store() -> MemoryStore | RedisStore:
    global _store
    if _store is None:
        _store = RedisStore(settings.REDIS_URL) if settings.REDIS_URL else MemoryStore()
    return _store


def reset_store() -> None:
    global _store
    _store = None
