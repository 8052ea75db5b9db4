"""Create the audit database, its owner, writer and reader roles, and install its schema. Idempotent.

Role names, passwords and the database name come from AUDIT_OWNER_DATABASE_URL, AUDIT_DATABASE_URL (writer)
and AUDIT_READER_DATABASE_URL; --admin-url (or DATABASE_ADMIN_URL) names a superuser connection. Without an
admin URL the roles and database must exist (a DBA's job); the schema is installed as the owner either way.
"""

from __future__ import annotations

import os
from urllib.parse import unquote, urlsplit

import psycopg
from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from psycopg import sql

from audit import store


def _parts(url: str) -> dict:
    parsed = urlsplit(url)
    return {
        "user": unquote(parsed.username or ""),
        "password": unquote(parsed.password or ""),
        "dbname": parsed.path.lstrip("/"),
    }


class Command(BaseCommand):
    help = "Create the audit database and roles (idempotent) and install the append-only schema."

    def add_arguments(self, parser):
        parser.add_argument("--admin-url", default=os.environ.get("DATABASE_ADMIN_URL", ""))
        parser.add_argument("--recreate", action="store_true", help="drop the audit database first (tests)")

    def handle(self, *args, **options):
        urls = (
            settings.AUDIT_OWNER_DATABASE_URL,
            settings.AUDIT_DATABASE_URL,
            settings.AUDIT_READER_DATABASE_URL,
        )
        if not all(urls):
            raise CommandError(
                "set AUDIT_OWNER_DATABASE_URL, AUDIT_DATABASE_URL and AUDIT_READER_DATABASE_URL"
            )
        owner, writer, reader = (_parts(u) for u in urls)
        if len({owner["user"], writer["user"], reader["user"]}) != 3:
            raise CommandError("the audit owner, writer and reader must be three different roles")
        if options["admin_url"]:
            self._create(options["admin_url"], owner, writer, reader, options["recreate"])
        with store.owner() as conn:
            store.install_schema(conn, writer["user"], reader["user"])
        self.stdout.write(
            self.style.SUCCESS(
                f"Audit database {owner['dbname']} ready: writer {writer['user']} (INSERT only), "
                f"reader {reader['user']} (SELECT only)."
            )
        )

    def _create(self, admin_url, owner, writer, reader, recreate):
        info = psycopg.conninfo.conninfo_to_dict(admin_url)
        info["dbname"] = "postgres"
        with psycopg.connect(psycopg.conninfo.make_conninfo("", **info), autocommit=True) as conn:
            for role in (owner, writer, reader):
                exists = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", [role["user"]]).fetchone()
                statement = sql.SQL(
                    "{} ROLE {} WITH LOGIN NOSUPERUSER NOBYPASSRLS NOCREATEROLE NOCREATEDB"
                ).format(sql.SQL("ALTER" if exists else "CREATE"), sql.Identifier(role["user"]))
                if role["password"]:
                    statement = sql.SQL("{} PASSWORD {}").format(statement, sql.Literal(role["password"]))
                conn.execute(statement)
            name = sql.Identifier(owner["dbname"])
            if recreate:
                conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(name))
            if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [owner["dbname"]]).fetchone():
                conn.execute(
                    sql.SQL("CREATE DATABASE {} OWNER {} ENCODING 'UTF8' TEMPLATE template0").format(
                        name, sql.Identifier(owner["user"])
                    )
                )
            conn.execute(sql.SQL("REVOKE ALL ON DATABASE {} FROM PUBLIC").format(name))
            conn.execute(
                sql.SQL("GRANT CONNECT ON DATABASE {} TO {}, {}").format(
                    name, sql.Identifier(writer["user"]), sql.Identifier(reader["user"])
                )
            )
