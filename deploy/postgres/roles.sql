-- Roles and database for the telemedicine backend: the SQL a DBA reviews and runs once per database.
--
-- This is what `python manage.py bootstrap_db --admin-url ...` does in
-- tenancy/management/commands/bootstrap_db.py (_create_roles_and_database and grant_sql), written out so
-- it can be read, reviewed and run by hand. Afterwards the application's `bootstrap_db` runs WITHOUT an
-- admin URL: it migrates as the owner role and installs the tenant context key (deploy/postgres/README.md).
--
-- Run as a superuser, or as a managed service's admin role with CREATEROLE and CREATEDB (README.md),
-- connected to any database of the cluster, usually `postgres`:
--
--   psql "postgresql://admin@db.internal/postgres" -v ON_ERROR_STOP=1 \
--        -v owner_password="$OWNER_PASSWORD" -v app_password="$APP_PASSWORD" \
--        [-v owner_role=telemed_owner -v app_role=telemed_app -v dbname=telemed] \
--        -f deploy/postgres/roles.sql
--
-- Idempotent: running it again creates nothing twice and resets the roles' attributes and passwords.
-- The roles:
--   owner   owns the database, the schema objects and the tables; runs migrations. Never used by the server.
--   app     the runtime role the server connects as (DATABASE_URL). Not the owner, not a superuser, no
--           BYPASSRLS, no TRUNCATE: row-level security binds it.
--   <owner>_policy  NOLOGIN BYPASSRLS: owns the SECURITY DEFINER helpers the clinic's row policies call
--           (clinic/rls.py; ADR 0009). Granted to the owner, never to the runtime role. Its name is the owner's
--           name plus `_policy`, because the migration looks for exactly that role.
--
-- The separate audit database and its three roles are in audit-roles.sql (they may live on another cluster).

\set ON_ERROR_STOP on

-- Defaults for the names; passwords have none and must be given.
\if :{?owner_role}
\else
  \set owner_role telemed_owner
\endif
\if :{?app_role}
\else
  \set app_role telemed_app
\endif
\if :{?dbname}
\else
  \set dbname telemed
\endif
\if :{?owner_password}
\else
  \set owner_password ''
\endif
\if :{?app_password}
\else
  \set app_password ''
\endif

-- Stop before changing anything when a password is missing, or when the runtime role would be the owner
-- (row-level security would then no longer bind the server). psql exits with status 3.
SELECT format('DO $m$ BEGIN RAISE EXCEPTION %L; END $m$', problem)
FROM (VALUES
    (:'owner_password' = '' OR :'app_password' = '',
     'roles.sql: pass -v owner_password=... and -v app_password=...'),
    (:'owner_role' = :'app_role', 'roles.sql: owner_role and app_role must be different roles')
) AS checks (failed, problem)
WHERE failed
\gexec

-- 1. The roles. CREATE with the attributes if missing; if present, ALTER so the attributes (and passwords)
--    are what this file says even when a role already existed with more power.
--    Owner: may log in (for migrations), nothing else. NOBYPASSRLS matters because the tables use
--    FORCE ROW LEVEL SECURITY, so even the owner sees rows only through the policies.
--    Runtime: may log in, nothing else. A superuser or a BYPASSRLS role would skip every policy.
SELECT rolsuper AS admin_is_superuser FROM pg_roles WHERE rolname = current_user
\gset
SELECT format('CREATE ROLE %I WITH LOGIN NOSUPERUSER NOBYPASSRLS NOCREATEROLE NOCREATEDB NOREPLICATION',
              name)
