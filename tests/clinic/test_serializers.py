"""The patient's answer built by hand on the hot read path (issue 13) is the declared fields' answer, exactly."""

from __future__ import annotations

import datetime
import json

import pytest
from rest_framework.renderers import JSONRenderer

from clinic import services
from clinic.models import Patient
from clinic.serializers import PatientSerializer
from clinic.synthetic import generate_patients, quiet_phi_log
from tenancy.context import tenant_context
from tests.clinic.test_access import patient_values

pytestmark = pytest.mark.django_db


def test_a_patient_s_answer_equals_drf_s_field_by_field_answer_for_every_shape_of_record(alpha):
    org = alpha.org
    with quiet_phi_log():
        generate_patients(org_id=org.id, count=40, seed=7, batch_size=40)
    with tenant_context(org_id=org.id, role="platform", purpose="treatment"):
        staff = alpha.membership("staff")
        sparse = {**patient_values("Sparse", "Record"), "email": None, "phone": None, "address": None}
        del sparse["health_card_number"]
        services.register_patient(actor=staff, data=sparse)
        odd = {
            **patient_values("Odd", "Address"),
            "address": {"line": "1 Main St", "unit": "", "note": "é ✓"},
        }
        odd["birth_date"] = datetime.date(1900, 1, 1)
        with_account = services.register_patient(actor=staff, data=odd)
        Patient.objects.filter(pk=with_account.pk).update(user=alpha.user("patient"))
        patients = list(Patient.objects.all())
        serializer = PatientSerializer()
        assert len(patients) >= 42
        shapes = set()
        for patient in patients:
            fast, slow = serializer.to_representation(patient), serializer.field_by_field(patient)
            assert fast == slow
            assert list(fast) == list(slow)  # same key order, so the same JSON bytes
            assert JSONRenderer().render(fast) == JSONRenderer().render(slow)
            shapes.add(tuple(key for key, value in fast.items() if value is None))
        assert len(shapes) > 1  # records with and without optional details were compared
        many = PatientSerializer(patients, many=True).data
        assert json.loads(JSONRenderer().render(many)) == [serializer.field_by_field(p) for p in patients]
