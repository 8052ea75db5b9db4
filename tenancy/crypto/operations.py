"""Key operations: provisioning, rotation, re-encryption and crypto-shredding of an organization.

Each runs under the operators' Vault credential (never the web tier's), reports progress through a callback,
and is safe to interrupt and run again: every step checks what is already done before doing it.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable

from django.apps import apps
from django.conf import settings
from django.db import transaction
from django.utils import timezone

from ..context import tenant_context
from .envelope import parse
from .fields import _sealed_slot, encrypted_field_names
from .keyring import DATA, keyring, record_key_operation
from .vault import KeyNotFound, ops_client

Progress = Callable[[str], None]


def _quiet(message: str) -> None:
    pass


def _ctx(org_id: uuid.UUID):
    return tenant_context(org_id=org_id, role="platform", purpose="operations")


def provision_org_key(org_id: uuid.UUID) -> bool:
    """Create the organization's Transit key if it does not exist. Returns True when created."""
    client = ops_client()
    try:
        client.read_org_key(org_id)
        return False
    except KeyNotFound:
        client.create_org_key(org_id, settings.VAULT_KEY_ROTATION_PERIOD)
        return True


def rotate_org_key(org_id: uuid.UUID, progress: Progress = _quiet, batch: int = 200) -> dict:
    """Rotate the Transit key, start a new data key, rewrap every data key, then raise the minimum version.

    Re-running after an interruption rotates again (harmless: one more version) and rewraps whatever is
    still below the newest version; the minimum decryption version is raised only once nothing needs it.
    """
    from ..models import DataKey

    client = ops_client()
    latest = client.rotate_org_key(org_id)
    progress(f"Transit key rotated to version {latest}.")
    with _ctx(org_id):
        retired = DataKey.objects.filter(
            org_id=org_id, purpose=DataKey.Purpose.DATA, retired_at__isnull=True
        ).update(retired_at=timezone.now())
    keyring.purge(org_id)
    with _ctx(org_id):
        keyring.current_key(org_id, DATA)  # a fresh data key, wrapped under the newest version
    progress(f"Retired {retired} data key(s); new data key in use.")
    rewrapped = 0
    prefix = f"vault:v{latest}:"
    while True:
        with _ctx(org_id):
            stale = list(
                DataKey.objects.filter(org_id=org_id)
                .exclude(wrapped__startswith=prefix)
                .order_by("id")[:batch]
            )
            if not stale:
                break
            for key, wrapped in zip(stale, client.rewrap(org_id, [k.wrapped for k in stale]), strict=True):
                DataKey.objects.filter(pk=key.pk).update(wrapped=wrapped)
            rewrapped += len(stale)
        progress(f"Rewrapped {rewrapped} data key(s).")
    client.set_min_decryption_version(org_id, latest)
    progress(f"Minimum decryption version raised to {latest}: older wrapped keys are refused.")
    keyring.purge(org_id)
    with _ctx(org_id):
        record_key_operation(
            org_id, "key_rotate", [], {"version": latest, "rewrapped": rewrapped, "retired": retired}
        )
    return {"version": latest, "rewrapped": rewrapped, "retired": retired}


def encrypted_models() -> list:
    return [m for m in apps.get_models() if encrypted_field_names(m)]


def reencrypt(org_id: uuid.UUID, progress: Progress = _quiet, batch: int = 500) -> int:
    """Move every encrypted row of the organization onto its newest data key, a batch per transaction."""
    total = 0
    with _ctx(org_id):
        current_id, _ = keyring.current_key(org_id, DATA)
    for model in encrypted_models():
        fields = [model._meta.get_field(n) for n in sorted(encrypted_field_names(model))]
        done_model = 0
        last_pk = None
        while True:
            with _ctx(org_id):
                queryset = model.objects.filter(org_id=org_id).order_by("pk")
                if last_pk is not None:
                    queryset = queryset.filter(pk__gt=last_pk)
                rows = list(queryset[:batch])
                if not rows:
                    break
                last_pk = rows[-1].pk
                for row in rows:
                    stale = [
                        f
                        for f in fields
                        if row.__dict__.get(f.attname) is not None
                        and parse(row.__dict__[f.attname])[1] != current_id
                    ]
                    if not stale:
                        continue
                    for f in stale:
                        value = getattr(row, f.name)  # opens with the old key
                        row.__dict__.pop(
                            _sealed_slot(f.attname), None
                        )  # forget the old ciphertext: seal anew
                        row.__dict__[f.attname] = value
                    with transaction.atomic():
                        row.save(update_fields=[f.name for f in stale])
                    done_model += 1
            progress(f"{model._meta.label}: {done_model} row(s) moved to data key {current_id}.")
        total += done_model
    with _ctx(org_id):
        record_key_operation(org_id, "reencrypt", [current_id], {"rows": total})
    return total


def shred_org(org_id: uuid.UUID, progress: Progress = _quiet) -> None:
    """Crypto-shred: delete the Transit key, then the wrapped data keys, then forget every cached key."""
    from ..models import DataKey

    client = ops_client()
    with _ctx(org_id):
        # Recorded first: once the key is gone the organization's records stay, its audit log with them.
        record_key_operation(org_id, "key_shred", [])
    try:
        client.delete_org_key(org_id)
        progress("Transit key deleted.")
    except KeyNotFound:
        progress("Transit key already gone.")
    with _ctx(org_id):
        deleted, _ = DataKey.objects.filter(org_id=org_id).delete()
    progress(f"Deleted {deleted} wrapped data key(s).")
    keyring.purge(org_id)
    progress("Purged this process's key cache; other processes forget within DATA_KEY_CACHE_TTL_SECONDS.")