FROM (VALUES (:'owner_role'), (:'app_role')) AS r (name)
WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = name)
\gexec
\if :admin_is_superuser
ALTER ROLE :"owner_role" WITH LOGIN NOSUPERUSER NOBYPASSRLS NOCREATEROLE NOCREATEDB NOREPLICATION;
ALTER ROLE :"app_role" WITH LOGIN NOSUPERUSER NOBYPASSRLS NOCREATEROLE NOCREATEDB NOREPLICATION;
\else
-- Not a superuser (a managed service's admin with CREATEROLE and CREATEDB): PostgreSQL lets it change
-- neither SUPERUSER, BYPASSRLS nor REPLICATION, so set what it may and check the rest below.
ALTER ROLE :"owner_role" WITH LOGIN NOCREATEROLE NOCREATEDB;
ALTER ROLE :"app_role" WITH LOGIN NOCREATEROLE NOCREATEDB;
-- CREATE DATABASE ... OWNER, ALTER DEFAULT PRIVILEGES FOR ROLE and granting on the owner's tables all need
-- the admin to act as the owner role: make the admin a member of it (never the runtime role).
GRANT :"owner_role" TO CURRENT_USER;
\endif
SELECT format('DO $m$ BEGIN RAISE EXCEPTION %L; END $m$',
              format('roles.sql: role %s is a superuser or has BYPASSRLS or REPLICATION; a superuser must '
                     'remove that first', rolname))
FROM pg_roles
WHERE rolname IN (:'owner_role', :'app_role') AND (rolsuper OR rolbypassrls OR rolreplication)
\gexec
-- The runtime role must not be able to act as the owner (membership would make it the owner for RLS).
SELECT format('DO $m$ BEGIN RAISE EXCEPTION %L; END $m$',
              'roles.sql: ' || :'app_role' || ' is a member of ' || :'owner_role' || '; revoke that first')
WHERE pg_has_role(:'app_role', :'owner_role', 'MEMBER')
\gexec

-- The policy helpers' role. Creating a BYPASSRLS role (or giving a role BYPASSRLS) takes a superuser, or on
-- PostgreSQL 16 and later an admin that has BYPASSRLS itself: stop with a clear message otherwise.
\set policy_role :owner_role '_policy'
SELECT rolbypassrls AS admin_has_bypassrls FROM pg_roles WHERE rolname = current_user
\gset
SELECT format('DO $m$ BEGIN RAISE EXCEPTION %L; END $m$',
              format('roles.sql: creating %s (NOLOGIN BYPASSRLS) takes a superuser, or on PostgreSQL 16+ an '
                     'admin with BYPASSRLS; have one run: CREATE ROLE %I WITH NOLOGIN BYPASSRLS; GRANT %I TO %I',
                     :'policy_role', :'policy_role', :'policy_role', :'owner_role'))
WHERE NOT :'admin_is_superuser'::boolean AND NOT :'admin_has_bypassrls'::boolean
  AND NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = :'policy_role' AND rolbypassrls)
\gexec
SELECT format('CREATE ROLE %I WITH NOLOGIN BYPASSRLS NOSUPERUSER NOCREATEROLE NOCREATEDB NOREPLICATION',
              :'policy_role')
WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = :'policy_role')
\gexec
\if :admin_is_superuser
ALTER ROLE :"policy_role" WITH NOLOGIN BYPASSRLS NOSUPERUSER NOCREATEROLE NOCREATEDB NOREPLICATION;
\else
-- Not a superuser: change only what differs (PostgreSQL 16+ lets a CREATEROLE admin alter a role only with
-- ADMIN OPTION on it, and set BYPASSRLS only if it has BYPASSRLS); the check below covers the rest.
SELECT format('ALTER ROLE %I WITH NOLOGIN NOCREATEROLE NOCREATEDB%s', rolname,
              CASE WHEN rolbypassrls THEN '' ELSE ' BYPASSRLS' END)
FROM pg_roles
WHERE rolname = :'policy_role' AND (rolcanlogin OR rolcreaterole OR rolcreatedb OR NOT rolbypassrls)
\gexec
\endif
-- The owner hands the helpers to it (ALTER FUNCTION ... OWNER TO needs membership). The owner could disable
-- row-level security on its own tables anyway, so this gives it nothing new.
SELECT format('GRANT %I TO %I', :'policy_role', :'owner_role')
WHERE NOT pg_has_role(:'owner_role', :'policy_role', 'MEMBER')
\gexec
SELECT format('DO $m$ BEGIN RAISE EXCEPTION %L; END $m$',
              format('roles.sql: role %s must be NOLOGIN BYPASSRLS and neither SUPERUSER nor REPLICATION',
                     rolname))
FROM pg_roles
WHERE rolname = :'policy_role' AND (rolcanlogin OR NOT rolbypassrls OR rolsuper OR rolreplication)
\gexec
-- The runtime role must never act as the policy role: BYPASSRLS would skip every policy.
SELECT format('DO $m$ BEGIN RAISE EXCEPTION %L; END $m$',
              'roles.sql: ' || :'app_role' || ' is a member of ' || :'policy_role' || '; revoke that first')
