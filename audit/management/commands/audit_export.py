"""Export an organization's audit trail for an auditor (audit/FORMAT.md); verify it with `python -m audit.verify`."""

from __future__ import annotations

import datetime
import uuid
from pathlib import Path

from django.core.management.base import BaseCommand, CommandError
from django.utils.dateparse import parse_datetime

from audit import shipper
from audit.export import export
from tenancy import events
from tenancy.commands import organization_by_slug
from tenancy.crypto.vault import KeyServiceError


def _when(value: str | None, flag: str) -> datetime.datetime | None:
    if not value:
        return None
    parsed = parse_datetime(value) or (
        datetime.datetime.fromisoformat(value + "T00:00:00+00:00") if len(value) == 10 else None
    )
    if parsed is None:
        raise CommandError(f"{flag} must be a date (2026-01-31) or an ISO 8601 time")
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=datetime.UTC)


class Command(BaseCommand):
    help = "Write an organization's audit log export (FHIR AuditEvents, entries, checkpoints, proofs, keys)."

    def add_arguments(self, parser):
        parser.add_argument("--org", required=True, help="organization slug")
        parser.add_argument("--out", required=True, help="directory to write (created)")
        parser.add_argument("--since")
        parser.add_argument("--until")
        parser.add_argument("--patient", help="only this patient's entries, with inclusion proofs")

    def handle(self, *args, **options):
        org = organization_by_slug(options["org"])
        patient = None
        if options["patient"]:
            try:
                patient = uuid.UUID(options["patient"])
            except ValueError as exc:
                raise CommandError("--patient must be a patient id (UUID)") from exc
        since, until = _when(options["since"], "--since"), _when(options["until"], "--until")
        out = Path(options["out"])
        if out.exists() and any(out.iterdir()):
            raise CommandError(f"{out} exists and is not empty: choose a new directory")
        try:
            # Everything queued so far goes into the log, and the export ends at a fresh checkpoint.
            while shipper.ship_org(org.id):
                pass
            shipper.checkpoint(org.id, force=True)
            manifest = export(
                org.id, out, since=since, until=until, patient=patient, progress=self.stdout.write
            )
        except (KeyServiceError, ValueError, RuntimeError) as exc:
            raise CommandError(f"export stopped: {exc}") from exc
        # Every export of the audit trail is itself recorded, by the operator who ran the command.
        events.publish(
            events.PhiAccess(
                org_id=str(org.id),
                actor=events.Actor(user=None, role="operator"),
                request_id=f"export-{uuid.uuid4().hex}",
                purpose="audit",
                action="audit_export",
                resource="AuditLog",
                detail={
                    "entries": manifest["entries"],
                    "tree_size": manifest["tree_size"],
                    "patient": manifest["patient"],
                    "since": manifest["since"],
                    "until": manifest["until"],
                },
            )
        )
        self.stdout.write(
            self.style.SUCCESS(
                f"Wrote {manifest['entries']['count']} entries (log size {manifest['tree_size']}) to {out}. "
                f"Verify with: python -m audit.verify {out}"
            )
        )
