"""The tenant context fails closed, stays in its transaction and cannot be forged from SQL."""

from __future__ import annotations

import time
import uuid

import psycopg
import pytest
from asgiref.sync import sync_to_async
from channels.db import database_sync_to_async
from django.conf import settings
from django.db import connection, transaction

from tenancy.context import ANONYMOUS, NoTenantContext, TenantContext, sign_context_body, tenant_context
from tenancy.models import ApiToken, Domain, Membership, Organization
from tests.conftest import in_context, runtime_conninfo

pytestmark = pytest.mark.django_db

TENANT_MODELS = [Membership, Domain, ApiToken, Organization]


def signed_for(org_id, role="org_admin", expires_in=600) -> str:
    body = "|".join(["v1", str(org_id), "", role, "treatment", str(int(time.time() + expires_in))])
    return body + "|" + sign_context_body(body)


# -- no context ------------------------------------------------------------------------------------


@pytest.mark.parametrize("model", TENANT_MODELS, ids=lambda m: m.__name__)
def test_without_context_the_application_raises_instead_of_returning_nothing(clinics, model):
    with pytest.raises(NoTenantContext):
        list(model.objects.all())
    with pytest.raises(NoTenantContext):
        model.objects.count()
    with pytest.raises(NoTenantContext):
        model.objects.filter(pk=uuid.uuid4()).update()
    with pytest.raises(NoTenantContext):
        list(model.objects.raw(f"SELECT * FROM {model._meta.db_table}"))
    with pytest.raises(NoTenantContext):
        list(model._base_manager.all())


@pytest.mark.parametrize(
    "table", ["tenancy_membership", "tenancy_domain", "tenancy_apitoken", "tenancy_organization"]
)
def test_without_context_the_database_shows_zero_rows(clinics, raw_runtime, table):
    assert raw_runtime.execute(f"SELECT count(*) FROM {table}").fetchone() == (0,)


def test_without_context_the_database_rejects_writes(clinics, raw_runtime, alpha):
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        raw_runtime.execute(
            "INSERT INTO tenancy_membership (id, org_id, user_id, role, display_name, is_active, created_at) "
            "VALUES (%s, %s, %s, 'org_admin', '', true, now())",
            [uuid.uuid4(), alpha.org.id, alpha.user("patient").pk],
        )
    raw_runtime.rollback()
    updated = raw_runtime.execute("UPDATE tenancy_membership SET role = 'org_admin'").rowcount
    deleted = raw_runtime.execute("DELETE FROM tenancy_membership").rowcount
    assert (updated, deleted) == (0, 0)


def test_runtime_role_cannot_truncate_a_tenant_table(clinics, raw_runtime):
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        raw_runtime.execute("TRUNCATE tenancy_membership")


# -- forging -----------------------------------------------------------------------------------------


def test_raw_set_config_with_another_orgs_id_reads_nothing(clinics, raw_runtime, alpha, beta):
    """What PostgREST-style `app.org_id` trust would allow: any SQL caller choosing its organization."""
    for name in ("app.org_id", "app.current_org", "app.tenant"):
        raw_runtime.execute("SELECT set_config(%s, %s, false)", [name, str(beta.org.id)])
    assert raw_runtime.execute("SELECT count(*) FROM tenancy_membership").fetchone() == (0,)
    # The real setting with a plain id, or with a made-up signature, is refused outright.
    for forged in (
        str(beta.org.id),
        f"v1|{beta.org.id}||org_admin|treatment|9999999999|" + "0" * 64,
        f"v1|{beta.org.id}||org_admin|treatment|9999999999",
    ):
        with raw_runtime.transaction():
            raw_runtime.execute("SELECT set_config('app.context', %s, true)", [forged])
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                with raw_runtime.transaction():
                    raw_runtime.execute("SELECT count(*) FROM tenancy_membership").fetchone()


def test_a_signed_context_edited_to_another_org_is_refused(clinics, raw_runtime, alpha, beta):
    genuine = signed_for(alpha.org.id)
    tampered = genuine.replace(str(alpha.org.id), str(beta.org.id))
    with raw_runtime.transaction():
        raw_runtime.execute("SELECT set_config('app.context', %s, true)", [genuine])
        assert raw_runtime.execute(
            "SELECT count(*) FROM tenancy_membership WHERE org_id <> %s", [alpha.org.id]
        ).fetchone() == (0,)
        assert raw_runtime.execute("SELECT count(*) FROM tenancy_membership").fetchone()[0] >= 5
    with raw_runtime.transaction():
        raw_runtime.execute("SELECT set_config('app.context', %s, true)", [tampered])
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="signature"):
            with raw_runtime.transaction():
                raw_runtime.execute("SELECT count(*) FROM tenancy_membership")


