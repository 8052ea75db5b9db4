"""A participant's stream never skips a message, with many writers at once (several workers relaying to the same
participant) and a reader flushing while they write: what the clinic-day load test caught losing an offer or an
answer about once in ten minutes when numbering and storing were two round trips to Redis."""

from __future__ import annotations

import asyncio
import uuid

from tests.video.test_two_workers import redis_url  # noqa: F401  (the fixture)
from video.session import MemoryStore, RedisStore


async def race(stores, writers: int = 8, each: int = 60) -> tuple[list[int], int]:
    encounter, user = str(uuid.uuid4()), str(uuid.uuid4())
    reader = stores[0]
    done = asyncio.Event()
    seen: list[int] = []

    async def write(store, index: int) -> None:
        for n in range(each):
            await store.append(encounter, user, {"type": "candidate", "candidate": f"{index}-{n}"})
            await asyncio.sleep(0)

    async def read() -> None:
        sent = 0
        while True:
            finished = done.is_set()
            for message in await reader.since(encounter, user, sent) or []:
                seen.append(message["seq"])
                sent = message["seq"]  # what the consumer does: move past what it delivered
            if finished:
                return
            await asyncio.sleep(0)

    reading = asyncio.create_task(read())
    await asyncio.gather(*(write(stores[i % len(stores)], i) for i in range(writers)))
    done.set()
    await reading
    return seen, writers * each


def test_a_reader_flushing_during_concurrent_appends_through_redis_misses_nothing(redis_url):  # noqa: F811
    async def scenario():
        # Separate clients, like separate workers: their round trips interleave on the server.
        stores = [RedisStore(redis_url) for _ in range(4)]
        return await race(stores)

    seen, total = asyncio.run(scenario())
    assert seen == list(range(1, total + 1))


def test_the_in_memory_store_misses_nothing_either():
    seen, total = asyncio.run(race([MemoryStore()]))
    assert seen == list(range(1, total + 1))
