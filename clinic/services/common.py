"""What every clinic service shares: the audit hook, and the few rules and answers the aggregates have in
common.

Every read and write of health information is published as a typed event (tenancy.events) that the audit
app writes to its outbox in the same transaction:
- a read by the loader that fetched the row (`get_*_for_user`, which calls `record_phi_access`), or by the
  list's page loader for each row served (`record_page`);
- a write by `recorded_write`, around the save, with SHA-256 hashes of the record's state before and after.
"""

from __future__ import annotations

import hashlib
import json
import logging
import unicodedata
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from typing import Any

from django.db.models import Model
from django.utils import timezone

from tenancy.context import TenantContext, current
from tenancy.errors import ApiError, TenancyCode
from tenancy.events import Actor, PhiAccess, PhiPageRead, publish
from tenancy.models import Membership

from ..errors import ClinicCode
from ..models import Patient

logger = logging.getLogger("clinic.phi")


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


def _phi_fields(ctx: TenantContext | None) -> dict[str, Any]:
    """Who, for which organization and request, and for what purpose: read from the context once per event."""
    return {
        "org_id": str(ctx.org_id) if ctx and ctx.org_id else "",
        "actor": Actor.from_context(ctx),
        "request_id": ctx.request_id if ctx else "",
        "purpose": ctx.purpose if ctx else "",
    }


def _id(value: Any) -> str:
    return str(value) if value else ""


def record_phi_access(
    *,
    action: str,
    resource: str,
    resource_id: Any = None,
    patient_id: Any = None,
    before: str = "",
    after: str = "",
    outcome: str = "success",
    detail: dict | None = None,
) -> None:
    """Every read and write of health information passes here (or through record_phi_reads for a page):
    who (from the context), what, which patient, and for writes hashes of the state before and after.

    Published on the bus as a PhiAccess; the audit app writes it to the outbox in this transaction, and if it
    cannot, this raises and the access does not happen."""
    event = PhiAccess(
        **_phi_fields(current()),
        action=action,
        resource=resource,
        resource_id=_id(resource_id),
        patient_id=_id(patient_id),
        before=before,
        after=after,
        outcome=outcome,
        detail=detail or {},
    )
    publish(event)
    logger.debug(
        "phi_access action=%s resource=%s id=%s patient=%s user=%s role=%s purpose=%s request_id=%s",
        event.action,
        event.resource,
        event.resource_id,
        event.patient_id,
        event.actor.user or "",
        event.actor.role,
        event.purpose,
        event.request_id,
    )


def record_phi_reads(*, resource: str, rows: list[tuple[Any, Any]], via: str = "list") -> None:
    """A page of reads, recorded as one event per (resource id, patient id) in a single outbox write."""
    if rows:
        publish(
            PhiPageRead(
                **_phi_fields(current()),
                resource=resource,
                rows=tuple((_id(rid), _id(pid)) for rid, pid in rows),
                via=via,
            )
        )


def patient_of(row: Model) -> Any:
    """The patient a clinic row is about: a patient is its own."""
    return row.pk if isinstance(row, Patient) else row.patient_id  # type: ignore[attr-defined]


def load_for_user(queryset: Any, *, resource: str, record: bool) -> Any:
    """The one row `queryset` finds under the caller's row policies, else 404 (whether it does not exist or is
    outside the caller's reach), recorded as a read of `resource` unless the caller's own event records it.
    Every `get_*_for_user` loader of the clinic is this call."""
    row = queryset.first()
    if row is None:
        raise _not_found()
    if record:
        record_phi_access(action="read", resource=resource, resource_id=row.pk, patient_id=patient_of(row))
    return row


def record_page(rows: Sequence[Model], *, resource: str) -> None:
    """The rows of a page about to be served, recorded as reads (one outbox write for the page). The list
    endpoints' one loader (clinic.views.paginate) calls it with every page it loads."""
    record_phi_reads(resource=resource, rows=[(row.pk, patient_of(row)) for row in rows])


@contextmanager
def recorded_write(
    obj: Model, *, resource: str, action: str | None = None, detail: dict | None = None
) -> Iterator[None]:
    """Record the write made inside the block: the record's state hash before (none for a new record), the
    block (which saves it), the state hash after, and one PhiAccess with both.

        with recorded_write(note, resource="ClinicalNote"):
            note.body = body
            note.save(update_fields=["body"])

    `action` defaults to "create" for a record not yet saved and "update" otherwise. Nothing is recorded if
    the block raises: the transaction is lost with it."""
    new = obj._state.adding
    before = "" if new else state_hash(obj)
    yield
    record_phi_access(
        action=action or ("create" if new else "update"),
        resource=resource,
        resource_id=obj.pk,
        patient_id=patient_of(obj),
        before=before,
        after=state_hash(obj),
        detail=detail,
    )


def visible_length(text: str) -> int:
    """Characters a reader sees: not spaces, separators, controls or invisible format characters (zero-width
    spaces and joiners, direction marks), which would otherwise fill a required explanation with nothing."""
    return sum(1 for ch in unicodedata.normalize("NFKC", text) if unicodedata.category(ch)[0] not in "ZC")


def _not_found() -> ApiError:
    return ApiError(TenancyCode.NOT_FOUND, "Not found.")


def _now() -> datetime:
    return timezone.now()


def get_member_for_user(membership_id: uuid.UUID, role: str | None = None) -> Membership:
    query = Membership.objects.filter(pk=membership_id, is_active=True).defer("email", "display_name")
    if role:
        query = query.filter(role=role)
    member = query.first()
    if member is None:
        raise ApiError(
            TenancyCode.NOT_FOUND,
            "No such member in this organization.",
            fields={"practitioner": ["Not found."]},
        )
    return member


def require_purpose(*allowed: str) -> None:
    ctx = current()
    if ctx is None or ctx.purpose not in allowed:
        raise ApiError(
            TenancyCode.PURPOSE_NOT_PERMITTED,
            f"This action needs purpose of use {' or '.join(allowed)} (X-Purpose-Of-Use).",
        )


def _check_period_end(until: datetime | None, now: datetime) -> None:
    """A period starts now, so its end is later than now (the database also refuses an end before a start)."""
    if until is not None and until <= now:
        raise ApiError(
            ClinicCode.INVALID_PERIOD,
            "The end of the period must be in the future.",
            fields={"until": ["Must be later than now."]},
        )
