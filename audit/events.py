"""What the audit app records, and how: one path from a published event to its outbox row.

1. Other apps (and this one) publish typed events on the bus (`tenancy.events`: PhiAccess, PhiPageRead,
   Authentication, KeyOperation, Administration), each with its actor built once from the tenant context.
2. `connect()`, called once from AuditConfig.ready, subscribes `record` to every one of those classes. This
   is the only subscription the audit app makes.
3. `entries()` turns each event into its log entries (`AuditEvent`: the shape audit/FORMAT.md describes). It
   is the one place that knows how an event of each class is written down.
4. `emit_many()` writes them to the outbox in the caller's transaction: they commit with the access they
   record, or neither happens. For reads, the request's transaction (ATOMIC_REQUESTS) commits before the
   response leaves the server, so the record exists before the health information is sent. If the outbox
   cannot be written, the caller gets ServiceUnavailable (503) and its transaction is lost.

The shipper (audit/shipper.py) later moves outbox rows to the signed log in the audit database.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from django.db import DatabaseError, InterfaceError, OperationalError, connections

from tenancy import events as bus
from tenancy.context import current, tenant_context
from tenancy.errors import ServiceUnavailable, unavailable_if_refused
from tenancy.events import Actor


@dataclass(frozen=True, kw_only=True)
class AuditEvent:
    """One log entry, before the shipper numbers it. Its payload is the exported format: change it and every
    existing export, the FHIR mapping (audit/fhir.py) and the verifier must follow."""

    org_id: str
    actor: Actor
    action: str
    outcome: str
    purpose: str
    request_id: str
    resource_type: str
    resource_id: str = ""
    patient_id: str | None = None
    before: str = ""
    after: str = ""
    detail: dict = field(default_factory=dict)
    event_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    time: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="microseconds"))

    def payload(self) -> dict[str, Any]:
        """The entry as the log will hold it (the shipper adds `v`, `seq` and `org`)."""
        return {
            "event_id": self.event_id,
            "time": self.time,
            "action": self.action,
            "outcome": self.outcome,
            "actor": asdict(self.actor),
            "purpose": self.purpose,
            "patient": self.patient_id,
            "resource": {"type": self.resource_type, "id": self.resource_id},
            "request_id": self.request_id,
            "before": self.before,
            "after": self.after,
            "detail": self.detail,
        }


# -- from a published event to its entries ---------------------------------------------------------------


def _entry(event: bus.Event, **fields: Any) -> AuditEvent:
    """An entry of `event`: its organization, actor and request, and what `fields` say."""
    return AuditEvent(org_id=event.org_id, actor=event.actor, request_id=event.request_id, **fields)


def entries(event: bus.Event) -> list[AuditEvent]:
    """The log entries an event becomes: one, a page's worth (PhiPageRead), or none (no organization)."""
    match event:
        case bus.PhiAccess():
            return [
                _entry(
                    event,
                    action=event.action,
                    outcome=event.outcome,
                    purpose=event.purpose,
                    resource_type=event.resource,
                    resource_id=event.resource_id,
                    patient_id=event.patient_id or None,
                    before=event.before,
                    after=event.after,
                    detail=event.detail,
                )
            ]
        case bus.PhiPageRead():
            return [
                _entry(
                    event,
                    action="read",
                    outcome="success",
                    purpose=event.purpose,
                    resource_type=event.resource,
                    resource_id=resource_id,
                    patient_id=patient_id or None,
                    detail={"via": event.via},
                )
                for resource_id, patient_id in event.rows
            ]
        case bus.Authentication():
            if not event.org_id:
                return []  # a sign-in at no organization's host: there is no log to write it in
            return [
                _entry(
                    event,
                    action=event.kind,
                    outcome=event.outcome,
                    purpose="operations",
                    resource_type="Session",
                    detail={"reason": event.reason, "email_sha256": event.email_hash},
                )
            ]
        case bus.KeyOperation():
            return [
                _entry(
                    event,
                    action=event.operation,
                    outcome="success",
                    purpose="operations",
                    resource_type="Key",
                    detail={"key_ids": list(event.key_ids), **event.detail},
                )
            ]
        case bus.Administration():
            return [
                _entry(
                    event,
                    action=event.action,
                    outcome="success",
                    purpose="operations",
                    resource_type=event.resource_type,
                    resource_id=event.resource_id,
                    detail=event.detail,
                )
            ]
    raise TypeError(f"the audit log does not know how to record {type(event).__name__}")


RECORDED: tuple[type[bus.Event], ...] = (
    bus.PhiAccess,
    bus.PhiPageRead,
    bus.Authentication,
    bus.KeyOperation,
    bus.Administration,
)


def record(event: bus.Event) -> None:
    """The bus's subscriber: write the event's entries to the outbox, in one INSERT."""
    emit_many(entries(event))


def connect() -> None:
    """Subscribe `record` to every event class the audit log records (called once, from AuditConfig.ready).

    Also: a write the database refuses on the outbox answers 503 like a failed `emit_many`, not 403. The
    backstop triggers (audit/rls.py) write the outbox inside any change to a health-information table, so
    there the refusal surfaces from the change itself, before the service records it."""
    for kind in RECORDED:
        bus.subscribe(kind, record)
    unavailable_if_refused("audit_outboxevent", "audit", UNRECORDABLE)


# -- the outbox ------------------------------------------------------------------------------------------

UNRECORDABLE = "The audit log cannot record this access; try again shortly."


def _insert(batch: list[AuditEvent]) -> None:
    # One plain INSERT for the whole batch, without RETURNING: the outbox's SELECT rule admits only the
    # shipper, and RETURNING would have to pass it. created_xid and created_at come from the column defaults.
    rows = ", ".join(["(%s, %s, %s)"] * len(batch))
    params: list = []
    for event in batch:
        params += [event.event_id, event.org_id, json.dumps(event.payload())]
    with connections["default"].cursor() as cursor:
        cursor.execute(f"INSERT INTO audit_outboxevent (id, org_id, payload) VALUES {rows}", params)


def emit_many(batch: list[AuditEvent]) -> None:
    """Write entries to the outbox in the current transaction (or in their own, under their org).

    No savepoint: if the insert fails, the request's transaction is lost with it, which is the point (an
    access that cannot be recorded does not happen) and saves two round trips per event.
    """
    if not batch:
        return
    ctx = current()
    org_ids = {event.org_id for event in batch}
    try:
        if ctx is not None and connections["default"].in_atomic_block and org_ids == {str(ctx.org_id)}:
            _insert(batch)
            return
        for org_id in org_ids:
            # Outside a request (a command, a key operation): record them in a transaction of their own.
            with tenant_context(org_id=uuid.UUID(org_id), role="platform", request_id=batch[0].request_id):
                _insert([event for event in batch if event.org_id == org_id])
    except (OperationalError, InterfaceError):
        raise  # the database itself is unreachable: an outage (503 database_unavailable), not the outbox's fault
    except DatabaseError as exc:
        raise ServiceUnavailable("audit", UNRECORDABLE) from exc
