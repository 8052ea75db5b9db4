"""Move an organization's encrypted rows onto its newest data key, in batches; resumable."""

from django.core.management.base import BaseCommand, CommandError

from tenancy.commands import organization_by_slug
from tenancy.crypto.operations import reencrypt
from tenancy.crypto.vault import KeyServiceError


class Command(BaseCommand):
    help = "Re-encrypt an organization's rows under its newest data key (safe to interrupt and re-run)."

    def add_arguments(self, parser):
        parser.add_argument("--org", required=True, help="organization slug")
        parser.add_argument("--batch", type=int, default=500)

    def handle(self, *args, **options):
        org = organization_by_slug(options["org"])
        if options["batch"] < 1:
            raise CommandError("--batch must be at least 1")
        try:
            moved = reencrypt(org.id, progress=self.stdout.write, batch=options["batch"])
        except KeyServiceError as exc:
            raise CommandError(f"re-encryption stopped: {exc}. Run the command again to resume.") from exc
        self.stdout.write(self.style.SUCCESS(f"{org.slug}: {moved} row(s) re-encrypted."))