@pytest.mark.parametrize(
    "call",
    [
        "SELECT * FROM public.app_context()",
        "SELECT public.clinic_treatable_patients()",
        "SELECT public.clinic_chart_patients()",
        "SELECT * FROM public.clinic_visits()",
        "SELECT public.clinic_own_patients()",
        "SELECT public.clinic_my_membership()",
    ],
)
def test_the_whole_context_accessor_and_the_policy_helpers_refuse_a_tampered_context(
    clinics, raw_runtime, alpha, beta, call
):
    """app_context() (one verification for the helpers, issue 13) checks the signature like the four accessors,
    and so does every policy helper that reads it: called straight from SQL, a forgery is an error."""
    genuine = signed_for(alpha.org.id, role="practitioner")
    with raw_runtime.transaction():
        raw_runtime.execute("SELECT set_config('app.context', %s, true)", [genuine])
        raw_runtime.execute(call).fetchall()  # a genuine context answers
    tampered = genuine.replace(str(alpha.org.id), str(beta.org.id))
    with raw_runtime.transaction():
        raw_runtime.execute("SELECT set_config('app.context', %s, true)", [tampered])
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="signature"):
            with raw_runtime.transaction():
                raw_runtime.execute(call).fetchall()


def test_an_expired_context_is_refused(clinics, raw_runtime, alpha):
    with raw_runtime.transaction():
        raw_runtime.execute(
            "SELECT set_config('app.context', %s, true)", [signed_for(alpha.org.id, expires_in=-5)]
        )
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="expired"):
            with raw_runtime.transaction():
                raw_runtime.execute("SELECT count(*) FROM tenancy_membership")


def test_the_context_key_table_is_out_of_reach(clinics, raw_runtime):
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        raw_runtime.execute("SELECT ipad, opad FROM tenancy_private.context_key")
    raw_runtime.rollback()
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        raw_runtime.execute("UPDATE tenancy_private.context_key SET ipad = opad")


def test_forged_headers_do_not_change_the_organization(clinics, api, alpha, beta):
    client = api(alpha.host)
    client.sign_in_token(alpha.email("org_admin"))
    headers = {
        "X-Org-Id": str(beta.org.id),
        "X-Organization": beta.org.slug,
        "X-Tenant": beta.org.slug,
        "X-Forwarded-Host": beta.host,
        "X-Original-Host": beta.host,
        "Forwarded": f"host={beta.host}",
    }
    response = client.get("/api/v1/memberships", **headers)
    assert response.status_code == 200
    emails = {m["email"] for m in response.json()["results"]}
    assert alpha.email("org_admin") in emails and not any(e.endswith("@beta.test") for e in emails)
    assert client.get("/api/v1/auth/me", **headers).json()["organization"] == "alpha"


# -- one pooled connection, several requests ----------------------------------------------------------


def test_one_connection_serves_org_a_then_b_then_no_context(clinics, alpha, beta):
    """Transaction-local settings: nothing of one transaction's context survives into the next."""
    with psycopg.connect(runtime_conninfo(), autocommit=True) as conn:

        def members(signed: str | None) -> set:
            with conn.transaction():
                if signed:
                    conn.execute("SELECT set_config('app.context', %s, true)", [signed])
                return {row[0] for row in conn.execute("SELECT org_id FROM tenancy_membership")}

        assert members(signed_for(alpha.org.id)) == {alpha.org.id}
        assert members(signed_for(beta.org.id)) == {beta.org.id}
        assert members(None) == set()
        # An exception mid-transaction: the rollback takes the context with it.
        with pytest.raises(psycopg.errors.DivisionByZero):
            with conn.transaction():
                conn.execute("SELECT set_config('app.context', %s, true)", [signed_for(alpha.org.id)])
                conn.execute("SELECT 1/0")
        assert members(None) == set()
        assert conn.execute("SELECT current_setting('app.context', true)").fetchone()[0] in ("", None)


