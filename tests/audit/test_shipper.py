"""The shipper: nothing skipped, nothing duplicated, nothing lost, with real transactions on real databases.

Work that must be committed (the shipper reads below the oldest running transaction) runs in threads with
connections of their own; each test uses an organization of its own.
"""

from __future__ import annotations

import threading
import uuid
from concurrent.futures import ThreadPoolExecutor

import psycopg
import pytest
from django.db import connection, connections

from audit import events, shipper, store, tlog
from audit.signer import CheckpointSigner
from tenancy.context import tenant_context
from tenancy.crypto.vault import KeyServiceError
from tenancy.events import Actor, KeyOperation, PhiAccess
from tenancy.services import create_organization
from tests.conftest import owner_conninfo, runtime_conninfo  # noqa: F401

pytestmark = pytest.mark.django_db


def committed(fn, *args, **kwargs):
    """Run fn in another thread, on its own connection, so what it writes is committed."""

    def run():
        try:
            return fn(*args, **kwargs)
        finally:
            connections.close_all()

    with ThreadPoolExecutor(1) as pool:
        return pool.submit(run).result()


def new_org() -> uuid.UUID:
    slug = f"audit-{uuid.uuid4().hex[:8]}"
    org, _ = committed(
        create_organization, slug=slug, name=slug, domains=[f"{slug}.localhost"], require_mfa=False
    )
    return org.id


def record(org_id, n: int = 1, action: str = "read") -> list[str]:
    def write():
        ids = []
        with tenant_context(org_id=org_id, role="platform", purpose="treatment"):
            for i in range(n):
                [entry] = events.entries(
                    PhiAccess(
                        org_id=str(org_id),
                        actor=Actor.from_context(),
                        request_id=f"r{i}",
                        purpose="treatment",
                        action=action,
                        resource="Patient",
                        resource_id=str(uuid.uuid4()),
                        patient_id=str(uuid.uuid4()),
                    )
                )
                events.emit_many([entry])
                ids.append(entry.event_id)
        return ids

    return committed(write)


def outbox_count(org_id) -> int:
    def count():
        with tenant_context(org_id=org_id, role="shipper"), connection.cursor() as cursor:
            cursor.execute("SELECT count(*) FROM audit_outboxevent WHERE org_id = %s", [org_id])
            return cursor.fetchone()[0]

    return committed(count)


def log_entries(org_id) -> list[tuple[int, str, bytes]]:
    with store.reader() as reader:
        return [
            (seq, entry, bytes(leaf))
            for seq, entry, leaf in reader.execute(
                "SELECT seq, entry, leaf FROM audit_entry WHERE org_id = %s ORDER BY seq", [org_id]
            ).fetchall()
        ]


def ship(org_id, **kwargs) -> int:
    return committed(shipper.ship_org, org_id, **kwargs)


def test_events_move_to_the_log_gapless_and_leave_the_outbox(clinics):
    org_id = new_org()
    ids = record(org_id, 25)
    assert outbox_count(org_id) >= 25
    while ship(org_id, batch=10):
        pass
    entries = log_entries(org_id)
    assert [seq for seq, _, _ in entries] == list(range(len(entries)))
    shipped_ids = {__import__("json").loads(entry)["event_id"] for _, entry, _ in entries}
    assert set(ids) <= shipped_ids
    assert all(tlog.leaf_hash(entry.encode()) == leaf for _, entry, leaf in entries)
    assert outbox_count(org_id) == 0


def test_a_long_transaction_beside_short_ones_loses_nothing(clinics):
    org_id = new_org()
    started, release = threading.Event(), threading.Event()

    def long_transaction():
        with tenant_context(org_id=org_id, role="platform"):
            events.record(
                KeyOperation(
                    org_id=str(org_id), actor=Actor.from_context(), request_id="long", operation="slow"
                )
            )
            started.set()
            release.wait(20)

    with ThreadPoolExecutor(1) as pool:
        future = pool.submit(lambda: (long_transaction(), connections.close_all()))
        assert started.wait(10)
        record(org_id, 5)  # short ones commit while the long one is still open
        ship(org_id)
        # The long transaction's event is not committed: everything after its start waits for it.
        first_pass = log_entries(org_id)
        release.set()
        future.result()
    while ship(org_id):
        pass
    actions = [__import__("json").loads(e)["action"] for _, e, _ in log_entries(org_id)]
    assert "slow" in actions and actions.count("read") == 5
    assert len(first_pass) <= len(actions)
    assert outbox_count(org_id) == 0


