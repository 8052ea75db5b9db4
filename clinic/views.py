"""The portal's clinical API. Views parse input, call clinic.services and return JSON; they decide nothing
about who may see a row (PostgreSQL does) and answer 404 for anything outside the caller's reach."""

from __future__ import annotations

import uuid

from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import status
from rest_framework.pagination import CursorPagination
from rest_framework.request import Request
from rest_framework.response import Response

from tenancy.api import PURPOSE_HEADER, TenantAPIView, paginated, uuid_param
from tenancy.errors import ApiError
from tenancy.models import Membership, PurposeOfUse, Role
from tenancy.permissions import HasRole

from . import serializers as s
from . import services
from .models import BreakGlass, CareTeamMember, ClinicalNote, Consent, Encounter, EncounterEvent


class ClinicalRoles(HasRole):
    roles = (Role.PRACTITIONER, Role.STAFF, Role.PATIENT)


class CareRoles(HasRole):
    roles = (Role.PRACTITIONER, Role.STAFF, Role.ORG_ADMIN, Role.PATIENT)


class Practitioners(HasRole):
    roles = (Role.PRACTITIONER,)


class FrontDesk(HasRole):
    roles = (Role.STAFF, Role.PRACTITIONER)


class CareTeamManagers(HasRole):
    roles = (Role.STAFF, Role.ORG_ADMIN)


class ReportReaders(HasRole):
    roles = (Role.ORG_ADMIN,)


class BreakGlassViewers(HasRole):
    roles = (Role.PRACTITIONER, Role.ORG_ADMIN, Role.AUDITOR)


class ClinicalView(TenantAPIView):
    """Health information is never served for analytics: that purpose sees aggregates only."""

    permission_classes = [ClinicalRoles]

    def initial(self, request: Request, *args, **kwargs) -> None:
        super().initial(request, *args, **kwargs)
        if getattr(request, "purpose", None) == PurposeOfUse.ANALYTICS:
            raise ApiError(
                "purpose_not_permitted",
                "Analytics sees aggregates only: GET /api/v1/reports/summary.",
                403,
            )

    @property
    def actor(self) -> Membership:
        return self.request.auth.membership  # type: ignore[union-attr]


def paginate(
    view: TenantAPIView,
    request: Request,
    queryset,
    ordering: str,
    serializer_class,
    *,
    audit: str | None = None,
    patient_field: str = "patient",
) -> Response:
    """A cursor page of 50. With `audit`, the page's rows are recorded as reads (one outbox write)."""
    paginator = CursorPagination()
    paginator.ordering = ordering
    paginator.page_size = 50
    page = paginator.paginate_queryset(queryset, request, view=view)
    response = paginator.get_paginated_response(serializer_class(page, many=True).data)
    if audit:
        rows = [(row["id"], row[patient_field]) for row in response.data["results"]]
        services.record_phi_reads(resource=audit, rows=rows)
    return response


# -- patients -----------------------------------------------------------------------------------------


class PatientListView(ClinicalView):
    def get_permissions(self):
        return [FrontDesk()] if self.request.method == "POST" else super().get_permissions()

    @extend_schema(
        parameters=[
            PURPOSE_HEADER,
            OpenApiParameter("email", str, description="exact match (blind index)"),
            OpenApiParameter("health_card_number", str, description="exact match (blind index)"),
        ],
        responses=paginated(s.PatientSerializer),
        summary="Patients the caller may see; search by exact email or health card number",
    )
    def get(self, request: Request) -> Response:
        email = request.query_params.get("email", "")[:254]
        card = request.query_params.get("health_card_number", "")[:40]
        queryset = services.search_patients(email=email, health_card_number=card)
        return paginate(
            self, request, queryset, "-created_at", s.PatientSerializer, audit="Patient", patient_field="id"
        )

    @extend_schema(
        parameters=[PURPOSE_HEADER], request=s.PatientSerializer, responses={201: s.PatientSerializer}
    )
    def post(self, request: Request) -> Response:
        serializer = s.PatientSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        patient = services.register_patient(actor=self.actor, data=serializer.validated_data)
        return Response(s.PatientSerializer(patient).data, status=status.HTTP_201_CREATED)


class PatientDetailView(ClinicalView):
    @extend_schema(parameters=[PURPOSE_HEADER], responses=s.PatientSerializer)
    def get(self, request: Request, patient_id: uuid.UUID) -> Response:
        patient = services.get_patient_for_user(patient_id)
        data = s.PatientSerializer(patient).data
        services.record_phi_access(
            action="read", resource="Patient", resource_id=patient.pk, patient_id=patient.pk
        )
        return Response(data)

    @extend_schema(
        parameters=[PURPOSE_HEADER], request=s.PatientUpdateSerializer, responses=s.PatientSerializer
    )
    def patch(self, request: Request, patient_id: uuid.UUID) -> Response:
        patient = services.get_patient_for_user(patient_id)
        serializer = s.PatientUpdateSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        patient = services.update_patient(patient=patient, actor=self.actor, data=serializer.validated_data)
        return Response(s.PatientSerializer(patient).data)


