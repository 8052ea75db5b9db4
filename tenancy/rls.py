"""Row-level security: the context-verifying functions and the migration operation for tenant tables.

Policy shape follows what the planner can use: each context value is read through `(SELECT app_org_id())`,
an init-plan evaluated once per statement, and compared with an indexed `org_id` column.
"""

from __future__ import annotations

from django.db import migrations

# The HMAC key lives in a schema the runtime role cannot read; only its two pads are stored, because
# PostgreSQL has sha256() built in but no hmac() without pgcrypto (which the embedded server lacks).
CONTEXT_KEY_SQL = r"""
CREATE SCHEMA IF NOT EXISTS tenancy_private;
REVOKE ALL ON SCHEMA tenancy_private FROM PUBLIC;
CREATE TABLE IF NOT EXISTS tenancy_private.context_key (
    id smallint PRIMARY KEY CHECK (id = 1),
    ipad bytea NOT NULL CHECK (length(ipad) = 64),
    opad bytea NOT NULL CHECK (length(opad) = 64),
    installed_at timestamptz NOT NULL DEFAULT now()
);
REVOKE ALL ON tenancy_private.context_key FROM PUBLIC;
"""

# The policy accessors. Each verifies the signature itself, in one SECURITY DEFINER call per statement
# (policies call them as init-plans); a two-layer design cost twice as much (tests/bench/test_tenant_scope.py).
# No context: NULL, so every comparison fails and no row matches. A bad or expired context: an error.
_ACCESSOR = r"""
CREATE OR REPLACE FUNCTION public.{name}{returns}
LANGUAGE plpgsql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    raw text := nullif(current_setting('app.context', true), '');
    cut int;
    body text;
    parts text[];
    k record;
BEGIN
    IF raw IS NULL THEN
        RETURN{none};
    END IF;
    cut := length(raw) - strpos(reverse(raw), '|');
    body := left(raw, cut);
    SELECT ipad, opad INTO k FROM tenancy_private.context_key WHERE id = 1;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'tenant context key is not installed (run manage.py bootstrap_db)'
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    IF encode(sha256(k.opad || sha256(k.ipad || convert_to(body, 'UTF8'))), 'hex')
            IS DISTINCT FROM substr(raw, cut + 2) THEN
        RAISE EXCEPTION 'tenant context signature is invalid' USING ERRCODE = 'insufficient_privilege';
    END IF;
    parts := string_to_array(body, '|');
    IF coalesce(array_length(parts, 1), 0) <> 6 OR parts[1] <> 'v1' THEN
        RAISE EXCEPTION 'tenant context has an unknown format' USING ERRCODE = 'insufficient_privilege';
    END IF;
    IF parts[6]::bigint < extract(epoch FROM now()) THEN
        RAISE EXCEPTION 'tenant context has expired' USING ERRCODE = 'insufficient_privilege';
    END IF;
    {done}
END
$fn$;
"""

SINGLE_LAYER_ACCESSORS_SQL = "".join(
    _ACCESSOR.format(name=name, returns=f"() RETURNS {type_}", none=" NULL", done=f"RETURN {value};")
    for name, type_, value in (
        ("app_org_id", "uuid", "nullif(parts[2], '')::uuid"),
        ("app_user_id", "uuid", "nullif(parts[3], '')::uuid"),
        ("app_role", "text", "parts[4]"),
        ("app_purpose", "text", "parts[5]"),
    )
)

# The whole context from one verification, for the policy helpers that read several of its values: each
# accessor above verifies the signature again (about 8 µs), and a helper read three or four of them per call.
APP_CONTEXT_SQL = _ACCESSOR.format(
    name="app_context",
    returns="(OUT org_id uuid, OUT user_id uuid, OUT role text, OUT purpose text)",
    none="",
    done="org_id := nullif(parts[2], '')::uuid; user_id := nullif(parts[3], '')::uuid; role := parts[4];\n"
    "    purpose := parts[5];",
)
DROP_APP_CONTEXT_SQL = "DROP FUNCTION IF EXISTS public.app_context();"

CONTEXT_FUNCTIONS_SQL = CONTEXT_KEY_SQL + SINGLE_LAYER_ACCESSORS_SQL

DROP_CONTEXT_FUNCTIONS_SQL = """
DROP FUNCTION IF EXISTS public.app_purpose();
DROP FUNCTION IF EXISTS public.app_role();
DROP FUNCTION IF EXISTS public.app_user_id();
DROP FUNCTION IF EXISTS public.app_org_id();
DROP TABLE IF EXISTS tenancy_private.context_key;
DROP SCHEMA IF EXISTS tenancy_private;
"""

ORG_MATCH = "org_id = (SELECT public.app_org_id())"

