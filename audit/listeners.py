"""What the audit app records of what tenancy and clinic publish (tenancy.events)."""

from __future__ import annotations

from tenancy import events as bus
from tenancy.context import current

from . import events


def _request_id(event: dict) -> str:
    ctx = current()
    return event.get("request_id") or (ctx.request_id if ctx else "")


def _phi_event(event: dict, actor: events.Actor) -> events.AuditEvent:
    return events.health_information_access(
        actor=actor,
        org_id=event["org_id"],
        action=event["action"],
        resource_type=event["resource"],
        resource_id=event["resource_id"],
        patient_id=event["patient_id"],
        purpose=event["purpose"],
        request_id=_request_id(event),
        before=event["before"],
        after=event["after"],
        outcome=event["outcome"],
        detail=event["detail"],
    )


def on_phi(event: dict) -> None:
    events.emit(_phi_event(event, events.actor_from_context()))


def on_phi_many(batch: dict) -> None:
    """A page of reads: one outbox INSERT for all of them."""
    actor = events.actor_from_context()
    events.emit_many([_phi_event(event, actor) for event in batch["events"]])


def on_auth(event: dict) -> None:
    if not event.get("org_id"):
        return
    actor = events.actor_from_context()
    if event.get("user_id"):
        actor = events.Actor(
            user=str(event["user_id"]),
            role=actor.role,
            session=actor.session,
            ip=event.get("source_ip") or actor.ip,
        )
    events.emit(
        events.sign_in_event(
            actor=actor,
            org_id=event["org_id"],
            kind=event["kind"],
            outcome=event["outcome"],
            request_id=_request_id(event),
            reason=event.get("reason", ""),
            email_hash=event.get("email_hash", ""),
        )
    )


def on_key(event: dict) -> None:
    events.emit(
        events.key_operation(
            actor=events.actor_from_context(),
            org_id=event["org_id"],
            operation=event["operation"],
            request_id=_request_id(event),
            key_ids=[str(k) for k in event.get("key_ids", [])],
            detail=event.get("detail"),
        )
    )


def on_admin(event: dict) -> None:
    events.emit(
        events.administration_event(
            actor=events.actor_from_context(),
            org_id=event["org_id"],
            action=event["action"],
            resource_type=event["resource_type"],
            resource_id=event["resource_id"],
            request_id=_request_id(event),
            before=event.get("before", ""),
            after=event.get("after", ""),
            detail=event.get("detail"),
        )
    )


def connect() -> None:
    bus.subscribe("phi", on_phi)
    bus.subscribe("phi_many", on_phi_many)
    bus.subscribe("auth", on_auth)
    bus.subscribe("key", on_key)
    bus.subscribe("admin", on_admin)