def test_the_django_connection_forgets_the_context_after_each_block(clinics, alpha, beta):
    with in_context(alpha.org):
        assert set(Membership.objects.values_list("org_id", flat=True)) == {alpha.org.id}
    with in_context(beta.org):
        assert set(Membership.objects.values_list("org_id", flat=True)) == {beta.org.id}
    with pytest.raises(ZeroDivisionError):
        with in_context(alpha.org):
            1 / 0
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM tenancy_membership")
        assert cursor.fetchone() == (0,)


def test_a_context_refuses_to_open_outside_a_transaction(clinics, alpha):
    """In autocommit a transaction-local setting would vanish before the next query: refuse loudly."""
    from concurrent.futures import ThreadPoolExecutor

    from django.db import connections

    from tenancy.context import activate

    def outside_any_transaction():
        try:
            activate(TenantContext(org_id=alpha.org.id, role="org_admin"))
        except NoTenantContext as exc:
            return str(exc)
        finally:
            connections.close_all()
        return "opened"

    with ThreadPoolExecutor(1) as pool:
        assert "transaction" in pool.submit(outside_any_transaction).result()


@pytest.mark.django_db(transaction=False)
async def test_async_consumers_work_inside_an_explicit_context(clinics, alpha, beta):
    """The Channels pattern: database work runs in a thread, inside its own context block."""

    @database_sync_to_async
    def roles_in(org):
        with in_context(org):
            return sorted(Membership.objects.values_list("org_id", flat=True).distinct())

    @database_sync_to_async
    def without_context():
        return Membership.objects.count()

    assert await roles_in(alpha.org) == [alpha.org.id]
    assert await roles_in(beta.org) == [beta.org.id]
    with pytest.raises(NoTenantContext):
        await without_context()


async def test_concurrent_tasks_do_not_see_each_others_context(clinics, alpha, beta):
    import asyncio

    def read(org):
        with in_context(org):
            time.sleep(0.05)
            return set(Membership.objects.values_list("org_id", flat=True))

    results = await asyncio.gather(
        *[sync_to_async(read, thread_sensitive=False)(org) for org in (alpha.org, beta.org) * 3]
    )
    assert results == [{alpha.org.id}, {beta.org.id}] * 3


# -- writes across organizations -----------------------------------------------------------------------


def test_a_write_carrying_another_orgs_id_is_rejected(clinics, alpha, beta):
    with in_context(alpha.org):
        with pytest.raises(Exception, match="row-level security"):
            with transaction.atomic():
                Membership(org_id=beta.org.id, user=alpha.user("patient"), role="org_admin").save(
                    force_insert=True
                )


def test_a_foreign_key_to_another_orgs_row_is_rejected(clinics, alpha, beta):
    """Even with a correct org_id on the row, its reference must stay inside the organization."""
    from django.db import IntegrityError
    from django.utils import timezone

    with in_context(alpha.org):
        with pytest.raises(IntegrityError):
            with transaction.atomic():
                ApiToken(
                    org_id=alpha.org.id,
                    user=alpha.user("org_admin"),
                    membership_id=beta.membership("org_admin").pk,  # beta's row
                    key_hash=uuid.uuid4().hex * 2,
                    prefix="x",
                    expires_at=timezone.now(),
                ).save(force_insert=True)


def test_update_and_delete_cannot_reach_another_org(clinics, alpha, beta):
    with in_context(alpha.org):
        assert Membership.objects.filter(org_id=beta.org.id).update(role="org_admin") == 0
        assert Membership.objects.filter(pk=beta.membership("staff").pk).delete()[0] == 0
    with in_context(beta.org):
        assert Membership.objects.get(pk=beta.membership("staff").pk).role == "staff"


def test_bulk_create_into_another_org_is_rejected(clinics, alpha, beta):
    with in_context(alpha.org):
        with pytest.raises(Exception, match="row-level security"):
            with transaction.atomic():
                Membership.objects.bulk_create(
                    [Membership(org_id=beta.org.id, user=alpha.user("staff"), role="staff")]
                )


def test_raw_queries_through_the_orm_stay_in_the_org(clinics, alpha, beta):
    with in_context(alpha.org):
        rows = list(Membership.objects.raw("SELECT * FROM tenancy_membership"))
        assert rows and {m.org_id for m in rows} == {alpha.org.id}
        with connection.cursor() as cursor:
            cursor.execute("SELECT count(*) FROM tenancy_membership WHERE org_id = %s", [beta.org.id])
            assert cursor.fetchone() == (0,)


