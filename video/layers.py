"""The in-memory channel layer of a worker without REDIS_URL (config/settings.py, CHANNEL_LAYERS).

Why: Channels' InMemoryChannelLayer runs `_clean_expired` on every `receive` and every `group_send`, and that
walks every channel and every group membership of the process. A signalling socket holds a channel and two
groups, so with 2,000 idle sockets every relayed message paid for two walks over some 6,000 entries: py-spy
put it at about 42 % of the event loop and the relay at ~160 messages a second (issue 13).

Here the same cleanup happens, on the same rules, without the walk on every call:

- `receive` drops its own channel's expired messages before it waits (and, as Channels does, takes a channel
  with an expired message out of every group), so a receiver never gets a message older than `expiry`;
- the walk over every other channel and every group runs at most once every `clean_interval` seconds (1 s):
  an expired message nobody receives, or a group membership past `group_expiry` (a day), goes at most that
  much later than under Channels' layer;
- `group_send` puts the message on each member's channel directly (a full channel is skipped, as Channels
  does) instead of one task per member.

Nothing else differs: per-channel capacity, the message copied on send, FIFO per channel, `flush`.
"""

from __future__ import annotations

import contextlib
import time

from channels.exceptions import ChannelFull
from channels.layers import InMemoryChannelLayer


class AmortizedInMemoryChannelLayer(InMemoryChannelLayer):
    def __init__(self, *args, clean_interval: float = 1.0, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.clean_interval = clean_interval
        self._next_clean = 0.0  # monotonic: the next walk over every channel and group

    def _clean_expired(self) -> None:
        now = time.monotonic()
        if now < self._next_clean:
            return
        self._next_clean = now + self.clean_interval
        super()._clean_expired()

    def _clean_channel(self, channel: str) -> None:
        """This channel's expired messages, on Channels' rule: each one also takes the channel out of every
        group, and an emptied channel is forgotten."""
        queue = self.channels.get(channel)
        if queue is None:
            return
        while not queue.empty() and queue._queue[0][0] < time.time():  # type: ignore[attr-defined]
            queue.get_nowait()
            self._remove_from_groups(channel)
            if queue.empty():
                self.channels.pop(channel, None)

    async def receive(self, channel):
        self._clean_channel(channel)
        return await super().receive(channel)

    async def group_send(self, group, message):
        assert isinstance(message, dict), "Message is not a dict"
        self.require_valid_group_name(group)
        self._clean_expired()
        for channel in list(self.groups.get(group, {})):
            with contextlib.suppress(ChannelFull):  # a full channel misses it, as under Channels' layer
                await self.send(channel, message)
