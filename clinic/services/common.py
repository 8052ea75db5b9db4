"""What every clinic service shares: the audit hook (every read and write of health information passes
through `record_phi_access`, or `record_phi_reads` for a page), state hashes for writes, and the few rules and
answers the aggregates have in common."""

from __future__ import annotations

import hashlib
import json
import logging
import unicodedata
import uuid
from datetime import datetime
from typing import Any

from django.utils import timezone

from tenancy import events
from tenancy.context import current
from tenancy.errors import ApiError
from tenancy.models import Membership

logger = logging.getLogger("clinic.phi")


def on_phi_access(listener) -> None:
    """Subscribe to health-information access events (the audit app does; clinic never imports audit)."""
    events.subscribe("phi", listener)


def state_hash(obj: Any) -> str:
    """SHA-256 of a record's state, for before/after hashes of writes (the values themselves stay out)."""
    if obj is None:
        return ""
    if hasattr(obj, "_meta"):
        data = {}
        for field in obj._meta.concrete_fields:
            value = (
                getattr(obj, field.attname)
                if not getattr(field, "encrypted", False)
                else getattr(obj, field.name)
            )
            data[field.attname] = value
        obj = data
    encoded = json.dumps(obj, sort_keys=True, default=str).encode()
    return hashlib.sha256(encoded).hexdigest()


def _phi_event(
    *,
    action: str,
    resource: str,
    resource_id: Any = None,
    patient_id: Any = None,
    before: str = "",
    after: str = "",
    outcome: str = "success",
    detail: dict | None = None,
) -> dict:
    ctx = current()
    return {
        "action": action,
        "resource": resource,
        "resource_id": str(resource_id) if resource_id else "",
        "patient_id": str(patient_id) if patient_id else "",
        "org_id": str(ctx.org_id) if ctx and ctx.org_id else "",
        "user_id": str(ctx.user_id) if ctx and ctx.user_id else "",
        "role": ctx.role if ctx else "",
        "purpose": ctx.purpose if ctx else "",
        "request_id": ctx.request_id if ctx else "",
        "before": before,
        "after": after,
        "outcome": outcome,
        "detail": detail or {},
    }


def record_phi_access(**kwargs) -> None:
    """Every read and write of health information passes here (or through record_phi_reads for a page):
    who (from the context), what, which patient, and for writes hashes of the state before and after."""
    event = _phi_event(**kwargs)
    events.publish("phi", event)
    logger.debug(
        "phi_access action=%s resource=%s id=%s patient=%s user=%s role=%s purpose=%s request_id=%s",
        event["action"],
        event["resource"],
        event["resource_id"],
        event["patient_id"],
        event["user_id"],
        event["role"],
        event["purpose"],
        event["request_id"],
    )


def record_phi_reads(*, resource: str, rows: list[tuple[Any, Any]], via: str = "list") -> None:
    """A page of reads, recorded as one event per (resource id, patient id) in a single outbox write."""
    batch = [
        _phi_event(action="read", resource=resource, resource_id=rid, patient_id=pid, detail={"via": via})
        for rid, pid in rows
    ]
    if batch:
        events.publish("phi_many", {"events": batch})


def visible_length(text: str) -> int:
    """Characters a reader sees: not spaces, separators, controls or invisible format characters (zero-width
    spaces and joiners, direction marks), which would otherwise fill a required explanation with nothing."""
    return sum(1 for ch in unicodedata.normalize("NFKC", text) if unicodedata.category(ch)[0] not in "ZC")


def _not_found() -> ApiError:
    return ApiError("not_found", "Not found.", 404)


def _now() -> datetime:
    return timezone.now()


def get_member_for_user(membership_id: uuid.UUID, role: str | None = None) -> Membership:
    query = Membership.objects.filter(pk=membership_id, is_active=True).defer("email", "display_name")
    if role:
        query = query.filter(role=role)
    member = query.first()
    if member is None:
        raise ApiError(
            "not_found", "No such member in this organization.", 404, {"practitioner": ["Not found."]}
        )
    return member


def require_purpose(*allowed: str) -> None:
    ctx = current()
    if ctx is None or ctx.purpose not in allowed:
        raise ApiError(
            "purpose_not_permitted",
            f"This action needs purpose of use {' or '.join(allowed)} (X-Purpose-Of-Use).",
            403,
        )


def _check_period_end(until: datetime | None, now: datetime) -> None:
    """A period starts now, so its end is later than now (the database also refuses an end before a start)."""
    if until is not None and until <= now:
        raise ApiError(
            "invalid_period",
            "The end of the period must be in the future.",
            400,
            {"until": ["Must be later than now."]},
        )
