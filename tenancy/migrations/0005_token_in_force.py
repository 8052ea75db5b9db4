"""Issue 13: the database's check of a bearer token a worker already knows, sent with the request's first
statement (tenancy.rls.TOKEN_IN_FORCE_SQL)."""

from django.db import migrations

from tenancy.rls import DROP_TOKEN_IN_FORCE_SQL, TOKEN_IN_FORCE_SQL


class Migration(migrations.Migration):
    dependencies = [("tenancy", "0004_app_context")]

    operations = [migrations.RunSQL(TOKEN_IN_FORCE_SQL, DROP_TOKEN_IN_FORCE_SQL)]
