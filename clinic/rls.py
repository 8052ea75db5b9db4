"""Who sees which clinical row, decided by PostgreSQL.

The rules read the signed context (role, purpose, user) and three helper functions that answer, once per
statement, which patients the signed-in practitioner may treat now (care team, active encounter, open
break-glass), which patients are the signed-in patient's own, and which patients consented to a purpose.
The helpers are SECURITY DEFINER functions owned by a NOLOGIN role with BYPASSRLS (created by bootstrap_db,
`<owner>_policy`), so they can read care teams and encounters without recursing into these same policies;
they compute only from the verified context, so a forged context still gets an error.
"""

from __future__ import annotations

R = "(SELECT public.app_role())"
P = "(SELECT public.app_purpose())"
U = "(SELECT public.app_user_id())"
PLATFORM = f"{R} = 'platform'"
CLINICAL = f"{P} IN ('treatment', 'emergency')"
MINE = "(SELECT public.clinic_my_membership())"


def treatable(column: str) -> str:
    # The cast makes the init-plan's array a scalar, so `= ANY` compares against its elements.
    return f"{column} = ANY((SELECT public.clinic_treatable_patients())::uuid[])"


def own(column: str) -> str:
    return f"{column} = ANY((SELECT public.clinic_own_patients())::uuid[])"


def analytics_consent(column: str) -> str:
    """RESTRICTIVE: under the analytics purpose, only patients with an active analytics consent exist."""
    return f"{P} IS DISTINCT FROM 'analytics' OR {column} = ANY((SELECT public.clinic_consented_patients('analytics'))::uuid[])"


# Periods are compared with clock_timestamp(), not now(): now() is the transaction's start, which can be
# earlier than a period the application just wrote, and the answer must hold at the moment of the statement.
HELPERS_SQL = r"""
CREATE OR REPLACE FUNCTION public.clinic_my_membership() RETURNS uuid
LANGUAGE sql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $fn$
    SELECT m.id FROM public.tenancy_membership m
    WHERE m.org_id = public.app_org_id() AND m.user_id = public.app_user_id() AND m.is_active
$fn$;

CREATE OR REPLACE FUNCTION public.clinic_treatable_patients() RETURNS uuid[]
LANGUAGE sql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $fn$
    WITH me AS (
        SELECT m.id, m.org_id FROM public.tenancy_membership m
        WHERE m.org_id = public.app_org_id() AND m.user_id = public.app_user_id() AND m.is_active
          AND m.role = 'practitioner' AND public.app_role() = 'practitioner'
    )
    SELECT coalesce(array_agg(DISTINCT patient_id), '{}') FROM (
        SELECT ct.patient_id FROM public.clinic_careteammember ct JOIN me
            ON ct.org_id = me.org_id AND ct.practitioner_id = me.id
        WHERE ct.period_start <= clock_timestamp() AND (ct.period_end IS NULL OR ct.period_end > clock_timestamp())
        UNION ALL
        SELECT e.patient_id FROM public.clinic_encounter e JOIN me
            ON e.org_id = me.org_id AND e.practitioner_id = me.id
        WHERE e.status IN ('arrived', 'in-progress')
        UNION ALL
        SELECT b.patient_id FROM public.clinic_breakglass b JOIN me
            ON b.org_id = me.org_id AND b.practitioner_id = me.id
        WHERE b.closed_at IS NULL AND b.expires_at > clock_timestamp() AND public.app_purpose() <> 'analytics'
    ) reachable
$fn$;

CREATE OR REPLACE FUNCTION public.clinic_own_patients() RETURNS uuid[]
LANGUAGE sql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $fn$
    SELECT coalesce(array_agg(p.id), '{}') FROM public.clinic_patient p
    WHERE p.org_id = public.app_org_id() AND p.user_id = public.app_user_id() AND public.app_role() = 'patient'
$fn$;

CREATE OR REPLACE FUNCTION public.clinic_consented_patients(purpose text) RETURNS uuid[]
LANGUAGE sql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $fn$
    SELECT coalesce(array_agg(c.patient_id), '{}') FROM public.clinic_consent c
    WHERE c.org_id = public.app_org_id() AND c.purpose = clinic_consented_patients.purpose
      AND c.status = 'active'
      AND (c.period_start IS NULL OR c.period_start <= clock_timestamp()) AND (c.period_end IS NULL OR c.period_end > clock_timestamp())
$fn$;

DO $do$
DECLARE
    policy_role text := current_user || '_policy';
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = policy_role AND rolbypassrls) THEN
        RAISE EXCEPTION 'role % (NOLOGIN BYPASSRLS) is missing: run manage.py bootstrap_db or deploy/postgres/roles.sql',
            policy_role;
    END IF;
    EXECUTE format('ALTER FUNCTION public.clinic_my_membership() OWNER TO %I', policy_role);
    EXECUTE format('ALTER FUNCTION public.clinic_treatable_patients() OWNER TO %I', policy_role);
    EXECUTE format('ALTER FUNCTION public.clinic_own_patients() OWNER TO %I', policy_role);
    EXECUTE format('ALTER FUNCTION public.clinic_consented_patients(text) OWNER TO %I', policy_role);
END
$do$;
"""