def test_a_crash_between_the_audit_commit_and_the_outbox_delete_duplicates_nothing(clinics, monkeypatch):
    org_id = new_org()
    record(org_id, 7)

    def crash(org_id, ids):
        # The shipper dies after the audit database committed and before the outbox rows are deleted.
        raise RuntimeError("simulated crash between the audit commit and the outbox delete")

    monkeypatch.setattr(shipper, "_forget", crash)
    with pytest.raises(RuntimeError, match="simulated crash"):
        ship(org_id)
    monkeypatch.undo()
    assert outbox_count(org_id) >= 7  # still queued
    size_after_crash = len(log_entries(org_id))
    ship(org_id)
    assert len(log_entries(org_id)) == size_after_crash
    assert outbox_count(org_id) == 0


def test_a_replayed_outbox_row_is_not_logged_twice(clinics):
    org_id = new_org()
    [event_id] = record(org_id, 1)
    ship(org_id)
    size = len(log_entries(org_id))

    def replay():
        with tenant_context(org_id=org_id, role="platform"), connection.cursor() as cursor:
            cursor.execute(
                "INSERT INTO audit_outboxevent (id, org_id, payload) VALUES (%s, %s, %s)",
                [event_id, org_id, '{"action": "read"}'],
            )

    committed(replay)
    ship(org_id)
    assert len(log_entries(org_id)) == size
    assert outbox_count(org_id) == 0


def test_two_shippers_at_once_keep_one_gapless_sequence(clinics):
    org_id = new_org()
    record(org_id, 60)

    def drain():
        try:
            while shipper.ship_org(org_id, batch=7):
                pass
        finally:
            connections.close_all()

    with ThreadPoolExecutor(3) as pool:
        for future in [pool.submit(drain) for _ in range(3)]:
            future.result()
    while ship(org_id):
        pass
    seqs = [seq for seq, _, _ in log_entries(org_id)]
    assert seqs == list(range(len(seqs))) and len(seqs) >= 60
    assert outbox_count(org_id) == 0


def test_checkpoints_are_signed_by_vault_and_verify_offline(clinics):
    org_id = new_org()
    record(org_id, 12)
    ship(org_id)
    signer = CheckpointSigner()
    note = committed(shipper.checkpoint, org_id, signer, True)
    keys = tlog.keys_from_vkeys(signer.vkeys())
    checkpoint = tlog.verify_checkpoint(note, keys)
    leaves = [leaf for _, _, leaf in log_entries(org_id)]
    assert checkpoint.size == len(leaves) and checkpoint.root == tlog.root(leaves)
    assert checkpoint.origin == shipper.origin(org_id)
    # Idle: a heartbeat re-signs the same tree; never a different root for the same size.
    heartbeat = committed(shipper.checkpoint, org_id, signer, True)
    assert tlog.verify_checkpoint(heartbeat, keys) == checkpoint


def test_the_readiness_probe_reports_the_age_of_the_oldest_unshipped_event(clinics, client, settings):
    org_id = new_org()
    record(org_id, 1)
    body = client.get("/readyz").json()
    assert body["gauges"]["audit_outbox_oldest_age_seconds"] is not None
    settings.AUDIT_MAX_LAG_SECONDS = 0
    response = client.get("/readyz")
    assert response.json()["status"] == "degraded" and "audit_outbox" in response.json()["error"]["fields"]
    metrics = client.get("/metrics").content.decode()
    assert "telemed_audit_outbox_oldest_age_seconds" in metrics


def test_entries_shipped_while_signing_fails_show_as_an_unsigned_tail_until_a_checkpoint_covers_them(
    clinics, client, settings
):
    """Shipping goes on while Vault cannot sign: /readyz and /metrics show how many shipped entries no
    signed checkpoint covers yet, and how old the oldest is, so a signing outage is seen before an auditor
    finds entries they cannot verify."""
    import audit.apps

    org_id = new_org()
    before = shipper.unsigned_tail()
    record(org_id, 5)
    ship(org_id)
    signing_key, settings.AUDIT_SIGNING_KEY = settings.AUDIT_SIGNING_KEY, f"missing-{uuid.uuid4().hex[:8]}"
    with pytest.raises(KeyServiceError):  # the signing key is gone: no checkpoint is written
        committed(shipper.checkpoint, org_id, CheckpointSigner(), True)
    tail = shipper.unsigned_tail()
    assert tail.entries == before.entries + 5
    assert tail.oldest_age is not None and tail.oldest_age >= 0
    audit.apps._unsigned_cache = None
    gauges = client.get("/readyz").json()["gauges"]
    assert gauges["audit_unsigned_entries"] == tail.entries and gauges["audit_unsigned_oldest_age_seconds"]
    metrics = dict(
        line.split(" ", 1) for line in client.get("/metrics").content.decode().splitlines() if line[:1] != "#"
    )
    assert float(metrics["telemed_audit_unsigned_entries"]) == tail.entries

    settings.AUDIT_SIGNING_KEY = signing_key
    committed(shipper.checkpoint, org_id, CheckpointSigner(), True)
    assert shipper.unsigned_tail().entries == before.entries

    # An unreachable audit database leaves the gauges empty; the probe still answers.
    audit.apps._unsigned_cache = None
    settings.AUDIT_READER_DATABASE_URL = "postgresql://reader@127.0.0.1:9/audit"  # nothing listens on 9
    response = client.get("/readyz")
    assert response.status_code == 200 and response.json()["gauges"]["audit_unsigned_entries"] is None


