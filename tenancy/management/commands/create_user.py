"""Create a user and give them a role in an organization. Idempotent for an existing user.

The password comes from --password, or a prompt when standard input is a terminal. An existing user keeps
their password (use --reset-password to replace it).
"""

import getpass
import sys

from django.contrib.auth.password_validation import validate_password
from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError

from tenancy.commands import organization_by_slug
from tenancy.context import tenant_context
from tenancy.models import Role, User
from tenancy.services import ensure_member


class Command(BaseCommand):
    help = "Create a user in an organization with a role (idempotent)."

    def add_arguments(self, parser):
        parser.add_argument("--org", required=True, help="organization slug")
        parser.add_argument("--email", required=True)
        parser.add_argument("--role", required=True, choices=Role.values)
        parser.add_argument("--password", help="omit to be prompted")
        parser.add_argument("--full-name", default="")
        parser.add_argument("--reset-password", action="store_true")

    def handle(self, *args, **options):
        org = organization_by_slug(options["org"])
        email = options["email"].strip().lower()
        if "@" not in email:
            raise CommandError(f"--email {email!r} is not an email address")
        existing = User.objects.get_by_email(email)
        password = options["password"]
        if password is None and (existing is None or options["reset_password"]):
            if not sys.stdin.isatty():
                raise CommandError("--password is required when not running in a terminal")
            password = getpass.getpass("Password: ")
            if password != getpass.getpass("Password (again): "):
                raise CommandError("the passwords do not match")
        if password is not None and (existing is None or options["reset_password"]):
            try:
                validate_password(password, existing)
            except ValidationError as exc:
                raise CommandError("; ".join(exc.messages)) from exc
        with tenant_context(org_id=org.id, role="platform"):
            user, membership, created = ensure_member(
                org=org, email=email, role=options["role"], password=password, full_name=options["full_name"]
            )
        if existing is not None and options["reset_password"] and password:
            user.set_password(password)
            user.save(update_fields=["password"])
        state = "Added" if created else "Already a member:"
        self.stdout.write(f"{state} {email} as {membership.role} in {org.slug}")