ORGANIZATION_POLICIES_SQL = """
ALTER TABLE tenancy_organization ENABLE ROW LEVEL SECURITY;
ALTER TABLE tenancy_organization FORCE ROW LEVEL SECURITY;
CREATE POLICY org_select ON tenancy_organization FOR SELECT
    USING (id = (SELECT public.app_org_id()) OR (SELECT public.app_role()) = 'platform');
CREATE POLICY org_insert ON tenancy_organization FOR INSERT
    WITH CHECK ((SELECT public.app_role()) = 'platform');
CREATE POLICY org_update ON tenancy_organization FOR UPDATE
    USING ((id = (SELECT public.app_org_id()) AND (SELECT public.app_role()) = 'org_admin')
           OR (SELECT public.app_role()) = 'platform')
    WITH CHECK ((id = (SELECT public.app_org_id()) AND (SELECT public.app_role()) = 'org_admin')
           OR (SELECT public.app_role()) = 'platform');
CREATE POLICY org_delete ON tenancy_organization FOR DELETE
    USING ((SELECT public.app_role()) = 'platform');
"""


PLATFORM = "(SELECT public.app_role()) = 'platform'"


def tenant_policy_sql(
    table: str,
    platform: bool = False,
    rules: dict[str, str] | None = None,
    restrictive: list[str] | None = None,
) -> str:
    """ENABLE + FORCE RLS and one policy per command, each with the org check (and WITH CHECK on writes).

    `platform` also admits the operators' platform context (hostname routing data only). `rules` narrows a
    command further: {"select": expr, ...} becomes `org check AND (expr)`; "update_check" is the rule for the
    row an UPDATE leaves behind, when it differs from the rule for the row it may touch. `restrictive` adds RESTRICTIVE
    SELECT policies, which every row must pass whatever the permissive ones allow (consent, for example).
    """
    rules = rules or {}

    def rule(cmd: str) -> str:
        base = f"({ORG_MATCH} OR {PLATFORM})" if platform else ORG_MATCH
        return f"{base} AND ({rules[cmd]})" if cmd in rules else base

    check = "update_check" if "update_check" in rules else "update"  # the new row's rule, if it differs
    sql = f"""
ALTER TABLE {table} ENABLE ROW LEVEL SECURITY;
ALTER TABLE {table} FORCE ROW LEVEL SECURITY;
DROP POLICY IF EXISTS tenant_select ON {table};
DROP POLICY IF EXISTS tenant_insert ON {table};
DROP POLICY IF EXISTS tenant_update ON {table};
DROP POLICY IF EXISTS tenant_delete ON {table};
CREATE POLICY tenant_select ON {table} FOR SELECT USING ({rule("select")});
CREATE POLICY tenant_insert ON {table} FOR INSERT WITH CHECK ({rule("insert")});
CREATE POLICY tenant_update ON {table} FOR UPDATE USING ({rule("update")}) WITH CHECK ({rule(check)});
CREATE POLICY tenant_delete ON {table} FOR DELETE USING ({rule("delete")});
"""
    for i, expression in enumerate(restrictive or []):
        sql += f"""
DROP POLICY IF EXISTS tenant_restrict_{i} ON {table};
CREATE POLICY tenant_restrict_{i} ON {table} AS RESTRICTIVE FOR SELECT USING ({expression});
"""
    return sql


def disable_policy_sql(table: str) -> str:
    return f"""
DROP POLICY IF EXISTS tenant_select ON {table};
DROP POLICY IF EXISTS tenant_insert ON {table};
DROP POLICY IF EXISTS tenant_update ON {table};
DROP POLICY IF EXISTS tenant_delete ON {table};
ALTER TABLE {table} NO FORCE ROW LEVEL SECURITY;
ALTER TABLE {table} DISABLE ROW LEVEL SECURITY;
"""


def _is_tenant_model(model) -> bool:
    return any(f.name == "org" and f.is_relation for f in model._meta.fields) and model._meta.label_lower != (
        "tenancy.organization"
    )


class EnableTenantRLS(migrations.operations.base.Operation):
    """Turn a tenant model's table into an isolated one.

    ENABLE and FORCE row-level security (FORCE so the owner is bound too), a policy for every command with the
    org check on reads and WITH CHECK on writes, and for each foreign key to another tenant table a composite
    foreign key `(org_id, fk) -> (org_id, id)` so no row can point at another organization's row.
    Re-runnable: apply it again after adding a foreign key.
    """

    reversible = True

    def __init__(
        self,
        model_name: str,
        platform: bool = False,
        rules: dict[str, str] | None = None,
        restrictive: list[str] | None = None,
    ):
        self.model_name = model_name
        self.platform = platform
        self.rules = rules or {}
        self.restrictive = restrictive or []

    def state_forwards(self, app_label, state):
        pass

    def _sql(self, model) -> list[str]:
        table = model._meta.db_table
        statements = [tenant_policy_sql(table, self.platform, self.rules, self.restrictive)]
        for f in model._meta.fields:
            if not f.is_relation or f.name == "org" or not (f.many_to_one or f.one_to_one):
                continue
            target = f.related_model
            if not _is_tenant_model(target):
                continue
            name = f"{table}_{f.column}_same_org"[:63]
            statements.append(
                f"ALTER TABLE {table} DROP CONSTRAINT IF EXISTS {name};"
                f"ALTER TABLE {table} ADD CONSTRAINT {name} FOREIGN KEY (org_id, {f.column}) "
                f"REFERENCES {target._meta.db_table} (org_id, id) ON DELETE NO ACTION;"
            )
        return statements

    def database_forwards(self, app_label, schema_editor, from_state, to_state):
        model = to_state.apps.get_model(app_label, self.model_name)
        for statement in self._sql(model):
            schema_editor.execute(statement)

    def database_backwards(self, app_label, schema_editor, from_state, to_state):
        model = from_state.apps.get_model(app_label, self.model_name)
        schema_editor.execute(disable_policy_sql(model._meta.db_table))

    def describe(self):
        return f"Enable tenant row-level security on {self.model_name}"

    def deconstruct(self):
        kwargs: dict[str, object] = {"model_name": self.model_name}
        if self.platform:
            kwargs["platform"] = True
        if self.rules:
            kwargs["rules"] = self.rules
        if self.restrictive:
            kwargs["restrictive"] = self.restrictive
        return (self.__class__.__name__, [], kwargs)


