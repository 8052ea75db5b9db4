"""Who sees which clinical row, decided by PostgreSQL.

The rules read the signed context (role, purpose, user) and helper functions that answer, once per
statement, whose whole chart the signed-in practitioner may read (care team, open break-glass), which of their
visits are open now (an encounter arrived or in progress within its visit window, or finished and awaiting its
note), which patients they may treat (both), which patients are the signed-in patient's own, and which patients
consented to a purpose.

A visit opens the minimum its care needs (docs/adr/0012-a-visit-opens-the-visit-not-the-chart.md): the
patient's demographics and consents, that encounter, its timeline and its notes; never the patient's other
encounters or other practitioners' notes, which need the care team or break-glass.
The helpers are SECURITY DEFINER functions owned by a NOLOGIN role with BYPASSRLS (created by bootstrap_db,
`<owner>_policy`), so they can read care teams and encounters without recursing into these same policies;
they compute only from the verified context, so a forged context still gets an error.
"""

from __future__ import annotations

from datetime import timedelta

from tenancy.rls import owned_by_policy_role

# The visit window: arrival and the start of a visit are accepted, and an arrived or started encounter opens
# the visit, from an hour before the scheduled time until twelve hours after it.
VISIT_OPENS_BEFORE = timedelta(hours=1)
VISIT_CLOSES_AFTER = timedelta(hours=12)

R = "(SELECT public.app_role())"
P = "(SELECT public.app_purpose())"
U = "(SELECT public.app_user_id())"
PLATFORM = f"{R} = 'platform'"
CLINICAL = f"{P} IN ('treatment', 'emergency')"
MINE = "(SELECT public.clinic_my_membership())"


def treatable(column: str) -> str:
    # The cast makes the init-plan's array a scalar, so `= ANY` compares against its elements.
    return f"{column} = ANY((SELECT public.clinic_treatable_patients())::uuid[])"


def chart(column: str) -> str:
    """The whole chart: care team or open break-glass, never a visit alone."""
    return f"{column} = ANY((SELECT public.clinic_chart_patients())::uuid[])"


def visit(column: str) -> str:
    """An encounter of the signed-in practitioner's that is open now (its visit window, or awaiting its note)."""
    return f"{column} = ANY((SELECT public.clinic_visit_encounters())::uuid[])"


def own(column: str) -> str:
    return f"{column} = ANY((SELECT public.clinic_own_patients())::uuid[])"


def analytics_consent(column: str) -> str:
    """RESTRICTIVE: under the analytics purpose, only patients with an active analytics consent exist."""
    return f"{P} IS DISTINCT FROM 'analytics' OR {column} = ANY((SELECT public.clinic_consented_patients('analytics'))::uuid[])"