# -- the audit database refuses change, for every role -------------------------------------------------


def audit_conninfo(url: str) -> str:
    return psycopg.conninfo.make_conninfo(url)


def admin_audit_conninfo() -> str:
    import os

    from django.conf import settings

    info = psycopg.conninfo.conninfo_to_dict(os.environ["DATABASE_ADMIN_URL"])
    info["dbname"] = psycopg.conninfo.conninfo_to_dict(settings.AUDIT_OWNER_DATABASE_URL)["dbname"]
    return psycopg.conninfo.make_conninfo("", **info)


@pytest.mark.parametrize("who", ["writer", "reader", "owner", "superuser", "superuser-replica"])
@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE audit_entry SET action = 'edited'",
        "DELETE FROM audit_entry",
        "TRUNCATE audit_entry",
        "DELETE FROM audit_event_index",
        "UPDATE audit_checkpoint SET note = ''",
        "TRUNCATE audit_tree_head CASCADE",
    ],
)
def test_the_audit_log_refuses_update_delete_and_truncate(clinics, settings, who, statement):
    org_id = new_org()
    record(org_id, 2)
    ship(org_id)
    committed(shipper.checkpoint, org_id, None, True)
    conninfo = {
        "writer": audit_conninfo(settings.AUDIT_DATABASE_URL),
        "reader": audit_conninfo(settings.AUDIT_READER_DATABASE_URL),
        "owner": audit_conninfo(settings.AUDIT_OWNER_DATABASE_URL),
    }.get(who) or admin_audit_conninfo()
    with psycopg.connect(conninfo) as conn:
        if who == "superuser-replica":
            conn.execute("SET session_replication_role = replica")  # ordinary triggers would not fire
        with pytest.raises((psycopg.errors.InsufficientPrivilege, psycopg.errors.RaiseException)):
            conn.execute(statement)
    assert len(log_entries(org_id)) >= 2


def test_the_writer_cannot_read_and_the_reader_cannot_write(clinics, settings):
    with psycopg.connect(audit_conninfo(settings.AUDIT_DATABASE_URL)) as writer:
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            writer.execute("SELECT count(*) FROM audit_entry")
    with psycopg.connect(audit_conninfo(settings.AUDIT_READER_DATABASE_URL)) as reader:
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            reader.execute("INSERT INTO audit_public_key (name, key_id, vkey) VALUES ('x', 'y', 'z')")


def test_a_write_that_bypasses_the_orm_is_recorded_by_the_database(clinics, alpha):
    """The backstop: raw SQL on a health table still leaves an event, with hashes of before and after."""
    patient = alpha.patients[0]

    def raw_update():
        with tenant_context(org_id=alpha.org.id, role="platform"), connection.cursor() as cursor:
            cursor.execute("UPDATE clinic_patient SET created_at = created_at WHERE id = %s", [patient.pk])
            cursor.execute(
                "SELECT payload FROM audit_outboxevent WHERE payload->'resource'->>'id' = %s "
                "AND payload->>'action' = 'db_update'",
                [str(patient.pk)],
            )
            return cursor.fetchall()

    def peek():
        with tenant_context(org_id=alpha.org.id, role="shipper"), connection.cursor() as cursor:
            cursor.execute(
                "SELECT payload FROM audit_outboxevent WHERE payload->'resource'->>'id' = %s "
                "AND payload->>'action' = 'db_update'",
                [str(patient.pk)],
            )
            return [row[0] for row in cursor.fetchall()]

    committed(raw_update)
    [event] = [e if isinstance(e, dict) else __import__("json").loads(e) for e in committed(peek)][-1:]
    assert event["patient"] == str(patient.pk) and event["detail"] == {"source": "database"}
    assert len(event["before"]) == 64 and len(event["after"]) == 64 and event["actor"]["role"] == "platform"


