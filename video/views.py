"""Video HTTP API: TURN credentials for the participants of an encounter.

Only the encounter's own practitioner and its own patient get credentials; the patient only once admitted
from the waiting room (a relay is a network resource, and a patient left waiting has no call to relay).
Anyone else answers 404, as every loader here does for rows outside the caller's reach.
"""

from __future__ import annotations

import uuid

from drf_spectacular.utils import OpenApiParameter, extend_schema, inline_serializer
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response

from clinic import services
from clinic.models import Encounter
from tenancy.errors import ApiError
from tenancy.models import PurposeOfUse, Role
from tenancy.permissions import HasRole
from tenancy.views import PURPOSE_HEADER, TenantAPIView

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
        raw = request.query_params.get("encounter", "")
        try:
            encounter_id = uuid.UUID(raw)
        except ValueError:
            raise ApiError(
                "invalid_request", "encounter must be a UUID.", 400, {"encounter": ["Must be a UUID."]}
            ) from None
        encounter = services.get_encounter_for_user(encounter_id)
        membership = request.auth.membership  # type: ignore[union-attr]
        if membership.role == Role.PRACTITIONER:
            # A colleague may see the encounter (care team) without being in the call.
            if encounter.practitioner_id != membership.pk:
                raise ApiError("not_found", "Not found.", 404)
        else:
            if encounter.patient_id not in services.own_patient_ids():
                raise ApiError("not_found", "Not found.", 404)
            if encounter.admitted_at is None and encounter.status != Encounter.Status.IN_PROGRESS:
                raise ApiError(
                    "not_admitted", "The practitioner has not admitted you from the waiting room yet.", 403
                )
        if encounter.status in CLOSED:
            raise ApiError("encounter_closed", f"This encounter is {encounter.status}.", 409)
        try:
            credentials = turn_credentials(request.user.pk)
        except TurnUnavailable:
            raise ApiError("turn_unavailable", "No TURN server is configured.", 503) from None
        services.record_phi_access(
            action="turn_credentials",
            resource="Encounter",
            resource_id=encounter.pk,
            patient_id=encounter.patient_id,
        )
        return Response(credentials, headers={"Cache-Control": "no-store"})