DROP_HELPERS_SQL = """
DROP FUNCTION IF EXISTS public.clinic_consented_patients(text);
DROP FUNCTION IF EXISTS public.clinic_own_patients();
DROP FUNCTION IF EXISTS public.clinic_treatable_patients();
DROP FUNCTION IF EXISTS public.clinic_my_membership();
"""

NEVER = "false"  # append-only tables: no role may change or remove a row

PATIENT = {
    "select": f"{PLATFORM} OR ({R} = 'practitioner' AND {CLINICAL} AND {treatable('id')})"
    f" OR ({R} = 'staff' AND {P} = 'operations') OR ({R} = 'patient' AND user_id = {U})"
    f" OR ({R} = 'org_admin' AND {P} = 'analytics')",
    "insert": f"{PLATFORM} OR {R} IN ('staff', 'practitioner')",
    "update": f"{PLATFORM} OR {R} = 'staff' OR ({R} = 'practitioner' AND {CLINICAL} AND {treatable('id')})"
    f" OR ({R} = 'patient' AND user_id = {U})",
    "delete": PLATFORM,
}

PRACTITIONER_PROFILE = {
    "select": f"{R} <> 'anonymous'",
    "insert": f"{PLATFORM} OR {R} = 'org_admin'",
    "update": f"{PLATFORM} OR {R} = 'org_admin'",
    "delete": PLATFORM,
}

CARE_TEAM = {
    "select": f"{PLATFORM} OR {R} IN ('staff', 'org_admin')"
    f" OR ({R} = 'practitioner' AND (practitioner_id = {MINE} OR {treatable('patient_id')}))"
    f" OR ({R} = 'patient' AND {own('patient_id')})",
    "insert": f"{PLATFORM} OR {R} IN ('staff', 'org_admin')",
    "update": f"{PLATFORM} OR {R} IN ('staff', 'org_admin')",
    "delete": PLATFORM,
}

CONSENT = {
    "select": f"{PLATFORM} OR {R} = 'staff' OR ({R} = 'practitioner' AND {treatable('patient_id')})"
    f" OR ({R} = 'patient' AND {own('patient_id')})",
    "insert": f"{PLATFORM} OR {R} = 'staff' OR ({R} = 'practitioner' AND {treatable('patient_id')})"
    f" OR ({R} = 'patient' AND {own('patient_id')})",
    "update": f"{PLATFORM} OR {R} = 'staff' OR ({R} = 'practitioner' AND {treatable('patient_id')})"
    f" OR ({R} = 'patient' AND {own('patient_id')})",
    "delete": PLATFORM,
}

CONSENT_EVENT = {**CONSENT, "update": NEVER, "delete": NEVER}

