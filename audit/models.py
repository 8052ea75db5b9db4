"""The outbox: audit events written in the same transaction as the access they record.

Rows are stamped with the writing transaction's id (`created_xid`, xid8), so the shipper reads only below
the oldest transaction still running and never skips a row that commits out of order. The application may
only insert here; only the shipper's context may read and delete (audit/rls.py).
"""

from __future__ import annotations

from typing import ClassVar

from django.db import models
from django.db.models.functions import Now

from tenancy.models import TenantModel


class TransactionIdField(models.Field):
    """PostgreSQL's xid8, filled by the database with pg_current_xact_id()."""

    def db_type(self, connection) -> str:
        return "xid8"

    def from_db_value(self, value, expression, connection):
        return None if value is None else int(str(value))


class OutboxEvent(TenantModel):
    # No foreign key constraint: an organization's audit events outlive the organization's rows.
    org = models.ForeignKey(
        "tenancy.Organization",
        on_delete=models.DO_NOTHING,
        db_constraint=False,
        related_name="+",
        editable=False,
    )
    created_xid = TransactionIdField(db_default=models.Func(function="pg_current_xact_id"), editable=False)
    created_at = models.DateTimeField(db_default=Now(), editable=False)
    payload = models.JSONField()

    class Meta(TenantModel.Meta):
        indexes: ClassVar[list] = [models.Index(fields=["org", "created_at"])]

    def __str__(self) -> str:
        return f"outbox {self.pk}"