# Periods are compared with clock_timestamp(), not now(): now() is the transaction's start, which can be
# earlier than a period the application just wrote, and the answer must hold at the moment of the statement.
# PL/pgSQL, not SQL: a SECURITY DEFINER SQL function is planned again on every call (about 0.5-1.5 ms for the
# helpers below), where PL/pgSQL keeps its statements' plans for the session. Each reads the verified context
# once (`app_context()`, one signature check) rather than once per value.
_HELPERS_SQL = r"""
CREATE OR REPLACE FUNCTION public.clinic_my_membership() RETURNS uuid
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $fn$
DECLARE
    ctx record;
    found_id uuid;
BEGIN
    SELECT * INTO ctx FROM public.app_context();
    SELECT m.id INTO found_id FROM public.tenancy_membership m
    WHERE m.org_id = ctx.org_id AND m.user_id = ctx.user_id AND m.is_active;
    RETURN found_id;
END
$fn$;

CREATE OR REPLACE FUNCTION public.clinic_chart_patients() RETURNS uuid[]
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $fn$
DECLARE
    ctx record;
    reachable uuid[];
BEGIN
    SELECT * INTO ctx FROM public.app_context();
    IF ctx.role IS DISTINCT FROM 'practitioner' THEN
        RETURN '{}';
    END IF;
    WITH me AS (
        SELECT m.id, m.org_id FROM public.tenancy_membership m
        WHERE m.org_id = ctx.org_id AND m.user_id = ctx.user_id AND m.is_active AND m.role = 'practitioner'
    )
    SELECT coalesce(array_agg(DISTINCT r.patient_id), '{}') INTO reachable FROM (
        SELECT ct.patient_id FROM public.clinic_careteammember ct JOIN me
            ON ct.org_id = me.org_id AND ct.practitioner_id = me.id
        WHERE ct.period_start <= clock_timestamp() AND (ct.period_end IS NULL OR ct.period_end > clock_timestamp())
        UNION ALL
        SELECT b.patient_id FROM public.clinic_breakglass b JOIN me
            ON b.org_id = me.org_id AND b.practitioner_id = me.id
        WHERE b.closed_at IS NULL AND b.expires_at > clock_timestamp() AND ctx.purpose <> 'analytics'
    ) r;
    RETURN reachable;
END
$fn$;

-- A visit is open while the encounter is arrived or in progress and the clock is inside its window around the
-- scheduled time (so a status forced outside the window opens nothing), or once finished while its note is
-- still owed (documentation_required).
CREATE OR REPLACE FUNCTION public.clinic_visits() RETURNS TABLE (encounter_id uuid, patient_id uuid)
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $fn$
#variable_conflict use_column
DECLARE
    ctx record;
BEGIN
    SELECT * INTO ctx FROM public.app_context();
    IF ctx.role IS DISTINCT FROM 'practitioner' THEN
        RETURN;
    END IF;
    -- Two branches, each matching one partial index (clinic_encounter_open_visit, clinic_encounter_note_owed).
    RETURN QUERY
    WITH me AS (
        SELECT m.id, m.org_id FROM public.tenancy_membership m
        WHERE m.org_id = ctx.org_id AND m.user_id = ctx.user_id AND m.is_active AND m.role = 'practitioner'
    )
    SELECT e.id, e.patient_id FROM public.clinic_encounter e JOIN me
        ON e.org_id = me.org_id AND e.practitioner_id = me.id
    WHERE e.status IN ('arrived', 'in-progress')
      AND clock_timestamp() >= e.scheduled_at - interval '{opens_before}'
      AND clock_timestamp() < e.scheduled_at + interval '{closes_after}'
    UNION ALL
    SELECT e.id, e.patient_id FROM public.clinic_encounter e JOIN me
        ON e.org_id = me.org_id AND e.practitioner_id = me.id
    WHERE e.status = 'finished' AND e.documentation_required;
END
$fn$;

CREATE OR REPLACE FUNCTION public.clinic_visit_encounters() RETURNS uuid[]
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $fn$
DECLARE
    open_visits uuid[];
BEGIN
    SELECT coalesce(array_agg(v.encounter_id), '{}') INTO open_visits FROM public.clinic_visits() v;
    RETURN open_visits;
END
$fn$;

CREATE OR REPLACE FUNCTION public.clinic_treatable_patients() RETURNS uuid[]
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $fn$
DECLARE
    reachable uuid[];
BEGIN
    SELECT coalesce(array_agg(DISTINCT r.patient_id), '{}') INTO reachable FROM (
        SELECT unnest(public.clinic_chart_patients()) AS patient_id
        UNION ALL
        SELECT v.patient_id FROM public.clinic_visits() v
    ) r;
    RETURN reachable;
END
$fn$;

-- Arrival and the start of a visit happen near its scheduled time: a status moved out of 'planned' far from
-- it is refused here too, whatever the application said (the platform role, which imports history, excepted).
CREATE OR REPLACE FUNCTION public.clinic_encounter_opens_in_its_window() RETURNS trigger
LANGUAGE plpgsql AS $fn$
BEGIN
    -- Who the visit is with never changes, and only the front desk reschedules: otherwise a practitioner
    -- could point their own encounter at another patient, or move it to now, and open that visit.
    IF (NEW.patient_id IS DISTINCT FROM OLD.patient_id OR NEW.practitioner_id IS DISTINCT FROM OLD.practitioner_id)
            AND public.app_role() IS DISTINCT FROM 'platform' THEN
        RAISE EXCEPTION 'an encounter''s patient and practitioner do not change' USING ERRCODE = 'check_violation';
    END IF;
    IF NEW.scheduled_at IS DISTINCT FROM OLD.scheduled_at AND public.app_role() NOT IN ('staff', 'platform') THEN
        RAISE EXCEPTION 'only the front desk reschedules an encounter' USING ERRCODE = 'check_violation';
    END IF;
    IF OLD.status = 'planned' AND NEW.status IN ('arrived', 'in-progress')
            AND public.app_role() IS DISTINCT FROM 'platform'
            AND NOT (clock_timestamp() >= NEW.scheduled_at - interval '{opens_before}'
                     AND clock_timestamp() < NEW.scheduled_at + interval '{closes_after}') THEN
        RAISE EXCEPTION 'an encounter is arrived or started only within its visit window'
            USING ERRCODE = 'check_violation';
    END IF;
    RETURN NEW;
END
$fn$;
DROP TRIGGER IF EXISTS clinic_encounter_opens_in_its_window ON clinic_encounter;
CREATE TRIGGER clinic_encounter_opens_in_its_window BEFORE UPDATE ON clinic_encounter
    FOR EACH ROW EXECUTE FUNCTION public.clinic_encounter_opens_in_its_window();

CREATE OR REPLACE FUNCTION public.clinic_own_patients() RETURNS uuid[]
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $fn$
DECLARE
    ctx record;
    own uuid[];
BEGIN
    SELECT * INTO ctx FROM public.app_context();
    IF ctx.role IS DISTINCT FROM 'patient' THEN
        RETURN '{}';
    END IF;
    SELECT coalesce(array_agg(p.id), '{}') INTO own FROM public.clinic_patient p
    WHERE p.org_id = ctx.org_id AND p.user_id = ctx.user_id;
    RETURN own;
END
$fn$;

CREATE OR REPLACE FUNCTION public.clinic_consented_patients(purpose text) RETURNS uuid[]
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $fn$
DECLARE
    org uuid := public.app_org_id();
    consented uuid[];
BEGIN
    SELECT coalesce(array_agg(c.patient_id), '{}') INTO consented FROM public.clinic_consent c
    WHERE c.org_id = org AND c.purpose = clinic_consented_patients.purpose
      AND c.status = 'active'
      AND (c.period_start IS NULL OR c.period_start <= clock_timestamp()) AND (c.period_end IS NULL OR c.period_end > clock_timestamp());
    RETURN consented;
END
$fn$;

""" + owned_by_policy_role(
    "public.clinic_my_membership()",
    "public.clinic_chart_patients()",
    "public.clinic_visits()",
    "public.clinic_visit_encounters()",
    "public.clinic_treatable_patients()",
    "public.clinic_own_patients()",
    "public.clinic_consented_patients(text)",
)

