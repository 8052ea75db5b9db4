-- The audit database and its three roles: the SQL a DBA reviews and runs once per deployment.
--
-- This is what `python manage.py bootstrap_audit_db --admin-url ...` does in
-- audit/management/commands/bootstrap_audit_db.py (_create), written out so it can be read, reviewed and run
-- by hand. The tables, triggers, partitions and table grants are NOT created here: `bootstrap_audit_db` run
-- WITHOUT an admin URL installs them as the audit owner (audit/store.py, install_schema), see README.md.
--
-- Run as a superuser, or as a managed service's admin role with CREATEROLE and CREATEDB, connected to any
-- database of the cluster that will hold the audit log (it may be another cluster than the application's):
--
--   psql "postgresql://admin@audit-db.internal/postgres" -v ON_ERROR_STOP=1 \
--        -v audit_owner_password="$AUDIT_OWNER_PASSWORD" -v audit_writer_password="$AUDIT_WRITER_PASSWORD" \
--        -v audit_reader_password="$AUDIT_READER_PASSWORD" \
--        [-v audit_owner_role=telemed_audit_owner -v audit_writer_role=telemed_audit_writer \
--         -v audit_reader_role=telemed_audit_reader -v audit_dbname=telemed_audit] \
--        -f deploy/postgres/audit-roles.sql
--
-- Idempotent: running it again creates nothing twice and resets the roles' attributes and passwords.
-- The roles (ADR 0010):
--   audit owner   owns the database and, once bootstrap_audit_db has run, the tables. Used only for schema
--                 changes (AUDIT_OWNER_DATABASE_URL). The triggers refuse it UPDATE, DELETE and TRUNCATE too.
--   audit writer  the shipper (AUDIT_DATABASE_URL): INSERT only, no SELECT.
--   audit reader  exports and the auditor API (AUDIT_READER_DATABASE_URL): SELECT only.

\set ON_ERROR_STOP on

\if :{?audit_owner_role}
\else
  \set audit_owner_role telemed_audit_owner
\endif
\if :{?audit_writer_role}
\else
  \set audit_writer_role telemed_audit_writer
\endif
\if :{?audit_reader_role}
\else
  \set audit_reader_role telemed_audit_reader
\endif
\if :{?audit_dbname}
\else
  \set audit_dbname telemed_audit
\endif
\if :{?audit_owner_password}
\else
  \set audit_owner_password ''
\endif
\if :{?audit_writer_password}
\else
  \set audit_writer_password ''
\endif
\if :{?audit_reader_password}
\else
  \set audit_reader_password ''
\endif

-- Stop before changing anything when a password is missing or two roles share a name (bootstrap_audit_db
-- refuses the same). psql exits with status 3.
SELECT format('DO $m$ BEGIN RAISE EXCEPTION %L; END $m$', problem)
FROM (VALUES
    (:'audit_owner_password' = '' OR :'audit_writer_password' = '' OR :'audit_reader_password' = '',
     'audit-roles.sql: pass -v audit_owner_password=... -v audit_writer_password=... -v audit_reader_password=...'),
    (:'audit_owner_role' IN (:'audit_writer_role', :'audit_reader_role') OR :'audit_writer_role' = :'audit_reader_role',
     'audit-roles.sql: the audit owner, writer and reader must be three different roles')
) AS checks (failed, problem)
WHERE failed
\gexec

-- 1. The roles: may log in, nothing else. (bootstrap_audit_db does not say NOREPLICATION; it is the default,
--    and saying it here also resets a role that had it.)
SELECT rolsuper AS admin_is_superuser FROM pg_roles WHERE rolname = current_user
\gset
SELECT format('CREATE ROLE %I WITH LOGIN NOSUPERUSER NOBYPASSRLS NOCREATEROLE NOCREATEDB NOREPLICATION',
              name)
FROM (VALUES (:'audit_owner_role'), (:'audit_writer_role'), (:'audit_reader_role')) AS r (name)
WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = name)
\gexec
\if :admin_is_superuser
ALTER ROLE :"audit_owner_role" WITH LOGIN NOSUPERUSER NOBYPASSRLS NOCREATEROLE NOCREATEDB NOREPLICATION;
ALTER ROLE :"audit_writer_role" WITH LOGIN NOSUPERUSER NOBYPASSRLS NOCREATEROLE NOCREATEDB NOREPLICATION;
ALTER ROLE :"audit_reader_role" WITH LOGIN NOSUPERUSER NOBYPASSRLS NOCREATEROLE NOCREATEDB NOREPLICATION;
\else
-- Not a superuser: set what PostgreSQL lets a CREATEROLE admin set, check the rest below, and become a
-- member of the audit owner (PostgreSQL 16+ requires it for CREATE DATABASE ... OWNER).
ALTER ROLE :"audit_owner_role" WITH LOGIN NOCREATEROLE NOCREATEDB;
ALTER ROLE :"audit_writer_role" WITH LOGIN NOCREATEROLE NOCREATEDB;
ALTER ROLE :"audit_reader_role" WITH LOGIN NOCREATEROLE NOCREATEDB;
GRANT :"audit_owner_role" TO CURRENT_USER;
\endif
SELECT format('DO $m$ BEGIN RAISE EXCEPTION %L; END $m$',
              format('audit-roles.sql: role %s is a superuser or has BYPASSRLS or REPLICATION; a superuser '
                     'must remove that first', rolname))
