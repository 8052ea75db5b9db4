"""Issue 13: every clinic table's read rule as one CASE on the role (clinic.rls.by_role): the role read once
per statement, and a condition the planner estimates, so a page walks its index instead of sorting a table."""

from django.db import migrations

from clinic import rls
from tenancy.rls import EnableTenantRLS


class Migration(migrations.Migration):
    dependencies = [("clinic", "0005_visit_indexes")]

    operations = [
        EnableTenantRLS("patient", rules=rls.PATIENT, restrictive=[rls.analytics_consent("id")]),
        EnableTenantRLS("careteammember", rules=rls.CARE_TEAM),
        EnableTenantRLS("consent", rules=rls.CONSENT),
        EnableTenantRLS("consentevent", rules=rls.CONSENT_EVENT),
        EnableTenantRLS("encounter", rules=rls.ENCOUNTER, restrictive=[rls.analytics_consent("patient_id")]),
        EnableTenantRLS("encounterevent", rules=rls.ENCOUNTER_EVENT),
        EnableTenantRLS("clinicalnote", rules=rls.CLINICAL_NOTE, restrictive=[rls.analytics_consent("patient_id")]),
        EnableTenantRLS("breakglass", rules=rls.BREAK_GLASS),
    ]
