"""Video HTTP API: TURN credentials for the participants of an encounter.

Only the encounter's own practitioner and its own patient get credentials; the patient only once admitted
from the waiting room (a relay is a network resource, and a patient left waiting has no call to relay).
Anyone else answers 404, as every loader here does for rows outside the caller's reach.
"""

from __future__ import annotations

import uuid

from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from drf_spectacular.utils import OpenApiParameter, extend_schema, inline_serializer
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response

from clinic import services
from clinic.models import Encounter
from tenancy.api import PURPOSE_HEADER, TenantAPIView, uuid_param
from tenancy.context import ANONYMOUS, tenant_context
from tenancy.errors import ApiError, TenancyCode, json_error
from tenancy.models import PurposeOfUse, Role
from tenancy.permissions import HasRole
from tenancy.services import get_organization

from .errors import VideoCode
from .turn import TurnUnavailable, turn_credentials


class Participants(HasRole):
    """Video participants are practitioners and patients; staff, administrators and auditors never are."""

    roles = (Role.PRACTITIONER, Role.PATIENT)


TURN_CREDENTIALS = inline_serializer(
    "TurnCredentials",
    {
        "username": serializers.CharField(help_text="`<unix expiry>:<opaque user id>` (coturn REST API)"),
        "credential": serializers.CharField(help_text="base64(HMAC-SHA1(shared secret, username))"),
        "ttl": serializers.IntegerField(help_text="seconds the credential is valid for"),
        "expires_at": serializers.DateTimeField(),
        "uris": serializers.ListField(child=serializers.CharField(), help_text="turn:/turns: URLs"),
    },
)

CLOSED = (Encounter.Status.FINISHED, Encounter.Status.CANCELLED)


class TurnCredentialsView(TenantAPIView):
    permission_classes = [Participants]

    @extend_schema(
        parameters=[
            PURPOSE_HEADER,
            OpenApiParameter("encounter", uuid.UUID, required=True, description="the encounter's id"),
        ],
        responses=TURN_CREDENTIALS,
        summary="Short-lived TURN credentials for a participant of a video visit",
    )
    def get(self, request: Request) -> Response:
        services.require_purpose(PurposeOfUse.TREATMENT)
        # Recorded below as the credentials' issue (turn_credentials), once they are.
        encounter = services.get_encounter_for_user(
            uuid_param(request, "encounter", required=True), record=False
        )
        membership = request.auth.membership  # type: ignore[union-attr]
        if membership.role == Role.PRACTITIONER:
            # A colleague may see the encounter (care team) without being in the call.
            if encounter.practitioner_id != membership.pk:
                raise ApiError(TenancyCode.NOT_FOUND, "Not found.")
        else:
            if encounter.patient_id not in services.own_patient_ids():
                raise ApiError(TenancyCode.NOT_FOUND, "Not found.")
            if encounter.admitted_at is None and encounter.status != Encounter.Status.IN_PROGRESS:
                raise ApiError(
                    VideoCode.NOT_ADMITTED, "The practitioner has not admitted you from the waiting room yet."
                )
        if encounter.status in CLOSED:
            raise ApiError(VideoCode.ENCOUNTER_CLOSED, f"This encounter is {encounter.status}.")
        try:
            credentials = turn_credentials(request.user.pk)
        except TurnUnavailable:
            raise ApiError(VideoCode.TURN_UNAVAILABLE, "No TURN server is configured.") from None
        services.record_phi_access(
            action="turn_credentials",
            resource="Encounter",
            resource_id=encounter.pk,
            patient_id=encounter.patient_id,
        )
        return Response(credentials, headers={"Cache-Control": "no-store"})


# -- the portal page -------------------------------------------------------------------------------------


def visit_page(request: HttpRequest, encounter_id: uuid.UUID) -> HttpResponse:
    """GET /visit/<encounter id>: the video visit page, branded for the Host's organization.

    A shell with no health information and no check of the encounter (every id answers the same page, so the
    page reveals nothing about which exist): sign-in, the waiting room and the call run in its scripts
    (video/static/video/), over the API and the signalling socket, which check who may see what.
    Served under the strict page CSP: scripts and styles come from /static/ only.
    """
    if request.method not in ("GET", "HEAD"):
        # The API's error shape, with Allow, as every other 405 (tenancy.strict).
        refused = json_error(TenancyCode.METHOD_NOT_ALLOWED, f"Method {request.method} is not allowed here.")
        refused["Allow"] = "GET, HEAD"
        return refused
    org_id = getattr(request, "org_id", None)
    if org_id is None:
        return json_error(TenancyCode.UNKNOWN_HOST, "No organization is served at this host.")
    with tenant_context(org_id=org_id, role=ANONYMOUS):
        branding = get_organization(org_id).branding
    response = render(request, "video/visit.html", {"branding": branding, "encounter_id": str(encounter_id)})
    # The camera and microphone for this origin only; nothing else the page does not use.
    response["Permissions-Policy"] = "camera=(self), microphone=(self), geolocation=(), payment=(), usb=()"
    response["Cache-Control"] = "no-store"
    return response
