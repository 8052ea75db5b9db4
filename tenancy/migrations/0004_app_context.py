"""Issue 13: `app_context()`, the whole verified context from one signature check, for the policy helpers."""

from django.db import migrations

from tenancy.rls import APP_CONTEXT_SQL, DROP_APP_CONTEXT_SQL


class Migration(migrations.Migration):
    dependencies = [("tenancy", "0003_invitations_and_lockout_revocation")]

    operations = [migrations.RunSQL(APP_CONTEXT_SQL, DROP_APP_CONTEXT_SQL)]