# -- care team ----------------------------------------------------------------------------------------


class CareTeamView(ClinicalView):
    permission_classes = [CareRoles]

    def get_permissions(self):
        return [CareTeamManagers()] if self.request.method == "POST" else super().get_permissions()

    @extend_schema(parameters=[PURPOSE_HEADER], responses=paginated(s.CareTeamMemberSerializer))
    def get(self, request: Request, patient_id: uuid.UUID) -> Response:
        members = CareTeamMember.objects.filter(patient_id=patient_id)
        # A patient outside the caller's scope is 404, not an empty team. The administrator sees care teams
        # but no patients: for them the patient is in scope when they can see some of its team.
        if self.actor.role != Role.ORG_ADMIN:
            services.get_patient_for_user(patient_id)
        elif not members.exists():
            raise ApiError("not_found", "Not found.", 404)
        return paginate(
            self, request, members, "-period_start", s.CareTeamMemberSerializer, audit="CareTeamMember"
        )

    @extend_schema(
        parameters=[PURPOSE_HEADER],
        request=s.CareTeamAssignSerializer,
        responses={201: s.CareTeamMemberSerializer},
    )
    def post(self, request: Request, patient_id: uuid.UUID) -> Response:
        serializer = s.CareTeamAssignSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        patient = services.get_patient_for_user(patient_id)
        practitioner = services.get_member_for_user(serializer.validated_data["practitioner"])
        member = services.assign_care_team(
            patient=patient,
            practitioner=practitioner,
            actor=self.actor,
            role=serializer.validated_data["role"],
            until=serializer.validated_data.get("until"),
        )
        return Response(s.CareTeamMemberSerializer(member).data, status=status.HTTP_201_CREATED)


class CareTeamEndView(ClinicalView):
    permission_classes = [CareTeamManagers]

    @extend_schema(parameters=[PURPOSE_HEADER], request=None, responses=s.CareTeamMemberSerializer)
    def post(self, request: Request, patient_id: uuid.UUID, member_id: uuid.UUID) -> Response:
        member = CareTeamMember.objects.filter(pk=member_id, patient_id=patient_id).first()
        if member is None:
            raise ApiError("not_found", "Not found.", 404)
        member = services.end_care_team(member=member, actor=self.actor)
        return Response(s.CareTeamMemberSerializer(member).data)


# -- consent ------------------------------------------------------------------------------------------


class ConsentListView(ClinicalView):
    @extend_schema(parameters=[PURPOSE_HEADER], responses=paginated(s.ConsentSerializer))
    def get(self, request: Request, patient_id: uuid.UUID) -> Response:
        patient = services.get_patient_for_user(patient_id)
        consents = Consent.objects.filter(patient=patient)
        services.record_phi_access(action="read", resource="Consent", patient_id=patient.pk)
        return paginate(self, request, consents, "-updated_at", s.ConsentSerializer)

    @extend_schema(
        parameters=[PURPOSE_HEADER], request=s.ConsentGrantSerializer, responses={201: s.ConsentSerializer}
    )
    def post(self, request: Request, patient_id: uuid.UUID) -> Response:
        serializer = s.ConsentGrantSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        patient = services.get_patient_for_user(patient_id)
        consent = services.grant_consent(
            patient=patient,
            purpose=serializer.validated_data["purpose"],
            actor=self.actor,
            note=serializer.validated_data.get("note", ""),
            until=serializer.validated_data.get("until"),
        )
        return Response(s.ConsentSerializer(consent).data, status=status.HTTP_201_CREATED)


class ConsentWithdrawView(ClinicalView):
    @extend_schema(
        parameters=[PURPOSE_HEADER], request=s.ConsentWithdrawSerializer, responses=s.ConsentSerializer
    )
    def post(self, request: Request, patient_id: uuid.UUID, consent_id: uuid.UUID) -> Response:
        serializer = s.ConsentWithdrawSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        patient = services.get_patient_for_user(patient_id)
        consent = services.get_consent_for_user(patient, consent_id)
        consent = services.withdraw_consent(
            consent=consent, actor=self.actor, note=serializer.validated_data.get("note", "")
        )
        return Response(s.ConsentSerializer(consent).data)