def test_related_access_through_the_base_manager_stays_in_the_org(clinics, alpha, beta):
    with in_context(alpha.org):
        token_membership = Membership.objects.get(pk=alpha.membership("staff").pk)
        assert token_membership.org_id == alpha.org.id
        assert Organization._base_manager.filter(pk=beta.org.id).count() == 0
        assert Organization.objects.get(pk=alpha.org.id).slug == "alpha"


def test_context_ttl_is_short(settings):
    assert settings.TENANCY_CONTEXT_TTL_SECONDS <= 3600


def test_signing_uses_the_configured_key():
    assert settings.TENANCY_CONTEXT_KEY and len(settings.TENANCY_CONTEXT_KEY) >= 32
    ctx = TenantContext(org_id=uuid.uuid4(), role="org_admin").signed()
    body, signature = ctx.rsplit("|", 1)
    assert signature == sign_context_body(body)
    with tenant_context(org_id=None, role="platform"):
        pass


def test_another_session_cannot_copy_the_signed_context_from_pg_stat_activity(clinics, alpha):
    """The runtime role sees its other sessions' query text; the signed context must not be in it."""
    from concurrent.futures import ThreadPoolExecutor

    from django.db import connections

    def hold_a_context_open(started, release):
        from tenancy.context import flush

        try:
            with in_context(alpha.org):
                flush()  # sent now, not with a next statement: the session's last query is the hand-off
                started.set()
                release.wait(10)
        finally:
            connections.close_all()

    import threading

    started, release = threading.Event(), threading.Event()
    with ThreadPoolExecutor(1) as pool, psycopg.connect(runtime_conninfo(), autocommit=True) as spy:
        future = pool.submit(hold_a_context_open, started, release)
        assert started.wait(10)
        try:
            texts = [
                row[0] or ""
                for row in spy.execute(
                    "SELECT query FROM pg_stat_activity WHERE usename = current_user AND pid <> pg_backend_pid()"
                ).fetchall()
            ]
        finally:
            release.set()
            future.result()
    assert any("set_config" in text for text in texts), texts
    assert not any("v1|" in text for text in texts), "a signed context is readable in pg_stat_activity"


# -- the hand-off's cost ---------------------------------------------------------------------------------------


def round_trips(trace: str) -> int:
    """Client messages that wait for the server: a simple Query, or the Sync closing extended-protocol work."""
    return sum(
        1 for line in trace.splitlines() if "\tF\t" in line and ("\tQuery\t" in line or "\tSync" in line)
    )


def test_a_context_replaced_before_any_statement_is_never_sent_and_the_last_one_costs_one_round_trip(
    alpha, tmp_path
):
    """What a request with a known token does: the signed-out context, then the member's, then a query. The
    signed-out one is replaced before anything needs it, so only the member's goes out, in one statement."""
    from tenancy.context import activate, deactivate

    trace = tmp_path / "libpq.trace"
    with transaction.atomic():
        connection.ensure_connection()
        pgconn = connection.connection.pgconn
        with open(trace, "w") as sink:
            pgconn.trace(sink.fileno())
            tokens = [activate(TenantContext(org_id=alpha.org.id, role=ANONYMOUS))]
            try:
                tokens.append(activate(TenantContext(org_id=alpha.org.id, role="staff")))
                with connection.cursor() as cursor:
                    cursor.execute("SELECT public.app_org_id(), public.app_role()")
                    seen = cursor.fetchone()
                    pgconn.untrace()
            finally:
                for token in reversed(tokens):
                    deactivate(token, outer_blocks=len(connection.atomic_blocks))
    sent = trace.read_text()
    assert seen == (alpha.org.id, "staff")  # the statement ran under the context handed off before it
    assert round_trips(sent) == 2, sent  # the hand-off, then the statement
    assert "|staff|" in sent and "|anonymous|" not in sent, sent


def test_a_context_no_statement_carried_does_not_outlive_its_block(alpha):
    """Opened and closed with no statement in between (a view that answered without touching the database):
    the next statement, outside it, must not carry it."""
    from tenancy.context import activate, deactivate

    with transaction.atomic():
        token = activate(TenantContext(org_id=alpha.org.id, role="staff"))
        deactivate(token, outer_blocks=len(connection.atomic_blocks))
        with connection.cursor() as cursor:
            cursor.execute("SELECT nullif(current_setting('app.context', true), '')")
            assert cursor.fetchone() == (None,)
