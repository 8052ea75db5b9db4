"""Create an organization (tenant) with its portal domains. Idempotent by slug.

MFA is required unless --no-require-mfa is given: a real clinic starts safe.
"""

from django.core.management.base import BaseCommand, CommandError
from django.utils.text import slugify

from tenancy.crypto.vault import KeyServiceError
from tenancy.services import create_organization


class Command(BaseCommand):
    help = "Create an organization and its portal domains (idempotent)."

    def add_arguments(self, parser):
        parser.add_argument("--slug", required=True)
        parser.add_argument("--name", required=True)
        parser.add_argument("--domain", action="append", default=[], help="portal hostname; repeatable")
        parser.add_argument("--no-require-mfa", action="store_true", help="do not require MFA at sign-in")
        parser.add_argument("--idle-timeout", type=int, default=15, help="minutes before automatic sign-out")

    def handle(self, *args, **options):
        slug = options["slug"]
        if slugify(slug) != slug or not slug:
            raise CommandError(f"--slug must be lowercase letters, digits and hyphens, not {slug!r}")
        if not options["domain"]:
            raise CommandError("give at least one --domain for the organization's portal")
        if not 1 <= options["idle_timeout"] <= 1440:
            raise CommandError("--idle-timeout must be between 1 and 1440 minutes")
        try:
            org, created = create_organization(
                slug=slug,
                name=options["name"],
                domains=options["domain"],
                require_mfa=not options["no_require_mfa"],
                idle_timeout_minutes=options["idle_timeout"],
            )
        except ValueError as exc:
            raise CommandError(str(exc)) from exc
        except KeyServiceError as exc:
            raise CommandError(
                f"cannot create the organization's key in Vault: {exc}. Set VAULT_ADDR and VAULT_OPS_TOKEN "
                "(an operator's credential, deploy/openbao/ops.hcl) and run the command again."
            ) from exc
        verb = "Created" if created else "Already present:"
        self.stdout.write(f"{verb} organization {org.slug} ({org.id}); MFA required: {org.require_mfa}")