class ConsentHistoryView(ClinicalView):
    @extend_schema(parameters=[PURPOSE_HEADER], responses=s.ConsentEventSerializer(many=True))
    def get(self, request: Request, patient_id: uuid.UUID, consent_id: uuid.UUID) -> Response:
        patient = services.get_patient_for_user(patient_id)
        consent = services.get_consent_for_user(patient, consent_id)
        services.record_phi_access(
            action="read", resource="ConsentHistory", resource_id=consent.pk, patient_id=patient.pk
        )
        return Response(s.ConsentEventSerializer(services.consent_history(consent), many=True).data)


# -- encounters ---------------------------------------------------------------------------------------


class EncounterListView(ClinicalView):
    def get_permissions(self):
        return [FrontDesk()] if self.request.method == "POST" else super().get_permissions()

    @extend_schema(
        parameters=[
            PURPOSE_HEADER,
            OpenApiParameter("status", str, enum=Encounter.Status.values),
            OpenApiParameter("patient", uuid.UUID),
            OpenApiParameter("documentation_required", bool),
        ],
        responses=paginated(s.EncounterSerializer),
    )
    def get(self, request: Request) -> Response:
        encounters = Encounter.objects.all()
        wanted = request.query_params.get("status")
        if wanted:
            if wanted not in Encounter.Status.values:
                raise ApiError(
                    "invalid_request",
                    "Unknown status.",
                    400,
                    {"status": [f"Choose one of {', '.join(Encounter.Status.values)}."]},
                )
            encounters = encounters.filter(status=wanted)
        patient_id = uuid_param(request, "patient")
        if patient_id:
            encounters = encounters.filter(patient_id=patient_id)
        flag = request.query_params.get("documentation_required")
        if flag is not None:
            if flag.lower() not in ("true", "false", "1", "0"):
                raise ApiError(
                    "invalid_request",
                    "documentation_required must be true or false.",
                    400,
                    {"documentation_required": ["Must be true or false."]},
                )
            encounters = encounters.filter(documentation_required=flag.lower() in ("true", "1"))
        return paginate(self, request, encounters, "-scheduled_at", s.EncounterSerializer, audit="Encounter")

    @extend_schema(
        parameters=[PURPOSE_HEADER],
        request=s.EncounterCreateSerializer,
        responses={201: s.EncounterSerializer},
    )
    def post(self, request: Request) -> Response:
        serializer = s.EncounterCreateSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        patient = services.get_patient_for_user(data["patient"])
        practitioner = services.get_member_for_user(data["practitioner"])
        encounter = services.schedule_encounter(
            patient=patient,
            practitioner=practitioner,
            scheduled_at=data["scheduled_at"],
            reason=data.get("reason", ""),
            actor=self.actor,
        )
        return Response(s.EncounterSerializer(encounter).data, status=status.HTTP_201_CREATED)


class EncounterDetailView(ClinicalView):
    @extend_schema(parameters=[PURPOSE_HEADER], responses=s.EncounterSerializer)
    def get(self, request: Request, encounter_id: uuid.UUID) -> Response:
        encounter = services.get_encounter_for_user(encounter_id)
        services.record_phi_access(
            action="read", resource="Encounter", resource_id=encounter.pk, patient_id=encounter.patient_id
        )
        return Response(s.EncounterSerializer(encounter).data)


class EncounterActionView(ClinicalView):
    @extend_schema(
        parameters=[PURPOSE_HEADER],
        request=None,
        responses=s.EncounterSerializer,
        summary="arrive, admit, start, end or cancel an encounter",
    )
    def post(self, request: Request, encounter_id: uuid.UUID, action: str) -> Response:
        encounter = services.get_encounter_for_user(encounter_id)
        encounter = services.transition_encounter(encounter=encounter, action=action, actor=self.actor)
        return Response(s.EncounterSerializer(encounter).data)


class EncounterTimelineView(ClinicalView):
    @extend_schema(parameters=[PURPOSE_HEADER], responses=s.EncounterEventSerializer(many=True))
    def get(self, request: Request, encounter_id: uuid.UUID) -> Response:
        encounter = services.get_encounter_for_user(encounter_id)
        events = EncounterEvent.objects.filter(encounter=encounter).order_by("at")
        services.record_phi_access(
            action="read",
            resource="EncounterTimeline",
            resource_id=encounter.pk,
            patient_id=encounter.patient_id,
        )
        return Response(s.EncounterEventSerializer(events, many=True).data)


# -- notes --------------------------------------------------------------------------------------------


