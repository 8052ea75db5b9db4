"""Policy accessors verify the signed context in one function call instead of two."""

from django.db import migrations

from tenancy.rls import CONTEXT_FUNCTIONS_SQL, SINGLE_LAYER_ACCESSORS_SQL


class Migration(migrations.Migration):
    dependencies = [("tenancy", "0004_datakey")]

    operations = [migrations.RunSQL(SINGLE_LAYER_ACCESSORS_SQL, CONTEXT_FUNCTIONS_SQL)]
