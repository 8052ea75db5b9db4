"""What happened, as typed events on a tiny in-process bus: the facts other apps record.

tenancy, clinic and video publish what happened: a sign-in step (`Authentication`), a key operation
(`KeyOperation`), an administrative change (`Administration`), an access to health information
(`PhiAccess`, or `PhiPageRead` for a page of rows). Each event is a frozen, keyword-only dataclass that says
who acted (`Actor`, built once from the tenant context by `Actor.from_context()`), for which organization
and request. The audit app subscribes to every class (`audit.events.connect()`, called from its
AppConfig.ready) and turns each event into its outbox entry in the publisher's transaction.

The events live here, in the bottom layer, so that publishers never import audit: the dependency stays
one-way. The bus dispatches by the event's exact class.

A subscriber that raises makes the publisher's operation fail: an access that cannot be recorded does not
happen (the audit app raises ServiceUnavailable, which the API answers with 503).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from .context import TenantContext, current

# -- who acted -------------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class Actor:
    """The person (or system) behind an event. Its fields, in this order, are the log entry's `actor`."""

    user: str | None
    role: str
    session: str = ""
    ip: str | None = None

    @classmethod
    def from_context(cls, ctx: TenantContext | None = None) -> Actor:
        """The actor of the current tenant context (or of `ctx`); outside any context, the system."""
        ctx = ctx if ctx is not None else current()
        if ctx is None:
            return cls(user=None, role="system")
        return cls(
            user=str(ctx.user_id) if ctx.user_id else None,
            role=ctx.role,
            session=ctx.session,
            ip=ctx.source_ip,
        )


def context_request_id() -> str:
    """The current request's id, for publishers that were not handed one."""
    ctx = current()
    return ctx.request_id if ctx else ""


# -- the events ------------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class Event:
    """What every event says: for which organization (its log), who, and in which request."""

    org_id: str  # "" when there is no organization (an unknown host): nothing to record it in
    actor: Actor
    request_id: str


@dataclass(frozen=True, kw_only=True)
class PhiAccess(Event):
    """One read, search, report, write or break-glass step on health information. Writes carry SHA-256
    hashes of the record's state before and after (never the values)."""

    purpose: str
    action: str
    resource: str
    resource_id: str = ""
    patient_id: str = ""
    before: str = ""
    after: str = ""
    outcome: str = "success"
    detail: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, kw_only=True)
class PhiPageRead(Event):
    """A page of rows served at once: one read per (resource id, patient id), recorded in one outbox write."""

    purpose: str
    resource: str
    rows: tuple[tuple[str, str], ...]
    via: str = "list"


@dataclass(frozen=True, kw_only=True)
class Authentication(Event):
    """A sign-in success or failure, lockout, MFA step, invitation or sign-out (`kind`)."""

    kind: str
    outcome: str
    reason: str = ""
    email_hash: str = ""  # a truncated SHA-256: a failure for an unknown address keeps the address out


@dataclass(frozen=True, kw_only=True)
class KeyOperation(Event):
    """A data key unwrapped or generated, a key rotation, a re-encryption, a crypto-shred."""

    operation: str
    key_ids: tuple[str, ...] = ()
    detail: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, kw_only=True)
class Administration(Event):
    """A membership, invitation or role change."""

    action: str
    resource_type: str
    resource_id: str
    detail: dict[str, Any] = field(default_factory=dict)


# -- the bus ---------------------------------------------------------------------------------------------

E = TypeVar("E", bound=Event)
_listeners: defaultdict[type[Event], list[Callable[[Any], None]]] = defaultdict(list)


def subscribe(kind: type[E], listener: Callable[[E], None]) -> None:
    """Call `listener` with every event of class `kind` (exactly that class), in the publisher's thread."""
    if listener not in _listeners[kind]:
        _listeners[kind].append(listener)


def unsubscribe(kind: type[E], listener: Callable[[E], None]) -> None:
    if listener in _listeners[kind]:
        _listeners[kind].remove(listener)


def publish(event: Event) -> None:
    """Hand the event to its class's subscribers, in order. An exception propagates to the publisher."""
    for listener in list(_listeners[type(event)]):
        listener(event)
