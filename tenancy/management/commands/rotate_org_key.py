"""Rotate an organization's Transit key, rewrap its data keys and raise the minimum decryption version."""

from django.core.management.base import BaseCommand, CommandError

from tenancy.commands import organization_by_slug
from tenancy.crypto.operations import rotate_org_key
from tenancy.crypto.vault import KeyServiceError


class Command(BaseCommand):
    help = "Rotate an organization's key (safe to interrupt and re-run)."

    def add_arguments(self, parser):
        parser.add_argument("--org", required=True, help="organization slug")

    def handle(self, *args, **options):
        org = organization_by_slug(options["org"])
        try:
            result = rotate_org_key(org.id, progress=self.stdout.write)
        except KeyServiceError as exc:
            raise CommandError(f"key rotation stopped: {exc}. Run the command again to finish.") from exc
        self.stdout.write(
            self.style.SUCCESS(
                f"{org.slug}: key at version {result['version']}, {result['rewrapped']} data key(s) rewrapped. "
                "Run `reencrypt --org " + org.slug + "` to move rows onto the new data key."
            )
        )
