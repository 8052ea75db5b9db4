"""Issue 13: the row policies' helpers in PL/pgSQL (plans kept per session), each verifying the context once."""

from django.db import migrations

from clinic import rls


class Migration(migrations.Migration):
    dependencies = [
        ("clinic", "0003_visit_scope_and_record_invariants"),
        ("tenancy", "0004_app_context"),
    ]

    # Re-runnable: the migration runs the current helpers' text (CREATE OR REPLACE), as 0003 did.
    operations = [migrations.RunSQL(rls.HELPERS_SQL, migrations.RunSQL.noop)]
