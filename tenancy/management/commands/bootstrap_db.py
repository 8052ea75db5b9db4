"""Create the database, its owner and runtime roles, migrate as the owner and install the context key.

Idempotent: safe to run on every start. Needs an admin connection (a superuser; on PostgreSQL 16+ a
CREATEROLE role cannot re-assert NOSUPERUSER/NOBYPASSRLS, so use deploy/postgres/roles.sql instead) given by
--admin-url or DATABASE_ADMIN_URL; role names, passwords and the database name come from
DATABASE_URL (runtime role) and DATABASE_OWNER_URL (owner). deploy/postgres/roles.sql is the same thing for a
DBA who would rather read and run SQL.
"""

from __future__ import annotations

import os
from urllib.parse import unquote, urlsplit

import psycopg
from django.conf import settings
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError
from psycopg import sql

from tenancy.context import context_key_pads


def _parts(url: str) -> dict:
    parsed = urlsplit(url)
    return {
        "user": unquote(parsed.username or ""),
        "password": unquote(parsed.password or ""),
        "dbname": parsed.path.lstrip("/"),
    }


def _admin_conninfo(admin_url: str, dbname: str | None = None) -> str:
    info = psycopg.conninfo.conninfo_to_dict(admin_url)
    if dbname:
        info["dbname"] = dbname
    return psycopg.conninfo.make_conninfo("", **info)


def policy_role(owner: str) -> str:
    """The NOLOGIN BYPASSRLS role that owns the row policies' helper functions (clinic/rls.py)."""
    return f"{owner}_policy"


def grant_sql(owner: str, app: str, dbname: str) -> sql.Composed:
    o, a, d = sql.Identifier(owner), sql.Identifier(app), sql.Identifier(dbname)
    pol = sql.Identifier(policy_role(owner))
    return sql.SQL(";\n").join(
        [
            sql.SQL("REVOKE ALL ON DATABASE {} FROM PUBLIC").format(d),
            sql.SQL("GRANT CONNECT ON DATABASE {} TO {}").format(d, a),
            sql.SQL("GRANT CONNECT, CREATE ON DATABASE {} TO {}").format(d, o),
            sql.SQL("REVOKE CREATE ON SCHEMA public FROM PUBLIC"),
            sql.SQL("GRANT USAGE ON SCHEMA public TO {}").format(a),
            sql.SQL("GRANT USAGE, CREATE ON SCHEMA public TO {}").format(o),
            # Everything the owner creates is readable and writable by the runtime role, never truncatable.
            sql.SQL(
                "ALTER DEFAULT PRIVILEGES FOR ROLE {} IN SCHEMA public "
                "GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO {}"
            ).format(o, a),
            sql.SQL(
                "ALTER DEFAULT PRIVILEGES FOR ROLE {} IN SCHEMA public GRANT USAGE, SELECT ON SEQUENCES TO {}"
            ).format(o, a),
            sql.SQL("GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO {}").format(a),
            sql.SQL("REVOKE TRUNCATE, REFERENCES, TRIGGER ON ALL TABLES IN SCHEMA public FROM {}").format(a),
            sql.SQL("GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO {}").format(a),
            # The policy helpers' role (clinic/rls.py) reads, and only reads, what the row policies consult.
            # USAGE to read; CREATE because PostgreSQL requires it of a function's new owner (NOLOGIN: only the
            # owner role can act as it).
            sql.SQL("GRANT USAGE, CREATE ON SCHEMA public TO {}").format(pol),
            sql.SQL(
                "ALTER DEFAULT PRIVILEGES FOR ROLE {} IN SCHEMA public GRANT SELECT ON TABLES TO {}"
            ).format(o, pol),
            sql.SQL("GRANT SELECT ON ALL TABLES IN SCHEMA public TO {}").format(pol),
        ]
    )


