"""Crypto-shred an organization leaving the platform: its health information becomes unreadable for good."""

from django.core.management.base import BaseCommand, CommandError

from tenancy.commands import organization_by_slug
from tenancy.crypto.operations import shred_org
from tenancy.crypto.vault import KeyServiceError


class Command(BaseCommand):
    help = "Delete an organization's Transit key and data keys. Irreversible."

    def add_arguments(self, parser):
        parser.add_argument("--org", required=True, help="organization slug")
        parser.add_argument("--confirm", required=True, help="repeat the slug to confirm")

    def handle(self, *args, **options):
        if options["confirm"] != options["org"]:
            raise CommandError("--confirm must repeat the organization's slug exactly")
        org = organization_by_slug(options["org"])
        try:
            shred_org(org.id, progress=self.stdout.write)
        except KeyServiceError as exc:
            raise CommandError(f"shredding stopped: {exc}. Run the command again to finish.") from exc
        self.stdout.write(
            self.style.SUCCESS(f"{org.slug}: crypto-shredded. Its encrypted data is unreadable.")
        )
