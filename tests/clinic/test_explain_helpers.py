"""The row policies read indexes, not a practitioner's whole history or an organization's whole table (issue 13).

`clinic_visits()` runs inside every practitioner's statement on patients, consents, encounters and notes. A
practitioner accumulates thousands of finished encounters; the open visits and the notes owed are a handful.
This fills one practitioner's history with HISTORY finished encounters (as the owner, under the platform
context, committed), ANALYZEs, and asks the planner, as the policy role that owns the helper, for the plan of
each of the helper's two branches: each must read its partial index and never sequentially scan the table.
"""

from __future__ import annotations

import psycopg
import pytest
from psycopg import sql

from clinic.rls import VISIT_CLOSES_AFTER, VISIT_OPENS_BEFORE
from clinic.synthetic import generate_patients, quiet_phi_log
from tenancy.context import TenantContext, tenant_context
from tenancy.services import create_organization, ensure_member
from tests.audit.test_shipper import committed
from tests.conftest import owner_conninfo, runtime_conninfo

pytestmark = pytest.mark.django_db

HISTORY = 20_000

OPEN_VISITS = """
SELECT e.id, e.patient_id FROM clinic_encounter e
WHERE e.org_id = %(org)s AND e.practitioner_id = %(me)s AND e.status IN ('arrived', 'in-progress')
  AND clock_timestamp() >= e.scheduled_at - %(opens)s::interval
  AND clock_timestamp() < e.scheduled_at + %(closes)s::interval
"""
NOTES_OWED = """
SELECT e.id, e.patient_id FROM clinic_encounter e
WHERE e.org_id = %(org)s AND e.practitioner_id = %(me)s AND e.status = 'finished' AND e.documentation_required
"""


def practitioner_with_a_long_history():
    org, _ = create_organization(
        slug="explain-visits", name="Explain visits", domains=["explain-visits.localhost"]
    )
    with tenant_context(org_id=org.id, role="platform"):
        _, me, _ = ensure_member(org=org, email="dr.long@explain.test", role="practitioner", password=None)
    with quiet_phi_log():
        generate_patients(org_id=org.id, count=5, seed=11, batch_size=5, practitioner_ids=[me.pk])
    return org.id, me.pk  # the generator's encounters are the template the test copies


def test_each_branch_of_clinic_visits_reads_its_partial_index(clinics):
    org_id, me = committed(practitioner_with_a_long_history)
    signed = TenantContext(org_id=org_id, role="platform").signed()
    with psycopg.connect(owner_conninfo()) as conn:
        with conn.transaction():
            conn.execute("SELECT set_config('app.context', %s, true)", [signed])
            conn.execute(
                "INSERT INTO clinic_encounter (id, org_id, patient_id, practitioner_id, status, reason,"
                " scheduled_at, documentation_required, created_at)"
                " SELECT gen_random_uuid(), e.org_id, e.patient_id, e.practitioner_id, 'finished', e.reason,"
                " e.scheduled_at - make_interval(days => g), false, e.created_at"
                " FROM (SELECT * FROM clinic_encounter WHERE org_id = %s AND practitioner_id = %s LIMIT 1) e,"
                " generate_series(1, %s) g",
                [org_id, me, HISTORY],
            )
        conn.autocommit = True
        conn.execute("ANALYZE clinic_encounter")
        conn.autocommit = False
        try:
            with conn.transaction():
                owner = conn.execute("SELECT current_user").fetchone()[0]
                conn.execute(sql.SQL("SET LOCAL ROLE {}").format(sql.Identifier(f"{owner}_policy")))
                params = {
                    "org": org_id,
                    "me": me,
                    "opens": f"{int(VISIT_OPENS_BEFORE.total_seconds())} seconds",
                    "closes": f"{int(VISIT_CLOSES_AFTER.total_seconds())} seconds",
                }
                for branch, index in (
                    (OPEN_VISITS, "clinic_encounter_open_visit"),
                    (NOTES_OWED, "clinic_encounter_note_owed"),
                ):
                    plan = "\n".join(row[0] for row in conn.execute("EXPLAIN " + branch, params).fetchall())
                    assert "Seq Scan on clinic_encounter" not in plan, plan
                    assert index in plan, plan
        finally:
            with conn.transaction():
                conn.execute("SELECT set_config('app.context', %s, true)", [signed])
                conn.execute(
                    "DELETE FROM clinic_encounter WHERE org_id = %s AND practitioner_id = %s"
                    " AND id NOT IN (SELECT encounter_id FROM clinic_encounterevent WHERE org_id = %s)"
                    " AND id NOT IN (SELECT encounter_id FROM clinic_clinicalnote WHERE org_id = %s)",
                    [org_id, me, org_id, org_id],
                )


PAGE = "SELECT id FROM clinic_patient WHERE org_id = %s ORDER BY created_at DESC LIMIT 50"


def test_a_practitioner_s_page_of_patients_walks_the_newest_first_index_and_sorts_nothing(clinics):
    """The newest 50 of an organization of PATIENTS: under the row rules as one CASE on the role, the planner
    expects rows to pass and walks (org_id, created_at) backwards; under an OR of role tests it expected one
    row, and read and sorted the whole organization (issue 13)."""
    org_id, _ = committed(practitioner_with_a_long_history)
    signed = TenantContext(org_id=org_id, role="platform").signed()
    with psycopg.connect(owner_conninfo()) as conn:
        with conn.transaction():
            conn.execute("SELECT set_config('app.context', %s, true)", [signed])
            columns = [
                row[0]
                for row in conn.execute(
                    "SELECT column_name FROM information_schema.columns WHERE table_name = 'clinic_patient'"
                    " AND column_name NOT IN ('id', 'created_at', 'health_card_index', 'user_id')"
                ).fetchall()
            ]
            copied = ", ".join(f"p.{column}" for column in columns)
            conn.execute(
                f"INSERT INTO clinic_patient (id, created_at, {', '.join(columns)})"
                f" SELECT gen_random_uuid(), now() - make_interval(secs => g), {copied}"
                " FROM (SELECT * FROM clinic_patient WHERE org_id = %s LIMIT 1) p, generate_series(1, %s) g",
                [org_id, HISTORY],
            )
        conn.autocommit = True
        conn.execute("ANALYZE clinic_patient")
    # EXPLAIN alone runs no init-plan: the context only has to be a genuine one of this organization.
    practitioner = TenantContext(org_id=org_id, role="practitioner", purpose="treatment")
    with psycopg.connect(runtime_conninfo()) as conn, conn.transaction():
        conn.execute("SELECT set_config('app.context', %s, true)", [practitioner.signed()])
        plan = "\n".join(row[0] for row in conn.execute("EXPLAIN " + PAGE, [org_id]).fetchall())
    assert "Sort" not in plan, plan
    assert "Index Scan Backward" in plan and "clinic_patient" in plan, plan