def owned_by_policy_role(*functions: str) -> str:
    """SQL handing SECURITY DEFINER helper functions to the NOLOGIN BYPASSRLS role `<owner>_policy` (ADR 0009),
    so that they read past row-level security; fails loudly if bootstrap_db has not created that role."""
    alters = "".join(
        f"    EXECUTE format('ALTER FUNCTION {function} OWNER TO %I', policy_role);\n"
        for function in functions
    )
    return f"""
DO $do$
DECLARE
    policy_role text := current_user || '_policy';
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = policy_role AND rolbypassrls) THEN
        RAISE EXCEPTION 'role % (NOLOGIN BYPASSRLS) is missing: run manage.py bootstrap_db or deploy/postgres/roles.sql',
            policy_role;
    END IF;
{alters}END
$do$;
"""


# Whether the signed-in user must keep MFA: any of their active memberships, in any organization, requires it.
# SECURITY DEFINER and owned by the policy role (ADR 0009), because row-level security rightly hides the other
# organizations' memberships; it answers one boolean, only for the verified context's user, and names nothing.
MFA_REQUIRED_HELPER_SQL = r"""
CREATE OR REPLACE FUNCTION public.tenancy_my_mfa_required() RETURNS boolean
LANGUAGE sql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $fn$
    SELECT EXISTS (
        SELECT 1 FROM public.tenancy_membership m JOIN public.tenancy_organization o ON o.id = m.org_id
        WHERE m.user_id = public.app_user_id() AND m.is_active AND o.require_mfa
    )
$fn$;

""" + owned_by_policy_role("public.tenancy_my_mfa_required()")

DROP_MFA_REQUIRED_HELPER_SQL = "DROP FUNCTION IF EXISTS public.tenancy_my_mfa_required();"

# Invitations: administrators create, list and revoke them; the signed-out context of the organization's host
# reads and updates one when the invited person accepts. No other role has any use for them.
INVITATION_RULES = {
    "select": "(SELECT public.app_role()) IN ('org_admin', 'anonymous', 'platform')",
    "insert": "(SELECT public.app_role()) IN ('org_admin', 'platform')",
    "update": "(SELECT public.app_role()) IN ('org_admin', 'anonymous', 'platform')",
    "delete": "(SELECT public.app_role()) = 'platform'",
}

# The database's half of a bearer token a worker already knows (tenancy.services.known_token): sent in the same
# statement as the request's context (tenancy.context), it refuses the whole transaction (SQLSTATE 28000)
# unless the token is still in force for exactly the signed context's organization, user and role: unrevoked,
# unexpired, not idle, its membership active with that role and not revoked by a lockout since the token was
# issued, its user active. So a revocation on any worker, or straight in the database, stops the next request
# on every worker, with no lookup of its own. It answers nothing (void) and reads only the context's own token.
TOKEN_IN_FORCE_SQL = r"""
CREATE OR REPLACE FUNCTION public.tenancy_token_in_force(token_hash text) RETURNS void
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $fn$
DECLARE
    ctx record;
    in_force boolean;
BEGIN
    SELECT * INTO ctx FROM public.app_context();
    SELECT true INTO in_force
    FROM public.tenancy_apitoken t
    JOIN public.tenancy_membership m ON m.id = t.membership_id AND m.org_id = t.org_id
    JOIN public.tenancy_user u ON u.id = t.user_id
    JOIN public.tenancy_organization o ON o.id = t.org_id
    WHERE t.key_hash = token_hash AND t.org_id = ctx.org_id AND t.user_id = ctx.user_id
      AND t.revoked_at IS NULL AND t.expires_at > clock_timestamp()
      AND t.last_used_at + make_interval(mins => o.idle_timeout_minutes) > clock_timestamp()
      AND m.is_active AND m.role = ctx.role AND u.is_active
      AND (m.sessions_revoked_at IS NULL OR t.created_at > m.sessions_revoked_at);
    IF in_force IS NULL THEN
        RAISE EXCEPTION 'the bearer token is no longer in force'
            USING ERRCODE = 'invalid_authorization_specification';
    END IF;
END
$fn$;

""" + owned_by_policy_role("public.tenancy_token_in_force(text)")

DROP_TOKEN_IN_FORCE_SQL = "DROP FUNCTION IF EXISTS public.tenancy_token_in_force(text);"
