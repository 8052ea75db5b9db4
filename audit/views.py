"""The audit trail over HTTP: auditors search their organization's log and fetch checkpoints.

A patient's list of who accessed their record (GET /api/v1/me/access-log) is clinic's view, which knows whose
records a patient holds, over `audit.queries.accesses_to`: the audit app knows no clinic."""

from __future__ import annotations

import uuid

from django.utils.dateparse import parse_datetime
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework.request import Request
from rest_framework.response import Response

from tenancy.api import PURPOSE_HEADER, TenantAPIView, request_org, uuid_param
from tenancy.errors import ApiError, TenancyCode
from tenancy.events import Actor, PhiAccess, publish
from tenancy.models import Role
from tenancy.permissions import HasRole

from . import store
from .queries import search


class Auditors(HasRole):
    roles = (Role.AUDITOR,)


def _int(request: Request, name: str, default: int) -> int:
    raw = request.query_params.get(name)
    if raw in (None, ""):
        return default
    # isascii: str.isdigit() is also true for "²" and other digits int() refuses, which made a 500.
    if not (raw.isascii() and raw.isdigit()) or len(raw) > 15:
        raise ApiError(
            TenancyCode.INVALID_REQUEST,
            f"{name} must be a non-negative integer.",
            fields={name: ["Must be a non-negative integer."]},
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
            TenancyCode.INVALID_REQUEST,
            f"{name} must be an ISO 8601 time.",
            fields={name: ["Not a valid time."]},
        )
    return value


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
        patient = uuid_param(request, "patient")
        # A search of the log discloses who accessed whose record: it is recorded like any other access.
        publish(
            PhiAccess(
                org_id=str(request_org(request).id),
                actor=Actor.from_context(),
                request_id=request._request.request_id,  # type: ignore[attr-defined]
                purpose="audit",
                action="search",
                resource="AuditLog",
                patient_id=str(patient) if patient else "",
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
            raise ApiError(TenancyCode.NOT_FOUND, "No checkpoint has been signed for this organization yet.")
        return Response({"size": row[0], "checkpoint": row[1], "signed_at": row[2], "keys": keys})
