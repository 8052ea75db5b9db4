"""The portal's clinical API. Views parse input, call clinic.services and return JSON; they decide nothing
about who may see a row (PostgreSQL does) and answer 404 for anything outside the caller's reach."""

from __future__ import annotations

import uuid

from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import status
from rest_framework.pagination import CursorPagination
from rest_framework.request import Request
from rest_framework.response import Response

from audit.queries import accesses_to
from tenancy.api import PURPOSE_HEADER, TenantAPIView, paginated, request_org, request_user, uuid_param
from tenancy.errors import ApiError, TenancyCode
from tenancy.models import Membership, PurposeOfUse, Role
from tenancy.permissions import HasRole

from . import serializers as s
from . import services
from .models import BreakGlass, CareTeamMember, Encounter


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
                TenancyCode.PURPOSE_NOT_PERMITTED,
                "Analytics sees aggregates only: GET /api/v1/reports/summary.",
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
    resource: str | None,
) -> Response:
    """A cursor page of 50: the loader of every clinical list. The rows it loads are recorded as reads of
    `resource` (services.record_page: one event per row, one outbox write), the rows served and no others.
    `resource=None` only where the list's service recorded the read itself (services.consents_of)."""
    paginator = CursorPagination()
    paginator.ordering = ordering
    paginator.page_size = 50
    page = paginator.paginate_queryset(queryset, request, view=view) or []
    if resource:
        services.record_page(page, resource=resource)
    return paginator.get_paginated_response(serializer_class(page, many=True).data)


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
        return paginate(self, request, queryset, "-created_at", s.PatientSerializer, resource="Patient")

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
        return Response(s.PatientSerializer(services.get_patient_for_user(patient_id)).data)

    @extend_schema(
        parameters=[PURPOSE_HEADER], request=s.PatientUpdateSerializer, responses=s.PatientSerializer
    )
    def patch(self, request: Request, patient_id: uuid.UUID) -> Response:
        patient = services.get_patient_for_user(patient_id, record=False)  # update_patient records it
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
            services.get_patient_for_user(patient_id, record=False)  # a scope check: the page is recorded
        elif not members.exists():
            raise ApiError(TenancyCode.NOT_FOUND, "Not found.")
        return paginate(
            self, request, members, "-period_start", s.CareTeamMemberSerializer, resource="CareTeamMember"
        )

    @extend_schema(
        parameters=[PURPOSE_HEADER],
        request=s.CareTeamAssignSerializer,
        responses={201: s.CareTeamMemberSerializer},
    )
    def post(self, request: Request, patient_id: uuid.UUID) -> Response:
        serializer = s.CareTeamAssignSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        patient = services.get_patient_for_user(patient_id, record=False)  # assign_care_team records it
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
            raise ApiError(TenancyCode.NOT_FOUND, "Not found.")
        member = services.end_care_team(member=member, actor=self.actor)
        return Response(s.CareTeamMemberSerializer(member).data)


# -- consent ------------------------------------------------------------------------------------------


class ConsentListView(ClinicalView):
    @extend_schema(parameters=[PURPOSE_HEADER], responses=paginated(s.ConsentSerializer))
    def get(self, request: Request, patient_id: uuid.UUID) -> Response:
        patient = services.get_patient_for_user(patient_id, record=False)  # consents_of records the read
        consents = services.consents_of(patient)
        return paginate(self, request, consents, "-updated_at", s.ConsentSerializer, resource=None)

    @extend_schema(
        parameters=[PURPOSE_HEADER], request=s.ConsentGrantSerializer, responses={201: s.ConsentSerializer}
    )
    def post(self, request: Request, patient_id: uuid.UUID) -> Response:
        serializer = s.ConsentGrantSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        patient = services.get_patient_for_user(patient_id, record=False)  # grant_consent records it
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
        # withdraw_consent records the access, with the consent's state before and after.
        patient = services.get_patient_for_user(patient_id, record=False)
        consent = services.get_consent_for_user(patient, consent_id, record=False)
        consent = services.withdraw_consent(
            consent=consent, actor=self.actor, note=serializer.validated_data.get("note", "")
        )
        return Response(s.ConsentSerializer(consent).data)


class ConsentHistoryView(ClinicalView):
    @extend_schema(parameters=[PURPOSE_HEADER], responses=s.ConsentEventSerializer(many=True))
    def get(self, request: Request, patient_id: uuid.UUID, consent_id: uuid.UUID) -> Response:
        # consent_history records the read of the history.
        patient = services.get_patient_for_user(patient_id, record=False)
        consent = services.get_consent_for_user(patient, consent_id, record=False)
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
                    TenancyCode.INVALID_REQUEST,
                    "Unknown status.",
                    fields={"status": [f"Choose one of {', '.join(Encounter.Status.values)}."]},
                )
            encounters = encounters.filter(status=wanted)
        patient_id = uuid_param(request, "patient")
        if patient_id:
            encounters = encounters.filter(patient_id=patient_id)
        flag = request.query_params.get("documentation_required")
        if flag is not None:
            if flag.lower() not in ("true", "false", "1", "0"):
                raise ApiError(
                    TenancyCode.INVALID_REQUEST,
                    "documentation_required must be true or false.",
                    fields={"documentation_required": ["Must be true or false."]},
                )
            encounters = encounters.filter(documentation_required=flag.lower() in ("true", "1"))
        return paginate(
            self, request, encounters, "-scheduled_at", s.EncounterSerializer, resource="Encounter"
        )

    @extend_schema(
        parameters=[PURPOSE_HEADER],
        request=s.EncounterCreateSerializer,
        responses={201: s.EncounterSerializer},
    )
    def post(self, request: Request) -> Response:
        serializer = s.EncounterCreateSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        # schedule_encounter records the access.
        patient = services.get_patient_for_user(data["patient"], record=False)
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
        return Response(s.EncounterSerializer(services.get_encounter_for_user(encounter_id)).data)


