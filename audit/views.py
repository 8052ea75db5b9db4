"""The audit trail over HTTP: auditors search their organization's log and fetch checkpoints; a patient gets
the list of who accessed their record (the accounting of disclosures)."""

from __future__ import annotations

import json
import uuid

from django.utils.dateparse import parse_datetime
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework.request import Request
from rest_framework.response import Response

from tenancy.api import PURPOSE_HEADER, TenantAPIView, request_org, request_user, uuid_param
from tenancy.errors import ApiError
from tenancy.models import Role
from tenancy.permissions import HasRole

from . import events, store

PAGE = 100


class Auditors(HasRole):
    roles = (Role.AUDITOR,)


class Patients(HasRole):
    roles = (Role.PATIENT,)


def _int(request: Request, name: str, default: int) -> int:
    raw = request.query_params.get(name)
    if raw in (None, ""):
        return default
    # isascii: str.isdigit() is also true for "²" and other digits int() refuses, which made a 500.
    if not (raw.isascii() and raw.isdigit()) or len(raw) > 15:
        raise ApiError(
            "invalid_request",
            f"{name} must be a non-negative integer.",
            400,
            {name: ["Must be a non-negative integer."]},
        )
    return int(raw)


def _time(request: Request, name: str):
    raw = request.query_params.get(name)
    if not raw:
        return None
    try:
        value = parse_datetime(raw)
    except ValueError:
        value = None
    if value is None:
        raise ApiError(
            "invalid_request", f"{name} must be an ISO 8601 time.", 400, {name: ["Not a valid time."]}
        )
    return value


def search(org_id, *, patient=None, user=None, action=None, since=None, until=None, after_seq=0, limit=PAGE):
    conditions, params = ["org_id = %s", "seq >= %s"], [org_id, after_seq]
    for column, value in (("patient_id", patient), ("actor_user", user), ("action", action)):
        if value:
            conditions.append(f"{column} = %s")
            params.append(value)
    if since:
        conditions.append("recorded_at >= %s")
        params.append(since)
    if until:
        conditions.append("recorded_at < %s")
        params.append(until)
    with store.reader() as reader:
        rows = reader.execute(
            f"SELECT seq, entry FROM audit_entry WHERE {' AND '.join(conditions)} ORDER BY seq LIMIT %s",
            [*params, limit + 1],
        ).fetchall()
    return [json.loads(entry) for _, entry in rows[:limit]], (rows[limit][0] if len(rows) > limit else None)


class AuditEventListView(TenantAPIView):
    permission_classes = [Auditors]

    @extend_schema(
        parameters=[
            PURPOSE_HEADER,
            OpenApiParameter("patient", uuid.UUID),
            OpenApiParameter("user", uuid.UUID),
            OpenApiParameter("action", str),
            OpenApiParameter("since", OpenApiTypes.DATETIME, description="recorded at or after (ISO 8601)"),
            OpenApiParameter("until", OpenApiTypes.DATETIME, description="recorded before (ISO 8601)"),
            OpenApiParameter(
                "after_seq",
                {"type": "integer", "minimum": 0, "maximum": 10**15 - 1},
                description="continue from this sequence number",
            ),
        ],
        responses=dict,
        summary="Search the organization's audit log (auditors)",
    )
    def get(self, request: Request) -> Response:
        action = request.query_params.get("action", "")[:64] or None
        entries, next_seq = search(
            request_org(request).id,
            patient=uuid_param(request, "patient"),
            user=uuid_param(request, "user"),
            action=action,
            since=_time(request, "since"),
            until=_time(request, "until"),
            after_seq=_int(request, "after_seq", 0),
        )
        events.emit(
            events.health_information_access(
                actor=events.actor_from_context(),
                org_id=request_org(request).id,
                action="search",
                resource_type="AuditLog",
                resource_id="",
                patient_id=uuid_param(request, "patient"),
                purpose="audit",
                request_id=request._request.request_id,  # type: ignore[attr-defined]
                detail={"results": len(entries)},
            )
        )
        return Response({"results": entries, "next_seq": next_seq})


class CheckpointView(TenantAPIView):
    permission_classes = [Auditors]

    @extend_schema(
        parameters=[PURPOSE_HEADER],
        responses=dict,
        summary="The latest signed checkpoint of the organization's log, and the verifier keys",
    )
    def get(self, request: Request) -> Response:
        org_id = request_org(request).id
        with store.reader() as reader:
            row = reader.execute(
                "SELECT size, note, signed_at FROM audit_checkpoint WHERE org_id = %s "
                "ORDER BY size DESC, signed_at DESC LIMIT 1",
                [org_id],
            ).fetchone()
            keys = [
                vkey for (vkey,) in reader.execute("SELECT vkey FROM audit_public_key ORDER BY first_seen")
            ]
        if row is None:
            raise ApiError("not_found", "No checkpoint has been signed for this organization yet.", 404)
        return Response({"size": row[0], "checkpoint": row[1], "signed_at": row[2], "keys": keys})


class AccessLogView(TenantAPIView):
    permission_classes = [Patients]

    @extend_schema(
        parameters=[PURPOSE_HEADER],
        responses=dict,
        summary="Who accessed my record, when and why (the accounting of disclosures)",
    )
    def get(self, request: Request) -> Response:
        from clinic.services import own_patient_ids

        results = []
        for patient_id in own_patient_ids():
            entries, _ = search(request_org(request).id, patient=patient_id, limit=500)
            results += [
                {
                    "time": e.get("time"),
                    "action": e.get("action"),
                    "role": (e.get("actor") or {}).get("role"),
                    "user": (e.get("actor") or {}).get("user"),
                    "purpose": e.get("purpose"),
                    "resource": e.get("resource"),
                }
                for e in entries
                if (e.get("actor") or {}).get("user") != str(request_user(request).pk)
            ]
        return Response({"results": results})
