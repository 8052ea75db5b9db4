"""A signalling socket's seat: the participant's participation in the encounter's call, as the database last
confirmed it, and how long that confirmation is trusted (video/PROTOCOL.md, "Participation").

Why: checking the participation against PostgreSQL on every relayed offer and candidate went through Channels'
one database thread per worker and capped the relay at about 170 messages a second. A relayed message is now
accepted on a confirmation at most `seat_check_seconds()` old (VIDEO_SEAT_CHECK_SECONDS, default 2), counted
from the moment that check began, so a participation revoked in the database (the encounter ended or cancelled,
the membership deactivated, the patient's record no longer theirs) relays nothing more once that bound has
passed. The check is renewed in the background once half the bound has passed, so a busy socket rarely waits
for it. The signalling server's own changes (the practitioner ends the visit, a grace period ends the visit)
invalidate every seat of the encounter through the channel layer (`invalidate`): the next message is checked
against the database. The channel layer may lose that notice; the bound still holds.

What the seat does not cache: admit, deny, end and leave are checked against the database every time.

The same check confirms the credential the socket was opened with (services.confirm_seat, tenancy.sockets'
credential_in_force): a bearer token revoked or expired, a portal session signed out or expired, a lockout, a
membership or user deactivated since the handshake end the socket within the same bound (SignedOut, answered
`not_authenticated`), whatever it is doing. The idle timeout is not applied to an open socket.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from channels.db import database_sync_to_async
from django.conf import settings

from . import services

logger = logging.getLogger(__name__)


def seat_check_seconds() -> float:
    return float(getattr(settings, "VIDEO_SEAT_CHECK_SECONDS", 2))


class Seat:
    """One connection's participation, confirmed by the database at `checked_at` (monotonic, when the check
    began). `revoked` once a check found none: every later `confirm` refuses; `on_revoked` is told when a
    background renewal is the one that found it."""

    def __init__(
        self,
        participant: services.Participant,
        encounter_id: str,
        participation: services.Participation,
        checked_at: float,
        on_revoked: Callable[[], Awaitable[None]],
    ) -> None:
        self.participant = participant
        self.encounter_id = encounter_id
        self.participation = participation
        self.checked_at = checked_at
        self.revoked = False
        self.signed_out = False  # revoked because the handshake's credential no longer holds
        self._on_revoked = on_revoked
        self._generation = 0  # bumped by invalidate: a check begun before it confirms nothing
        self._lock = asyncio.Lock()  # one check at a time per connection
        self._renewing: asyncio.Task | None = None

    def age(self) -> float:
        return time.monotonic() - self.checked_at

    async def confirm(self) -> services.Participation:
        """The participation, confirmed within the bound (waiting for the database only if it is older), or
        NotFound (SignedOut when the credential is what no longer holds)."""
        bound = seat_check_seconds()
        while not self.revoked and self.age() >= bound:
            await self._check(stale_after=bound)
        if self.revoked:
            raise services.SignedOut() if self.signed_out else services.NotFound()
        if self.age() >= bound / 2 and (self._renewing is None or self._renewing.done()):
            self._renewing = asyncio.get_running_loop().create_task(self._renew())
        return self.participation

    async def check_now(self) -> services.Participation:
        """The participation as the database says now (for the steps that change the visit), or NotFound."""
        self.invalidate()
        return await self.confirm()

    def invalidate(self) -> None:
        """The participation may have changed (a push through the channel layer): the next message waits for
        the database."""
        self._generation += 1
        self.checked_at = float("-inf")

    async def _renew(self) -> None:
        try:
            await self._check(stale_after=seat_check_seconds() / 2)
        except Exception:  # the database unreachable: the next message past the bound checks and fails loudly
            logger.warning(
                "video: could not renew the seat check of encounter %s", self.encounter_id, exc_info=True
            )
            return
        if self.revoked:
            await self._on_revoked()  # refused now rather than at the socket's next message

    async def _check(self, stale_after: float) -> None:
        async with self._lock:
            if self.revoked or self.age() < stale_after:
                return  # checked by whoever held the lock before
            generation, began = self._generation, time.monotonic()
            try:
                participation = await database_sync_to_async(services.confirm_seat)(
                    self.participant, self.encounter_id
                )
            except services.NotFound as refused:
                self.revoked = True
                self.signed_out = isinstance(refused, services.SignedOut)
            else:
                if generation == self._generation:
                    self.participation, self.checked_at = participation, began
