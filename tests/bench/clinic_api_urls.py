"""The plain-Django baseline of tests/bench/test_clinic_api.py, mounted next to the real API.

`PlainPatient` is an unmanaged model over `bench_clinic.patient`, a table the benchmark creates with SQL: the
same columns as clinic_patient in plaintext (text, date, jsonb), no row-level security, no encryption, in a
schema of its own so the catalog tests never see it. It lives in an isolated app registry, so it is in no
migration state either. The views serve it the way an ordinary DRF app would: an APIView with a
ModelSerializer, cursor pagination of 50 by `-created_at`, no tenant context, no authentication, no audit.

The benchmark points ROOT_URLCONF here (override_settings): the real API keeps its paths, the baseline
answers under /plain/v1/.
"""

from __future__ import annotations

import uuid

from django.apps.registry import Apps
from django.db import models
from django.urls import path
from rest_framework import serializers
from rest_framework.exceptions import NotFound
from rest_framework.pagination import CursorPagination
from rest_framework.permissions import AllowAny
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from config.urls import handler400, handler403, handler404, handler500  # noqa: F401  (this URLconf's too)
from config.urls import urlpatterns as real_urlpatterns

SCHEMA = "bench_clinic"
TABLE = f"{SCHEMA}.patient"

CREATE_SQL = f"""
CREATE SCHEMA {SCHEMA};
CREATE TABLE {TABLE} (
    id uuid PRIMARY KEY,
    org_id uuid NOT NULL,
    given_name text,
    family_name text,
    birth_date date,
    email text,
    phone text,
    address jsonb,
    health_card_number text,
    user_id uuid,
    created_at timestamptz NOT NULL
);
CREATE INDEX patient_org_created ON {TABLE} (org_id, created_at);
CREATE INDEX patient_created ON {TABLE} (created_at);
CREATE INDEX patient_email ON {TABLE} (org_id, email);
CREATE INDEX patient_card ON {TABLE} (org_id, health_card_number);
CREATE INDEX patient_user ON {TABLE} (org_id, user_id);
"""

COLUMNS = [
    "id",
    "org_id",
    "given_name",
    "family_name",
    "birth_date",
    "email",
    "phone",
    "address",
    "health_card_number",
    "user_id",
    "created_at",
]

plain_apps = Apps()


class PlainPatient(models.Model):
    # Nullable like the encrypted columns they mirror.
    id = models.UUIDField(primary_key=True, default=uuid.uuid4)
    org_id = models.UUIDField()
    given_name = models.TextField(null=True)  # noqa: DJ001
    family_name = models.TextField(null=True)  # noqa: DJ001
    birth_date = models.DateField(null=True)
    email = models.TextField(null=True)  # noqa: DJ001
    phone = models.TextField(null=True)  # noqa: DJ001
    address = models.JSONField(null=True)
    health_card_number = models.TextField(null=True)  # noqa: DJ001
    user_id = models.UUIDField(null=True)
    created_at = models.DateTimeField()

    class Meta:
        apps = plain_apps
        app_label = "bench_clinic"
        managed = False
        db_table = f'{SCHEMA}"."patient'

    def __str__(self) -> str:
        return f"plain patient {self.pk}"


class PlainPatientSerializer(serializers.ModelSerializer):
    """The fields clinic.serializers.PatientSerializer answers with, in the same order."""

    has_portal_account = serializers.SerializerMethodField()

    class Meta:
        model = PlainPatient
        fields = [
            "id",
            "given_name",
            "family_name",
            "birth_date",
            "email",
            "phone",
            "address",
            "health_card_number",
            "has_portal_account",
            "created_at",
        ]

    def get_has_portal_account(self, obj) -> bool:
        return obj.user_id is not None


class PlainView(APIView):
    authentication_classes: list = []
    permission_classes = [AllowAny]


class PlainPatientListView(PlainView):
    def get(self, request: Request) -> Response:
        paginator = CursorPagination()
        paginator.ordering = "-created_at"
        paginator.page_size = 50
        page = paginator.paginate_queryset(PlainPatient.objects.all(), request, view=self)
        return paginator.get_paginated_response(PlainPatientSerializer(page, many=True).data)


class PlainPatientDetailView(PlainView):
    def get(self, request: Request, patient_id: uuid.UUID) -> Response:
        patient = PlainPatient.objects.filter(pk=patient_id).first()
        if patient is None:
            raise NotFound()
        return Response(PlainPatientSerializer(patient).data)


urlpatterns = [
    *real_urlpatterns,
    path("plain/v1/patients", PlainPatientListView.as_view()),
    path("plain/v1/patients/<uuid:patient_id>", PlainPatientDetailView.as_view()),
]
