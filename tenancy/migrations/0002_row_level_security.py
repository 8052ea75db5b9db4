"""Row-level security for tenancy's tables and the functions every policy uses to read the signed context."""

from django.db import migrations

from tenancy.rls import (
    CONTEXT_FUNCTIONS_SQL,
    DROP_CONTEXT_FUNCTIONS_SQL,
    ORGANIZATION_POLICIES_SQL,
    EnableTenantRLS,
)


class Migration(migrations.Migration):
    dependencies = [("tenancy", "0001_initial")]

    operations = [
        migrations.RunSQL(CONTEXT_FUNCTIONS_SQL, DROP_CONTEXT_FUNCTIONS_SQL),
        migrations.RunSQL(
            ORGANIZATION_POLICIES_SQL,
            "DROP POLICY org_select ON tenancy_organization; DROP POLICY org_insert ON tenancy_organization;"
            "DROP POLICY org_update ON tenancy_organization; DROP POLICY org_delete ON tenancy_organization;"
            "ALTER TABLE tenancy_organization NO FORCE ROW LEVEL SECURITY;"
            "ALTER TABLE tenancy_organization DISABLE ROW LEVEL SECURITY;",
        ),
        EnableTenantRLS("domain", platform=True),
        EnableTenantRLS("membership"),
        EnableTenantRLS("apitoken"),
        EnableTenantRLS("datakey"),
    ]
