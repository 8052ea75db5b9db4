"""Row-level security for the clinic: minimum necessary by role and purpose, consent-aware for analytics."""

from django.db import migrations

from clinic import rls
from tenancy.rls import EnableTenantRLS


class Migration(migrations.Migration):
    dependencies = [("clinic", "0001_initial")]

    operations = [
        migrations.RunSQL(rls.HELPERS_SQL, rls.DROP_HELPERS_SQL),
        EnableTenantRLS("patient", rules=rls.PATIENT, restrictive=[rls.analytics_consent("id")]),
        EnableTenantRLS("practitionerprofile", rules=rls.PRACTITIONER_PROFILE),
        EnableTenantRLS("careteammember", rules=rls.CARE_TEAM),
        EnableTenantRLS("consent", rules=rls.CONSENT),
        EnableTenantRLS("consentevent", rules=rls.CONSENT_EVENT),
        EnableTenantRLS("encounter", rules=rls.ENCOUNTER, restrictive=[rls.analytics_consent("patient_id")]),
        EnableTenantRLS("encounterevent", rules=rls.ENCOUNTER_EVENT),
        EnableTenantRLS("clinicalnote", rules=rls.CLINICAL_NOTE, restrictive=[rls.analytics_consent("patient_id")]),
        EnableTenantRLS("breakglass", rules=rls.BREAK_GLASS),
        migrations.RunSQL(
            rls.SIGNED_NOTE_GUARD_SQL,
            "DROP TRIGGER IF EXISTS clinic_note_signed_is_final ON clinic_clinicalnote;"
            "DROP FUNCTION IF EXISTS public.clinic_note_signed_is_final();",
        ),
    ]