ENCOUNTER = {
    "select": f"{PLATFORM} OR {R} = 'staff'"
    f" OR ({R} = 'practitioner' AND (practitioner_id = {MINE} OR ({CLINICAL} AND {treatable('patient_id')})))"
    f" OR ({R} = 'patient' AND {own('patient_id')}) OR ({R} = 'org_admin' AND {P} = 'analytics')",
    "insert": f"{PLATFORM} OR {R} = 'staff' OR ({R} = 'practitioner' AND practitioner_id = {MINE})",
    "update": f"{PLATFORM} OR {R} = 'staff' OR ({R} = 'practitioner' AND practitioner_id = {MINE})"
    f" OR ({R} = 'patient' AND {own('patient_id')})",
    "delete": PLATFORM,
}

# Timeline rows are written by the services right after the encounter change they describe, which the
# encounter's own rules already checked.
ENCOUNTER_EVENT = {
    "select": f"{PLATFORM} OR {R} = 'staff' OR ({R} = 'practitioner' AND {treatable('patient_id')})"
    f" OR ({R} = 'patient' AND {own('patient_id')})",
    "insert": f"{PLATFORM} OR {R} IN ('staff', 'practitioner') OR ({R} = 'patient' AND {own('patient_id')})",
    "update": NEVER,
    "delete": NEVER,
}

# Staff never see notes; patients see only their signed notes; a signed note cannot be updated by anyone
# but the platform (re-encryption), because the UPDATE rule requires the old row to be a draft.
CLINICAL_NOTE = {
    "select": f"{PLATFORM} OR ({R} = 'practitioner' AND {CLINICAL} AND {treatable('patient_id')})"
    f" OR ({R} = 'patient' AND status = 'signed' AND {own('patient_id')})",
    "insert": f"{PLATFORM} OR ({R} = 'practitioner' AND {CLINICAL} AND {treatable('patient_id')}"
    f" AND author_id = {MINE})",
    "update": f"{PLATFORM} OR ({R} = 'practitioner' AND author_id = {MINE} AND status = 'draft')",
    "update_check": f"{PLATFORM} OR ({R} = 'practitioner' AND author_id = {MINE} AND {CLINICAL}"
    f" AND {treatable('patient_id')})",
    "delete": PLATFORM,
}

SIGNED_NOTE_GUARD_SQL = r"""
CREATE OR REPLACE FUNCTION public.clinic_note_signed_is_final() RETURNS trigger
LANGUAGE plpgsql AS $fn$
BEGIN
    -- A signed note's content and authorship never change; only re-encryption (same plaintext) rewrites body.
    IF OLD.status = 'signed' AND (NEW.status <> 'signed' OR NEW.author_id <> OLD.author_id
            OR NEW.encounter_id <> OLD.encounter_id OR NEW.version <> OLD.version
            OR NEW.signed_at IS DISTINCT FROM OLD.signed_at) THEN
        RAISE EXCEPTION 'a signed note is final: amend it with a new version' USING ERRCODE = 'check_violation';
    END IF;
    RETURN NEW;
END
$fn$;
DROP TRIGGER IF EXISTS clinic_note_signed_is_final ON clinic_clinicalnote;
CREATE TRIGGER clinic_note_signed_is_final BEFORE UPDATE ON clinic_clinicalnote
    FOR EACH ROW EXECUTE FUNCTION public.clinic_note_signed_is_final();
ALTER TABLE clinic_clinicalnote ENABLE ALWAYS TRIGGER clinic_note_signed_is_final;
"""

BREAK_GLASS = {
    "select": f"{PLATFORM} OR {R} IN ('org_admin', 'auditor') OR ({R} = 'practitioner' AND practitioner_id = {MINE})",
    "insert": f"{PLATFORM} OR ({R} = 'practitioner' AND practitioner_id = {MINE} AND {P} = 'emergency')",
    "update": f"{PLATFORM} OR ({R} = 'practitioner' AND practitioner_id = {MINE})",
    "delete": PLATFORM,
}