WHERE pg_has_role(:'app_role', :'policy_role', 'MEMBER')
\gexec

-- Passwords. A password in a statement can reach the server log when log_statement is 'ddl' or 'all';
-- to avoid that, pass SCRAM verifiers (what pg_authid stores) instead of plain passwords, or leave these
-- two lines out and set the passwords with psql's \password.
ALTER ROLE :"owner_role" WITH PASSWORD :'owner_password';
ALTER ROLE :"app_role" WITH PASSWORD :'app_password';

-- 2. The database, owned by the owner role (so migrations may create schemas such as tenancy_private).
--    CREATE DATABASE cannot run in a transaction or a DO block, hence \gexec.
SELECT format('CREATE DATABASE %I OWNER %I ENCODING %L TEMPLATE template0', :'dbname', :'owner_role', 'UTF8')
WHERE NOT EXISTS (SELECT 1 FROM pg_database WHERE datname = :'dbname')
\gexec

-- 3. Grants inside the database (bootstrap_db.grant_sql, statement for statement).
\connect :"dbname"

-- Nobody connects (or creates temporary tables) unless granted below: PUBLIC has CONNECT and TEMPORARY on
-- a new database by default. The runtime role gets CONNECT only, so it cannot create temporary tables.
REVOKE ALL ON DATABASE :"dbname" FROM PUBLIC;
GRANT CONNECT ON DATABASE :"dbname" TO :"app_role";
-- The owner also creates schemas (migrations create tenancy_private). It owns the database anyway; the
-- explicit grant keeps this true if ownership is ever moved to a DBA role.
GRANT CONNECT, CREATE ON DATABASE :"dbname" TO :"owner_role";

-- Only the owner creates objects in public: the runtime role cannot add a table, view or function.
-- PostgreSQL 15+ already starts this way; the REVOKE matters on older clusters and is harmless on new ones.
REVOKE CREATE ON SCHEMA public FROM PUBLIC;
GRANT USAGE ON SCHEMA public TO :"app_role";
GRANT USAGE, CREATE ON SCHEMA public TO :"owner_role";

-- Every table and sequence the owner creates in public from now on (that is, by migrations) is readable
-- and writable by the runtime role, row-level security permitting. TRUNCATE, REFERENCES and TRIGGER are
-- deliberately absent: TRUNCATE ignores row-level security; the server needs neither of the other two
-- (foreign-key checks ignore row-level security, and triggers run code on other roles' writes).
-- Nothing is granted in schema tenancy_private (the context key): the runtime role has no USAGE on it and
-- reaches it only through the SECURITY DEFINER functions app_org_id() & co.
ALTER DEFAULT PRIVILEGES FOR ROLE :"owner_role" IN SCHEMA public
    GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO :"app_role";
ALTER DEFAULT PRIVILEGES FOR ROLE :"owner_role" IN SCHEMA public
    GRANT USAGE, SELECT ON SEQUENCES TO :"app_role";

-- The same for tables that already exist (a re-run after migrations, or tables created before the default
-- privileges above). On a new, empty database these three statements change nothing.
GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO :"app_role";
REVOKE TRUNCATE, REFERENCES, TRIGGER ON ALL TABLES IN SCHEMA public FROM :"app_role";
GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO :"app_role";

-- The policy helpers' role reads, and only reads, what the row policies consult. USAGE to read; CREATE
-- because PostgreSQL requires it of a function's new owner (the migrations run ALTER FUNCTION ... OWNER TO it).
GRANT USAGE, CREATE ON SCHEMA public TO :"policy_role";
ALTER DEFAULT PRIVILEGES FOR ROLE :"owner_role" IN SCHEMA public GRANT SELECT ON TABLES TO :"policy_role";
GRANT SELECT ON ALL TABLES IN SCHEMA public TO :"policy_role";

-- 4. What was set up, for the record of whoever ran this.
SELECT rolname, rolsuper, rolbypassrls, rolcreaterole, rolcreatedb, rolreplication, rolcanlogin
FROM pg_roles WHERE rolname IN (:'owner_role', :'app_role', :'policy_role') ORDER BY rolname;
\echo 'Next: DATABASE_URL=<runtime role URL> DATABASE_OWNER_URL=<owner URL> python manage.py bootstrap_db'