HELPERS_SQL = _HELPERS_SQL.replace(
    "{opens_before}", f"{int(VISIT_OPENS_BEFORE.total_seconds())} seconds"
).replace("{closes_after}", f"{int(VISIT_CLOSES_AFTER.total_seconds())} seconds")

DROP_HELPERS_SQL = """
DROP FUNCTION IF EXISTS public.clinic_consented_patients(text);
DROP FUNCTION IF EXISTS public.clinic_own_patients();
DROP TRIGGER IF EXISTS clinic_encounter_opens_in_its_window ON clinic_encounter;
DROP FUNCTION IF EXISTS public.clinic_encounter_opens_in_its_window();
DROP FUNCTION IF EXISTS public.clinic_treatable_patients();
DROP FUNCTION IF EXISTS public.clinic_visit_encounters();
DROP FUNCTION IF EXISTS public.clinic_visits();
DROP FUNCTION IF EXISTS public.clinic_chart_patients();
DROP FUNCTION IF EXISTS public.clinic_my_membership();
"""

NEVER = "false"  # append-only tables: no role may change or remove a row


def by_role(**arms: str) -> str:
    """A read rule as one CASE on the role, each arm the condition for that role (no arm: no row).

    The role is then read once per statement (one init-plan, one signature check, where an OR of role tests
    read it once per arm), and the planner estimates the condition at one row in two. It took each role test
    of an OR for 0.5 % of rows, expected a page to hold one row, and read and sorted an organization's whole
    table for its newest 50 instead of walking the (org_id, created_at) index (issue 13).
    """
    whens = " ".join(f"WHEN '{role}' THEN ({condition})" for role, condition in arms.items())
    return f"CASE {R} {whens} ELSE false END"


