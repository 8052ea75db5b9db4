"""A tiny in-process publish/subscribe for events other apps record.

tenancy and clinic publish what happened (sign-ins, key operations, health-information access); the audit
app subscribes when it is installed. Publishers never import audit, so the dependency stays one-way.
A subscriber that raises makes the publisher's operation fail: an access that cannot be recorded does not
happen (the audit app turns that into a 503).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable

Listener = Callable[[dict], None]
_listeners: dict[str, list[Listener]] = defaultdict(list)


def subscribe(kind: str, listener: Listener) -> None:
    if listener not in _listeners[kind]:
        _listeners[kind].append(listener)


def unsubscribe(kind: str, listener: Listener) -> None:
    if listener in _listeners[kind]:
        _listeners[kind].remove(listener)


def publish(kind: str, event: dict) -> None:
    for listener in list(_listeners[kind]):
        listener(event)