class Command(BaseCommand):
    help = "Create the roles and database, migrate as the owner, and install the tenant context key."

    def add_arguments(self, parser):
        parser.add_argument("--admin-url", default=os.environ.get("DATABASE_ADMIN_URL", ""))
        parser.add_argument("--skip-migrate", action="store_true")
        parser.add_argument("--recreate", action="store_true", help="drop the database first (tests only)")

    def handle(self, *args, **options):
        admin_url = options["admin_url"]
        runtime = _parts(settings.DATABASE_URL)
        owner = _parts(settings.DATABASE_OWNER_URL)
        if not settings.DATABASE_OWNER_URL:
            raise CommandError(
                "bootstrap_db needs DATABASE_OWNER_URL (the role that owns the tables) besides DATABASE_URL"
            )
        if not runtime["user"] or not owner["user"]:
            raise CommandError("DATABASE_URL and DATABASE_OWNER_URL must each name a user")
        if runtime["user"] == owner["user"]:
            raise CommandError(
                "DATABASE_URL and DATABASE_OWNER_URL name the same role: the runtime role must not own the tables"
            )
        dbname = runtime["dbname"]
        if admin_url:
            self._create_roles_and_database(admin_url, runtime, owner, dbname, options["recreate"])
        else:
            self.stdout.write(
                "No admin URL: assuming the roles and database exist (deploy/postgres/roles.sql)."
            )
        if not options["skip_migrate"]:
            call_command("migrate", database="owner", interactive=False, verbosity=0)
            self.stdout.write("Migrated as the owner role.")
        self._install_context_key()
        self._verify_runtime_role(runtime["user"], owner["user"])
        self.stdout.write(self.style.SUCCESS(f"Database {dbname} ready: runtime role {runtime['user']}."))

    def _create_roles_and_database(self, admin_url, runtime, owner, dbname, recreate):
        with psycopg.connect(_admin_conninfo(admin_url, "postgres"), autocommit=True) as conn:
            for role, attrs in (
                (owner, "LOGIN NOSUPERUSER NOBYPASSRLS NOCREATEROLE NOCREATEDB"),
                (runtime, "LOGIN NOSUPERUSER NOBYPASSRLS NOCREATEROLE NOCREATEDB NOREPLICATION"),
            ):
                exists = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", [role["user"]]).fetchone()
                verb = "ALTER" if exists else "CREATE"
                statement = sql.SQL(f"{verb} ROLE {{}} WITH {attrs}").format(sql.Identifier(role["user"]))
                if role["password"]:
                    statement = sql.SQL("{} PASSWORD {}").format(statement, sql.Literal(role["password"]))
                conn.execute(statement)
            # Owns the policy helpers; nobody logs in as it. The owner may hand it functions (it could disable
            # RLS on its own tables anyway); the runtime role is never a member.
            helper = sql.Identifier(policy_role(owner["user"]))
            exists = conn.execute(
                "SELECT 1 FROM pg_roles WHERE rolname = %s", [policy_role(owner["user"])]
            ).fetchone()
            conn.execute(
                sql.SQL("{} ROLE {} WITH NOLOGIN BYPASSRLS NOSUPERUSER NOCREATEROLE NOCREATEDB").format(
                    sql.SQL("ALTER" if exists else "CREATE"), helper
                )
            )
            conn.execute(sql.SQL("GRANT {} TO {}").format(helper, sql.Identifier(owner["user"])))
            if recreate:
                conn.execute(
                    sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(dbname))
                )
            exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [dbname]).fetchone()
            if not exists:
                conn.execute(
                    sql.SQL("CREATE DATABASE {} OWNER {} ENCODING 'UTF8' TEMPLATE template0").format(
                        sql.Identifier(dbname), sql.Identifier(owner["user"])
                    )
                )
                self.stdout.write(f"Created database {dbname}.")
        with psycopg.connect(_admin_conninfo(admin_url, dbname), autocommit=True) as conn:
            conn.execute(grant_sql(owner["user"], runtime["user"], dbname))
        self.stdout.write(f"Roles {owner['user']} (owner) and {runtime['user']} (runtime) in place.")

    def _install_context_key(self):
        from django.db import connections

        ipad, opad = context_key_pads(settings.TENANCY_CONTEXT_KEY)
        with connections["owner"].cursor() as cursor:
            cursor.execute(
                "INSERT INTO tenancy_private.context_key (id, ipad, opad) VALUES (1, %s, %s) "
                "ON CONFLICT (id) DO UPDATE SET ipad = EXCLUDED.ipad, opad = EXCLUDED.opad, installed_at = now() "
                "WHERE tenancy_private.context_key.ipad IS DISTINCT FROM EXCLUDED.ipad",
                [ipad, opad],
            )
        self.stdout.write("Tenant context key installed.")

    def _verify_runtime_role(self, runtime_user: str, owner_user: str):
        from django.db import connections

        with connections["default"].cursor() as cursor:
            cursor.execute(
                "SELECT current_user, rolsuper, rolbypassrls FROM pg_roles WHERE rolname = current_user"
            )
            user, is_super, bypass = cursor.fetchone()
        if user != runtime_user or is_super or bypass:
            raise CommandError(
                f"the server would connect as {user} (superuser={is_super}, bypassrls={bypass}): refusing"
            )
