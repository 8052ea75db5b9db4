"""Generate synthetic patients with a history, for benchmarks and load tests.

    python manage.py generate_patients --org SLUG --count N [--seed S] [--batch 50]

Makes sure the organization holds N generated patients of series S (default 0), each with a care team from
the organization's practitioners, consents (analytics withdrawn or never given for some), a few encounters in
various states and notes, all written through clinic.services (clinic/synthetic.py). Batches commit one by
one, with a progress line each; running it again adds only what is missing, so an interrupted run resumes and
a finished one adds nothing. Raising N adds the difference. Every value is made up.
"""

from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError, CommandParser

from clinic import synthetic
from tenancy.commands import organization_by_slug


class Command(BaseCommand):
    help = "Create up to N synthetic patients with history in an organization (resumable)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--org", required=True, help="The organization's slug.")
        parser.add_argument("--count", type=int, required=True, help="How many generated patients it holds.")
        parser.add_argument("--seed", type=int, default=0, help="The series: its own patients and histories.")
        parser.add_argument("--batch", type=int, default=50, help="Patients per transaction (default 50).")

    def handle(self, *args, **options) -> None:
        count, seed, batch = options["count"], options["seed"], options["batch"]
        if count < 0 or seed < 0 or batch < 1:
            raise CommandError("--count and --seed must be >= 0, --batch >= 1")
        org = organization_by_slug(options["org"])

        def progress(message: str) -> None:
            self.stdout.write(message)
            self.stdout.flush()

        try:
            with synthetic.quiet_phi_log(options["verbosity"] < 2):
                result = synthetic.generate_patients(
                    org_id=org.id, count=count, seed=seed, batch_size=batch, progress=progress
                )
        except ValueError as exc:
            raise CommandError(f"{org.slug}: {exc}") from exc
        if result.created:
            written = ", ".join(f"{key} {n}" for key, n in sorted(result.tally.counts.items()))
            self.stdout.write(f"Created {result.created} patients in {result.seconds}s: {written}.")
        else:
            self.stdout.write(f"{org.slug} already holds {count} generated patients of series {seed}.")
