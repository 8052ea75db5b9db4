"""Database rules of the outbox, and the backstop that records writes which bypass the ORM."""

from __future__ import annotations

R = "(SELECT public.app_role())"

OUTBOX = {
    "select": f"{R} = 'shipper'",
    "insert": f"{R} IS NOT NULL",  # any verified context may record an event for its own organization
    "update": "false",  # an outbox row is never changed
    "delete": f"{R} = 'shipper'",
}

# Tables of health information (and memberships) whose every row write the database records itself.
BACKSTOP_TABLES = [
    "tenancy_membership",
    "clinic_patient",
    "clinic_careteammember",
    "clinic_consent",
    "clinic_consentevent",
    "clinic_encounter",
    "clinic_encounterevent",
    "clinic_clinicalnote",
    "clinic_breakglass",
]

HELPERS_SQL = r"""
CREATE OR REPLACE FUNCTION public.audit_pending_orgs() RETURNS SETOF uuid
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $fn$
    SELECT DISTINCT o.org_id FROM public.audit_outboxevent o WHERE public.app_role() = 'shipper'
$fn$;

CREATE OR REPLACE FUNCTION public.audit_outbox_oldest() RETURNS timestamptz
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $fn$
    SELECT min(o.created_at) FROM public.audit_outboxevent o
$fn$;

DO $do$
DECLARE
    policy_role text := current_user || '_policy';
BEGIN
    EXECUTE format('ALTER FUNCTION public.audit_pending_orgs() OWNER TO %I', policy_role);
    EXECUTE format('ALTER FUNCTION public.audit_outbox_oldest() OWNER TO %I', policy_role);
END
$do$;

-- The backstop: a write that reaches a health-information table by any path (bulk update, raw SQL) leaves
-- an outbox event, with hashes of the row before and after, in the same transaction.
CREATE OR REPLACE FUNCTION public.audit_backstop() RETURNS trigger
LANGUAGE plpgsql AS $fn$
DECLARE
    eid uuid := gen_random_uuid();
    old_row jsonb := CASE WHEN TG_OP IN ('UPDATE', 'DELETE') THEN to_jsonb(OLD) END;
    new_row jsonb := CASE WHEN TG_OP IN ('INSERT', 'UPDATE') THEN to_jsonb(NEW) END;
    row jsonb := coalesce(new_row, old_row);
BEGIN
    INSERT INTO public.audit_outboxevent (id, org_id, payload) VALUES (
        eid,
        (row ->> 'org_id')::uuid,
        jsonb_build_object(
            'event_id', eid,
            'time', to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"+00:00"'),
            'action', 'db_' || lower(TG_OP),
            'outcome', 'success',
            'actor', jsonb_build_object('user', public.app_user_id(), 'role', public.app_role(),
                                        'session', '', 'ip', NULL),
            'purpose', public.app_purpose(),
            'patient', coalesce(row ->> 'patient_id', CASE WHEN TG_TABLE_NAME = 'clinic_patient'
                                                          THEN row ->> 'id' END),
            'resource', jsonb_build_object('type', TG_TABLE_NAME, 'id', row ->> 'id'),
            'request_id', coalesce(nullif(current_setting('app.request_id', true), ''), ''),
            'before', coalesce(encode(sha256(convert_to(old_row::text, 'UTF8')), 'hex'), ''),
            'after', coalesce(encode(sha256(convert_to(new_row::text, 'UTF8')), 'hex'), ''),
            'detail', jsonb_build_object('source', 'database')
        )
    );
    RETURN NULL;
END
$fn$;
"""


def backstop_sql(table: str) -> str:
    return f"""
DROP TRIGGER IF EXISTS audit_backstop ON {table};
CREATE TRIGGER audit_backstop AFTER INSERT OR UPDATE OR DELETE ON {table}
    FOR EACH ROW EXECUTE FUNCTION public.audit_backstop();
ALTER TABLE {table} ENABLE ALWAYS TRIGGER audit_backstop;
"""


DROP_SQL = (
    "".join(f"DROP TRIGGER IF EXISTS audit_backstop ON {t};" for t in BACKSTOP_TABLES)
    + "DROP FUNCTION IF EXISTS public.audit_backstop(); DROP FUNCTION IF EXISTS public.audit_outbox_oldest();"
    + "DROP FUNCTION IF EXISTS public.audit_pending_orgs();"
)
