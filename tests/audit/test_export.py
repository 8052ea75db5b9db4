"""An export of a real log verifies offline, and tampering in the audit database is caught by the verifier."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import psycopg
import pytest
from django.core.management import call_command

from audit import shipper
from audit.verify import VerificationError, verify_export
from tests.audit.test_shipper import admin_audit_conninfo, committed, log_entries, new_org, record, ship

pytestmark = pytest.mark.django_db

ROOT = Path(__file__).resolve().parents[2]


def export_to(tmp_path: Path, slug_or_org, name: str, **options) -> Path:
    out = tmp_path / name
    committed(
        call_command,
        "audit_export",
        "--org",
        slug_or_org,
        "--out",
        str(out),
        *[f"--{k}={v}" for k, v in options.items()],
    )
    return out


def org_slug(org_id) -> str:
    from tenancy.context import platform_context
    from tenancy.models import Organization

    def slug():
        with platform_context():
            return Organization.objects.get(pk=org_id).slug

    return committed(slug)


def as_superuser(sql: str, params=()) -> None:
    """What an insider with the database's keys can do: disable the guards and rewrite history."""
    with psycopg.connect(admin_audit_conninfo(), autocommit=True) as conn:
        for table in (
            "audit_entry",
            "audit_event_index",
            "audit_checkpoint",
            "audit_tree_head",
            "audit_log_state",
        ):
            conn.execute(f"ALTER TABLE {table} DISABLE TRIGGER USER")
        try:
            conn.execute(sql, params)
        finally:
            for table in (
                "audit_entry",
                "audit_event_index",
                "audit_checkpoint",
                "audit_tree_head",
                "audit_log_state",
            ):
                for trigger in ("audit_no_change", "audit_no_truncate"):
                    conn.execute(f"ALTER TABLE {table} ENABLE ALWAYS TRIGGER {trigger}")


def test_an_export_verifies_offline_and_records_itself(clinics, tmp_path):
    org_id = new_org()
    record(org_id, 30)
    out = export_to(tmp_path, org_slug(org_id), "first")
    report = verify_export(out)
    assert report.entries >= 30 and report.tree_size == report.entries
    result = subprocess.run(
        [sys.executable, "-m", "audit.verify", str(out)], cwd=ROOT, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr
    fhir = [json.loads(line) for line in (out / "auditevents.ndjson").read_text().splitlines()]
    assert fhir and all(event["resourceType"] == "AuditEvent" for event in fhir)
    assert (out / "events.csv").read_text().count("\n") == report.entries + 1
    # The export itself becomes an event of the log.
    ship(org_id)
    assert any(json.loads(entry)["action"] == "audit_export" for _, entry, _ in log_entries(org_id))


def test_a_patient_filtered_export_proves_inclusion(clinics, tmp_path):
    org_id = new_org()
    record(org_id, 10)
    ship(org_id)
    patient = json.loads(log_entries(org_id)[3][1])["patient"]
    out = export_to(tmp_path, org_slug(org_id), "patient", patient=patient)
    report = verify_export(out)
    assert report.entries == 1 and report.inclusion_proofs == 1


def test_an_edited_entry_with_its_hash_recomputed_is_caught(clinics, tmp_path):
    org_id = new_org()
    record(org_id, 12)
    export_to(tmp_path, org_slug(org_id), "before")  # signs a checkpoint over the true log
    seq, entry, _ = log_entries(org_id)[5]
    forged = entry.replace('"read"', '"update"')
    import hashlib

    leaf = hashlib.sha256(b"\x00" + forged.encode()).digest()
    as_superuser(
        "UPDATE audit_entry SET entry = %s, leaf = %s WHERE org_id = %s AND seq = %s",
        [forged, leaf, org_id, seq],
    )
    out = tmp_path / "after"
    from audit.export import export

    committed(export, org_id, out)
    with pytest.raises(VerificationError, match="root"):
        verify_export(out)


def test_an_entry_deleted_in_the_middle_with_triggers_disabled_is_caught(clinics, tmp_path):
    org_id = new_org()
    record(org_id, 12)
    export_to(tmp_path, org_slug(org_id), "before")
    as_superuser("DELETE FROM audit_entry WHERE org_id = %s AND seq = 6", [org_id])
    from audit.export import export

    with pytest.raises((RuntimeError, VerificationError)):
        out = tmp_path / "after"
        committed(export, org_id, out)
        verify_export(out)


def test_a_log_restored_from_an_older_backup_fails_against_the_auditors_checkpoint(clinics, tmp_path):
    org_id = new_org()
    record(org_id, 5)
    ship(org_id)  # the backup is taken here: 5 entries
    backup = len(log_entries(org_id))
    record(org_id, 3)
    first = export_to(tmp_path, org_slug(org_id), "first")
    trusted = sorted((first / "checkpoints").iterdir())[-1]  # the auditor keeps this one
    # Restore the backup (everything after it vanishes), then the clinic carries on writing.
    for table, column in (
        ("audit_entry", "seq"),
        ("audit_event_index", "seq"),
        ("audit_checkpoint", "size"),
        ("audit_tree_head", "size"),
    ):
        as_superuser(f"DELETE FROM {table} WHERE org_id = %s AND {column} >= %s", [org_id, backup])
    as_superuser("DELETE FROM audit_log_state WHERE org_id = %s AND size > %s", [org_id, backup])
    record(org_id, 6)
    second = export_to(tmp_path, org_slug(org_id), "second")
    verify_export(second)  # consistent on its own
    with pytest.raises(VerificationError):
        verify_export(second, trusted_checkpoint=trusted)


def test_the_application_clock_set_back_changes_nothing(clinics, tmp_path):
    """Order is by sequence, never by clock: an event stamped an hour earlier still lands after the others."""
    org_id = new_org()
    record(org_id, 3)
    ship(org_id)
    from tenancy.context import tenant_context

    def stamped_in_the_past():
        from django.db import connection

        with tenant_context(org_id=org_id, role="platform"), connection.cursor() as cursor:
            cursor.execute(
                "INSERT INTO audit_outboxevent (id, org_id, payload, created_at) VALUES (%s, %s, %s, now() - interval '1 hour')",
                [
                    str(uuid.uuid4()),
                    org_id,
                    json.dumps({"action": "late", "time": "2000-01-01T00:00:00+00:00"}),
                ],
            )

    committed(stamped_in_the_past)
    ship(org_id)
    actions = [json.loads(entry)["action"] for _, entry, _ in log_entries(org_id)]
    assert actions[-1] == "late"
    verify_export(export_to(tmp_path, org_slug(org_id), "clock"))


def test_an_organization_with_an_empty_log_exports_a_verifiable_empty_tree(clinics, tmp_path):
    org_id = new_org()
    committed(shipper.checkpoint, org_id, None, True)
    out = tmp_path / "empty"
    from audit.export import export

    committed(export, org_id, out)
    report = verify_export(out)
    assert report.tree_size == 0 and report.entries == 0


def test_the_verifier_needs_neither_django_nor_a_database(clinics, tmp_path):
    org_id = new_org()
    record(org_id, 4)
    out = export_to(tmp_path, org_slug(org_id), "standalone")
    script = (
        "import sys, runpy; sys.modules['django'] = None; sys.argv = ['audit.verify', sys.argv[1]]; "
        "runpy.run_module('audit.verify', run_name='__main__')"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE", "DJANGO", "AUDIT", "VAULT"))}
    result = subprocess.run(
        [sys.executable, "-c", script, str(out)], cwd=ROOT, capture_output=True, text=True, env=env
    )
    assert result.returncode == 0, result.stdout + result.stderr
