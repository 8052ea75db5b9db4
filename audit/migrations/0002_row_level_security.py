"""The outbox's rules, the shipper's helpers, and the backstop triggers on health-information tables."""

from django.db import migrations

from audit import rls
from tenancy.rls import EnableTenantRLS


class Migration(migrations.Migration):
    dependencies = [("audit", "0001_initial"), ("clinic", "0002_row_level_security")]

    operations = [
        EnableTenantRLS("outboxevent", rules=rls.OUTBOX),
        migrations.RunSQL(
            rls.HELPERS_SQL + "".join(rls.backstop_sql(t) for t in rls.BACKSTOP_TABLES), rls.DROP_SQL
        ),
    ]