def test_the_application_cannot_read_or_erase_the_outbox(clinics, alpha):
    """Only the shipper's context reads and deletes outbox rows; a clinical context may only add them."""
    record(alpha.org.id, 1)

    def as_practitioner():
        with (
            tenant_context(
                org_id=alpha.org.id,
                role="practitioner",
                user_id=alpha.user("practitioner").pk,
                purpose="treatment",
            ),
            connection.cursor() as cursor,
        ):
            cursor.execute("SELECT count(*) FROM audit_outboxevent")
            seen = cursor.fetchone()[0]
            cursor.execute("DELETE FROM audit_outboxevent")
            cursor.execute("UPDATE audit_outboxevent SET payload = '{}'")
            return seen, cursor.rowcount

    assert committed(as_practitioner) == (0, 0)
    assert outbox_count(alpha.org.id) >= 1


def test_a_rotated_signing_key_keeps_old_checkpoints_verifiable(clinics, tmp_path):
    from django.conf import settings

    from audit.export import export
    from audit.verify import verify_export
    from tenancy.crypto.vault import ops_client

    org_id = new_org()
    record(org_id, 3)
    ship(org_id)
    committed(shipper.checkpoint, org_id, None, True)
    ops_client()._call("POST", f"transit/keys/{settings.AUDIT_SIGNING_KEY}/rotate", {})
    record(org_id, 3)
    ship(org_id)
    committed(shipper.checkpoint, org_id, CheckpointSigner(), True)
    out = tmp_path / "rotated"
    committed(export, org_id, out)
    report = verify_export(out)
    assert len(report.keys) >= 2 and report.checkpoints >= 2


def ship_all(org_id, timeout: float = 30.0) -> None:
    """Ship until the organization's outbox is empty: a transaction elsewhere in the cluster can hold the
    shipper's horizon back for a moment (control 52), which must not make the test depend on timing."""
    import time

    deadline = time.monotonic() + timeout
    while outbox_count(org_id):
        ship(org_id)
        assert time.monotonic() < deadline, "the outbox did not drain"
        time.sleep(0.05)


def test_the_shipper_refuses_to_sign_a_log_that_no_longer_extends_the_published_checkpoint(
    clinics, settings, tmp_path, caplog
):
    """After a restore of the audit database from an older backup, the checkpoints kept outside it (the file
    drop) are ahead of it: signing would fork the log under one origin, so the shipper stops loudly."""
    settings.AUDIT_CHECKPOINT_DIR = str(tmp_path)
    signer = CheckpointSigner()
    restored, other = new_org(), new_org()
    record(restored, 4)
    ship_all(restored)
    committed(shipper.checkpoint, restored, signer, True)
    record(other, 8)
    ship_all(other)
    assert committed(shipper.checkpoint, other, signer, True)
    # Its own older checkpoint in the drop is fine: the log extends it.
    record(restored, 2)
    ship_all(restored)
    assert committed(shipper.checkpoint, restored, signer, True)

    drop = tmp_path / f"{restored}.checkpoint"
    # The drop says 8 entries were signed; the database holds 6: it went back in time.
    drop.write_text((tmp_path / f"{other}.checkpoint").read_text())
    record(restored, 1)
    ship_all(restored)
    with pytest.raises(shipper.ForkedLogError, match="covers 8 entries"):
        committed(shipper.checkpoint, restored, signer, True)

    # Same size, another tree: a fork.
    record(restored, 1)
    ship_all(restored)  # now 8 entries, like the other log, with different contents
    with pytest.raises(shipper.ForkedLogError, match="differs"):
        committed(shipper.checkpoint, restored, signer, True)

    # The backlog carried the restored log past the published size before the shipper signed again: no tree
    # head of size 8 exists in the database, so the root is recomputed from the leaves, and still differs.
    record(restored, 2)
    ship_all(restored)
    with pytest.raises(shipper.ForkedLogError, match="differs"):
        committed(shipper.checkpoint, restored, signer, True)
    # The shipper's loop signs the other organizations' logs and names the forked one.
    with caplog.at_level("ERROR", logger="audit.shipper"):
        committed(shipper.checkpoint_all, signer, True)
    assert str(restored) in caplog.text and "refusing to sign" in caplog.text
