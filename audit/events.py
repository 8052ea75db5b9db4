"""Audit events: one keyword-only constructor per kind, so no caller can leave out the actor.

`emit()` writes the event to the outbox in the caller's transaction: it commits with the access it records,
or neither happens. For reads, the request's transaction (ATOMIC_REQUESTS) commits before the response
leaves the server, so the record exists before the health information is sent. The shipper
(audit/shipper.py) moves outbox rows to the signed log in the audit database.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from django.db import DatabaseError, InterfaceError, OperationalError, connections

from tenancy.context import current, tenant_context
from tenancy.errors import ServiceUnavailable


@dataclass(frozen=True, kw_only=True)
class Actor:
    user: str | None
    role: str
    session: str = ""
    ip: str | None = None


def actor_from_context() -> Actor:
    ctx = current()
    if ctx is None:
        return Actor(user=None, role="system")
    return Actor(
        user=str(ctx.user_id) if ctx.user_id else None, role=ctx.role, session=ctx.session, ip=ctx.source_ip
    )


@dataclass(frozen=True, kw_only=True)
class AuditEvent:
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


def _str(value: Any) -> str:
    return "" if value is None else str(value)


def health_information_access(
    *,
    actor: Actor,
    org_id: Any,
    action: str,
    resource_type: str,
    resource_id: Any,
    patient_id: Any,
    purpose: str,
    request_id: str,
    before: str = "",
    after: str = "",
    outcome: str = "success",
    detail: dict | None = None,
) -> AuditEvent:
    """A read, search, report, write or break-glass step on health information."""
    return AuditEvent(
        org_id=_str(org_id),
        actor=actor,
        action=action,
        outcome=outcome,
        purpose=purpose,
        request_id=request_id,
        resource_type=resource_type,
        resource_id=_str(resource_id),
        patient_id=_str(patient_id) or None,
        before=before,
        after=after,
        detail=detail or {},
    )


def sign_in_event(
    *,
    actor: Actor,
    org_id: Any,
    kind: str,
    outcome: str,
    request_id: str,
    reason: str = "",
    email_hash: str = "",
) -> AuditEvent:
    """Sign-in success or failure, lockout, MFA step, sign-out."""
    return AuditEvent(
        org_id=_str(org_id),
        actor=actor,
        action=kind,
        outcome=outcome,
        purpose="operations",
        request_id=request_id,
        resource_type="Session",
        detail={"reason": reason, "email_sha256": email_hash},
    )


def key_operation(
    *,
    actor: Actor,
    org_id: Any,
    operation: str,
    request_id: str,
    key_ids: list[str] | None = None,
    detail: dict | None = None,
) -> AuditEvent:
    """Data key unwrap or generation, rotation, re-encryption, shredding."""
    return AuditEvent(
        org_id=_str(org_id),
        actor=actor,
        action=operation,
        outcome="success",
        purpose="operations",
        request_id=request_id,
        resource_type="Key",
        detail={"key_ids": key_ids or [], **(detail or {})},
    )


def administration_event(
    *,
    actor: Actor,
    org_id: Any,
    action: str,
    resource_type: str,
    resource_id: Any,
    request_id: str,
    before: str = "",
    after: str = "",
    detail: dict | None = None,
) -> AuditEvent:
    """Membership and role changes, settings changes."""
    return AuditEvent(
        org_id=_str(org_id),
        actor=actor,
        action=action,
        outcome="success",
        purpose="operations",
        request_id=request_id,
        resource_type=resource_type,
        resource_id=_str(resource_id),
        before=before,
        after=after,
        detail=detail or {},
    )


def video_event(
    *,
    actor: Actor,
    org_id: Any,
    action: str,
    encounter_id: Any,
    patient_id: Any,
    request_id: str,
    outcome: str = "success",
    detail: dict | None = None,
) -> AuditEvent:
    """Video session joins, leaves, interruptions and refusals."""
    return AuditEvent(
        org_id=_str(org_id),
        actor=actor,
        action=action,
        outcome=outcome,
        purpose="treatment",
        request_id=request_id,
        resource_type="Encounter",
        resource_id=_str(encounter_id),
        patient_id=_str(patient_id) or None,
        detail=detail or {},
    )


def audit_export_event(*, actor: Actor, org_id: Any, request_id: str, detail: dict) -> AuditEvent:
    """Every export of the audit trail is itself recorded."""
    return AuditEvent(
        org_id=_str(org_id),
        actor=actor,
        action="audit_export",
        outcome="success",
        purpose="audit",
        request_id=request_id,
        resource_type="AuditLog",
        detail=detail,
    )


def _insert(batch: list[AuditEvent]) -> None:
    # One plain INSERT for the whole batch, without RETURNING: the outbox's SELECT rule admits only the
    # shipper, and RETURNING would have to pass it. created_xid and created_at come from the column defaults.
    rows = ", ".join(["(%s, %s, %s)"] * len(batch))
    params: list = []
    for event in batch:
        params += [event.event_id, event.org_id, json.dumps(event.payload())]
    with connections["default"].cursor() as cursor:
        cursor.execute(f"INSERT INTO audit_outboxevent (id, org_id, payload) VALUES {rows}", params)


def emit(event: AuditEvent) -> None:
    emit_many([event])


def emit_many(batch: list[AuditEvent]) -> None:
    """Write events to the outbox in the current transaction (or in their own, under their org).

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
        raise ServiceUnavailable(
            "audit", "The audit log cannot record this access; try again shortly."
        ) from exc