PATIENT = {
    "select": by_role(
        platform="true",
        practitioner=f"{CLINICAL} AND {treatable('id')}",
        staff=f"{P} = 'operations'",
        patient=f"user_id = {U}",
        org_admin=f"{P} = 'analytics'",
    ),
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
    "select": by_role(
        platform="true",
        staff="true",
        org_admin="true",
        practitioner=f"practitioner_id = {MINE} OR {chart('patient_id')}",
        patient=own("patient_id"),
    ),
    "insert": f"{PLATFORM} OR {R} IN ('staff', 'org_admin')",
    "update": f"{PLATFORM} OR {R} IN ('staff', 'org_admin')",
    "delete": PLATFORM,
}

CONSENT = {
    "select": by_role(
        platform="true", staff="true", practitioner=treatable("patient_id"), patient=own("patient_id")
    ),
    "insert": f"{PLATFORM} OR {R} = 'staff' OR ({R} = 'practitioner' AND {treatable('patient_id')})"
    f" OR ({R} = 'patient' AND {own('patient_id')})",
    "update": f"{PLATFORM} OR {R} = 'staff' OR ({R} = 'practitioner' AND {treatable('patient_id')})"
    f" OR ({R} = 'patient' AND {own('patient_id')})",
    "delete": PLATFORM,
}

CONSENT_EVENT = {**CONSENT, "update": NEVER, "delete": NEVER}

ENCOUNTER = {
    "select": by_role(
        platform="true",
        staff="true",
        practitioner=f"practitioner_id = {MINE} OR ({CLINICAL} AND {chart('patient_id')})",
        patient=own("patient_id"),
        org_admin=f"{P} = 'analytics'",
    ),
    "insert": f"{PLATFORM} OR {R} = 'staff' OR ({R} = 'practitioner' AND practitioner_id = {MINE})",
    "update": f"{PLATFORM} OR {R} = 'staff' OR ({R} = 'practitioner' AND practitioner_id = {MINE})"
    f" OR ({R} = 'patient' AND {own('patient_id')})",
    "delete": PLATFORM,
}

# Timeline rows are written by the services right after the encounter change they describe, which the
# encounter's own rules already checked.
ENCOUNTER_EVENT = {
    "select": by_role(
        platform="true",
        staff="true",
        practitioner=f"{chart('patient_id')} OR {visit('encounter_id')}",
        patient=own("patient_id"),
    ),
    "insert": f"{PLATFORM} OR {R} IN ('staff', 'practitioner') OR ({R} = 'patient' AND {own('patient_id')})",
    "update": NEVER,
    "delete": NEVER,
}

# A practitioner reaches the notes of a chart they hold, or of the open visit they are in, no others.
NOTE_REACH = f"({chart('patient_id')} OR {visit('encounter_id')})"

# Staff never see notes; patients see only their signed notes; a signed note cannot be updated by anyone
# but the platform (re-encryption), because the UPDATE rule requires the old row to be a draft.
CLINICAL_NOTE = {
    "select": by_role(
        platform="true",
        practitioner=f"{CLINICAL} AND {NOTE_REACH}",
        patient=f"status = 'signed' AND {own('patient_id')}",
    ),
    "insert": f"{PLATFORM} OR ({R} = 'practitioner' AND {CLINICAL} AND {NOTE_REACH} AND author_id = {MINE})",
    "update": f"{PLATFORM} OR ({R} = 'practitioner' AND author_id = {MINE} AND status = 'draft')",
    "update_check": f"{PLATFORM} OR ({R} = 'practitioner' AND author_id = {MINE} AND {CLINICAL}"
    f" AND {NOTE_REACH})",
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
    "select": by_role(
        platform="true", org_admin="true", auditor="true", practitioner=f"practitioner_id = {MINE}"
    ),
    "insert": f"{PLATFORM} OR ({R} = 'practitioner' AND practitioner_id = {MINE} AND {P} = 'emergency')",
    "update": f"{PLATFORM} OR ({R} = 'practitioner' AND practitioner_id = {MINE})",
    "delete": PLATFORM,
}