class EncounterNotesView(ClinicalView):
    def get_permissions(self):
        return [Practitioners()] if self.request.method == "POST" else super().get_permissions()

    @extend_schema(parameters=[PURPOSE_HEADER], responses=paginated(s.NoteSerializer))
    def get(self, request: Request, encounter_id: uuid.UUID) -> Response:
        encounter = services.get_encounter_for_user(encounter_id)
        notes = ClinicalNote.objects.filter(encounter=encounter)
        return paginate(self, request, notes, "-created_at", s.NoteSerializer, audit="ClinicalNote")

    @extend_schema(
        parameters=[PURPOSE_HEADER], request=s.NoteBodySerializer, responses={201: s.NoteSerializer}
    )
    def post(self, request: Request, encounter_id: uuid.UUID) -> Response:
        serializer = s.NoteBodySerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        encounter = services.get_encounter_for_user(encounter_id)
        note = services.create_note(
            encounter=encounter, body=serializer.validated_data["body"], author=self.actor
        )
        return Response(s.NoteSerializer(note).data, status=status.HTTP_201_CREATED)


class NoteDetailView(ClinicalView):
    def get_permissions(self):
        return [Practitioners()] if self.request.method == "PATCH" else super().get_permissions()

    @extend_schema(parameters=[PURPOSE_HEADER], responses=s.NoteSerializer)
    def get(self, request: Request, note_id: uuid.UUID) -> Response:
        note = services.get_note_for_user(note_id)
        services.record_phi_access(
            action="read", resource="ClinicalNote", resource_id=note.pk, patient_id=note.patient_id
        )
        return Response(s.NoteSerializer(note).data)

    @extend_schema(parameters=[PURPOSE_HEADER], request=s.NoteBodySerializer, responses=s.NoteSerializer)
    def patch(self, request: Request, note_id: uuid.UUID) -> Response:
        serializer = s.NoteBodySerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        note = services.get_note_for_user(note_id)
        note = services.update_draft_note(
            note=note, body=serializer.validated_data["body"], author=self.actor
        )
        return Response(s.NoteSerializer(note).data)


class NoteSignView(ClinicalView):
    permission_classes = [Practitioners]

    @extend_schema(parameters=[PURPOSE_HEADER], request=None, responses=s.NoteSerializer)
    def post(self, request: Request, note_id: uuid.UUID) -> Response:
        note = services.sign_note(note=services.get_note_for_user(note_id), actor=self.actor)
        return Response(s.NoteSerializer(note).data)


class NoteAmendView(ClinicalView):
    permission_classes = [Practitioners]

    @extend_schema(
        parameters=[PURPOSE_HEADER], request=s.NoteBodySerializer, responses={201: s.NoteSerializer}
    )
    def post(self, request: Request, note_id: uuid.UUID) -> Response:
        serializer = s.NoteBodySerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        note = services.amend_note(
            note=services.get_note_for_user(note_id), body=serializer.validated_data["body"], actor=self.actor
        )
        return Response(s.NoteSerializer(note).data, status=status.HTTP_201_CREATED)


# -- break-glass --------------------------------------------------------------------------------------


class BreakGlassListView(ClinicalView):
    permission_classes = [BreakGlassViewers]

    def get_permissions(self):
        return [Practitioners()] if self.request.method == "POST" else super().get_permissions()

    @extend_schema(
        parameters=[PURPOSE_HEADER],
        responses=paginated(s.BreakGlassSerializer),
        summary="Break-glass accesses: the privacy officer's list (a practitioner sees their own)",
    )
    def get(self, request: Request) -> Response:
        return paginate(
            self, request, BreakGlass.objects.all(), "-opened_at", s.BreakGlassSerializer, audit="BreakGlass"
        )

    @extend_schema(
        parameters=[PURPOSE_HEADER],
        request=s.BreakGlassOpenSerializer,
        responses={201: s.BreakGlassSerializer},
        summary="Open emergency access (send X-Purpose-Of-Use: emergency)",
    )
    def post(self, request: Request) -> Response:
        serializer = s.BreakGlassOpenSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        grant = services.open_break_glass(
            patient_id=data["patient"], reason=data["reason"], actor=self.actor, minutes=data["minutes"]
        )
        return Response(s.BreakGlassSerializer(grant).data, status=status.HTTP_201_CREATED)


class BreakGlassCloseView(ClinicalView):
    permission_classes = [Practitioners]

    @extend_schema(parameters=[PURPOSE_HEADER], request=None, responses=s.BreakGlassSerializer)
    def post(self, request: Request, grant_id: uuid.UUID) -> Response:
        grant = services.close_break_glass(
            grant=services.get_break_glass_for_user(grant_id), actor=self.actor
        )
        return Response(s.BreakGlassSerializer(grant).data)


# -- reports ------------------------------------------------------------------------------------------


class ReportSummaryView(TenantAPIView):
    permission_classes = [ReportReaders]

    @extend_schema(
        parameters=[PURPOSE_HEADER],
        responses=dict,
        summary="Consent-aware aggregates (send X-Purpose-Of-Use: analytics); small counts are null",
    )
    def get(self, request: Request) -> Response:
        return Response(services.consent_aware_summary())