class EncounterActionView(ClinicalView):
    @extend_schema(
        parameters=[PURPOSE_HEADER],
        request=None,
        responses=s.EncounterSerializer,
        summary="arrive, admit, start, end or cancel an encounter",
    )
    def post(self, request: Request, encounter_id: uuid.UUID, action: str) -> Response:
        encounter = services.get_encounter_for_user(encounter_id, record=False)  # the transition records it
        encounter = services.transition_encounter(encounter=encounter, action=action, actor=self.actor)
        return Response(s.EncounterSerializer(encounter).data)


class EncounterTimelineView(ClinicalView):
    @extend_schema(parameters=[PURPOSE_HEADER], responses=s.EncounterEventSerializer(many=True))
    def get(self, request: Request, encounter_id: uuid.UUID) -> Response:
        encounter = services.get_encounter_for_user(encounter_id, record=False)  # encounter_timeline records
        return Response(s.EncounterEventSerializer(services.encounter_timeline(encounter), many=True).data)


# -- notes --------------------------------------------------------------------------------------------


class EncounterNotesView(ClinicalView):
    def get_permissions(self):
        return [Practitioners()] if self.request.method == "POST" else super().get_permissions()

    @extend_schema(parameters=[PURPOSE_HEADER], responses=paginated(s.NoteSerializer))
    def get(self, request: Request, encounter_id: uuid.UUID) -> Response:
        encounter = services.get_encounter_for_user(encounter_id, record=False)  # the page is recorded
        notes = services.notes_of(encounter)
        return paginate(self, request, notes, "-created_at", s.NoteSerializer, resource="ClinicalNote")

    @extend_schema(
        parameters=[PURPOSE_HEADER], request=s.NoteBodySerializer, responses={201: s.NoteSerializer}
    )
    def post(self, request: Request, encounter_id: uuid.UUID) -> Response:
        serializer = s.NoteBodySerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        encounter = services.get_encounter_for_user(encounter_id, record=False)  # create_note records it
        note = services.create_note(
            encounter=encounter, body=serializer.validated_data["body"], author=self.actor
        )
        return Response(s.NoteSerializer(note).data, status=status.HTTP_201_CREATED)


class NoteDetailView(ClinicalView):
    def get_permissions(self):
        return [Practitioners()] if self.request.method == "PATCH" else super().get_permissions()

    @extend_schema(parameters=[PURPOSE_HEADER], responses=s.NoteSerializer)
    def get(self, request: Request, note_id: uuid.UUID) -> Response:
        return Response(s.NoteSerializer(services.get_note_for_user(note_id)).data)

    @extend_schema(parameters=[PURPOSE_HEADER], request=s.NoteBodySerializer, responses=s.NoteSerializer)
    def patch(self, request: Request, note_id: uuid.UUID) -> Response:
        serializer = s.NoteBodySerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        note = services.get_note_for_user(note_id, record=False)  # update_draft_note records it
        note = services.update_draft_note(
            note=note, body=serializer.validated_data["body"], author=self.actor
        )
        return Response(s.NoteSerializer(note).data)


class NoteSignView(ClinicalView):
    permission_classes = [Practitioners]

    @extend_schema(parameters=[PURPOSE_HEADER], request=None, responses=s.NoteSerializer)
    def post(self, request: Request, note_id: uuid.UUID) -> Response:
        note = services.sign_note(note=services.get_note_for_user(note_id, record=False), actor=self.actor)
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
            note=services.get_note_for_user(note_id, record=False),  # amend_note records it
            body=serializer.validated_data["body"],
            actor=self.actor,
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
            self,
            request,
            BreakGlass.objects.all(),
            "-opened_at",
            s.BreakGlassSerializer,
            resource="BreakGlass",
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
            grant=services.get_break_glass_for_user(grant_id, record=False), actor=self.actor
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


# -- the patient's access log -------------------------------------------------------------------------


class Patients(HasRole):
    roles = (Role.PATIENT,)


class AccessLogView(TenantAPIView):
    """The accounting of disclosures. Clinic knows which records are the signed-in patient's; the audit log,
    which knows no clinic, is searched by their ids. Reading it writes no audit event."""

    permission_classes = [Patients]

    @extend_schema(
        parameters=[PURPOSE_HEADER],
        responses=dict,
        summary="Who accessed my record, when and why (the accounting of disclosures)",
    )
    def get(self, request: Request) -> Response:
        results = accesses_to(
            request_org(request).id, services.own_patient_ids(), excluding_user=request_user(request).pk
        )
        return Response({"results": results})