FROM pg_roles
WHERE rolname IN (:'audit_owner_role', :'audit_writer_role', :'audit_reader_role')
  AND (rolsuper OR rolbypassrls OR rolreplication)
\gexec
-- Membership would hand one role another's rights: the writer could read, the reader could write, and either
-- could act as the owner (who can disable the triggers).
SELECT format('DO $m$ BEGIN RAISE EXCEPTION %L; END $m$',
              format('audit-roles.sql: %s is a member of %s; revoke that first', member, granted))
FROM (VALUES (:'audit_writer_role', :'audit_owner_role'), (:'audit_reader_role', :'audit_owner_role'),
             (:'audit_writer_role', :'audit_reader_role'), (:'audit_reader_role', :'audit_writer_role'))
     AS pairs (member, granted)
WHERE pg_has_role(member, granted, 'MEMBER')
\gexec

-- Passwords (see roles.sql: pass SCRAM verifiers if statements are logged).
ALTER ROLE :"audit_owner_role" WITH PASSWORD :'audit_owner_password';
ALTER ROLE :"audit_writer_role" WITH PASSWORD :'audit_writer_password';
ALTER ROLE :"audit_reader_role" WITH PASSWORD :'audit_reader_password';

-- 2. The database, owned by the audit owner.
SELECT format('CREATE DATABASE %I OWNER %I ENCODING %L TEMPLATE template0',
              :'audit_dbname', :'audit_owner_role', 'UTF8')
WHERE NOT EXISTS (SELECT 1 FROM pg_database WHERE datname = :'audit_dbname')
\gexec

-- 3. Only the writer and the reader connect (besides the owner); nobody else, and no temporary tables.
REVOKE ALL ON DATABASE :"audit_dbname" FROM PUBLIC;
GRANT CONNECT ON DATABASE :"audit_dbname" TO :"audit_writer_role", :"audit_reader_role";

-- Not in bootstrap_audit_db: PostgreSQL 15+ already starts this way, older clusters let every role create
-- tables in public. bootstrap_audit_db grants USAGE on public to the writer and the reader itself.
\connect :"audit_dbname"
REVOKE CREATE ON SCHEMA public FROM PUBLIC;

-- 4. What was set up.
SELECT rolname, rolsuper, rolbypassrls, rolcreaterole, rolcreatedb, rolreplication, rolcanlogin
FROM pg_roles WHERE rolname IN (:'audit_owner_role', :'audit_writer_role', :'audit_reader_role')
ORDER BY rolname;
\echo 'Next, as the audit owner: AUDIT_OWNER_DATABASE_URL=... AUDIT_DATABASE_URL=... AUDIT_READER_DATABASE_URL=... python manage.py bootstrap_audit_db'
