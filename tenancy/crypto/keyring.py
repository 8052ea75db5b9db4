"""Unwrapped data keys, held only in this process's memory for a short time.

An LRU with a TTL (DATA_KEY_CACHE_TTL_SECONDS). One loader per organization at a time, so a burst of cold
requests makes one Vault call, not one per thread; a queryset's rows are unwrapped in one batched call per
organization. A warm request makes no Vault call. When Vault is unreachable, cached keys keep working until
their TTL ends; anything else raises VaultUnavailable (the API answers 503) and nothing is written.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterable

from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from django.conf import settings
from django.utils import timezone

from .. import events
from .envelope import CiphertextError
from .vault import KeyServiceError, VaultClient, app_client

DATA = "data"
INDEX = "index"


def record_key_operation(
    org_id: uuid.UUID, operation: str, key_ids: list, detail: dict | None = None
) -> None:
    """Key use goes to the audit log (tenancy.events.KeyOperation); Vault's own audit device records it too."""
    events.publish(
        events.KeyOperation(
            org_id=str(org_id),
            actor=events.Actor.from_context(),
            request_id=events.context_request_id(),
            operation=operation,
            key_ids=tuple(str(k) for k in key_ids),
            detail=detail or {},
        )
    )


class Keyring:
    def __init__(
        self,
        ttl: float | None = None,
        max_entries: int = 4096,
        client: Callable[[], VaultClient] = app_client,
    ):
        self.ttl = ttl if ttl is not None else settings.DATA_KEY_CACHE_TTL_SECONDS
        self.max_entries = max_entries
        self._client = client
        # key id -> (organization, unwrapped key, a cipher built on it once, expiry)
        self._keys: OrderedDict[uuid.UUID, tuple[uuid.UUID, bytes, AESGCM, float]] = OrderedDict()
        self._current: dict[tuple[uuid.UUID, str], tuple[uuid.UUID, float]] = {}
        self._lock = threading.Lock()
        self._org_locks: dict[uuid.UUID, threading.Lock] = {}

    # -- cache -----------------------------------------------------------------------------------------

    def _cached(self, key_id: uuid.UUID, org_id: uuid.UUID) -> AESGCM | None:
        entry = self._keys.get(key_id)
        if entry is None or entry[3] < time.monotonic() or entry[0] != org_id:
            return None
        return entry[2]

    def _store(self, key_id: uuid.UUID, org_id: uuid.UUID, key: bytes) -> None:
        with self._lock:
            self._keys[key_id] = (org_id, key, AESGCM(key), time.monotonic() + self.ttl)
            self._keys.move_to_end(key_id)
            while len(self._keys) > self.max_entries:
                self._keys.popitem(last=False)

    def _org_lock(self, org_id: uuid.UUID) -> threading.Lock:
        with self._lock:
            return self._org_locks.setdefault(org_id, threading.Lock())

    def purge(self, org_id: uuid.UUID | None = None) -> None:
        """Forget keys (all, or one organization's): after shredding, rotation, or in tests."""
        with self._lock:
            if org_id is None:
                self._keys.clear()
                self._current.clear()
                return
            for key_id in [k for k, entry in self._keys.items() if entry[0] == org_id]:
                del self._keys[key_id]
            for slot in [s for s in self._current if s[0] == org_id]:
                del self._current[slot]

    # -- reading -------------------------------------------------------------------------------------

    def data_key(self, org_id: uuid.UUID, key_id: uuid.UUID) -> AESGCM:
        key = self._cached(key_id, org_id)
        if key is None:
            self.prefetch(org_id, [key_id])
            key = self._cached(key_id, org_id)
            if key is None:
                raise CiphertextError(
                    f"encrypted value names data key {key_id}, which this organization does not have"
                )
        return key

    def prefetch(self, org_id: uuid.UUID, key_ids: Iterable[uuid.UUID]) -> None:
        """Make sure these keys are in memory, unwrapping all the missing ones in one Vault call."""
        missing = {k for k in key_ids if self._cached(k, org_id) is None}
        if not missing:
            return
        with self._org_lock(org_id):
            missing = {k for k in missing if self._cached(k, org_id) is None}
            if not missing:
                return  # another thread loaded them while we waited
            from ..models import DataKey

            # Row-level security confines this to the context's organization: another org's key id is unknown.
            # Unknown ids are skipped here and reported, with their row and column, when the value is opened.
            rows = list(DataKey.objects.filter(org_id=org_id, id__in=missing).values_list("id", "wrapped"))
            if not rows:
                return
            results = self._client().unwrap(org_id, [wrapped for _, wrapped in rows])
            for (key_id, _), result in zip(rows, results, strict=True):
                if isinstance(result, KeyServiceError):
                    raise result
                self._store(key_id, org_id, result)
            record_key_operation(org_id, "data_key_unwrap", [row[0] for row in rows])

    # -- writing ---------------------------------------------------------------------------------------

    def current_key(self, org_id: uuid.UUID, purpose: str = DATA) -> tuple[uuid.UUID, AESGCM]:
        """The key new values are sealed with (or the index key); created through Vault on first use."""
        slot = (org_id, purpose)
        entry = self._current.get(slot)
        if entry is not None and entry[1] >= time.monotonic():
            key = self._cached(entry[0], org_id)
            if key is not None:
                return entry[0], key
        from ..models import DataKey

        with self._org_lock(org_id):
            row = (
                DataKey.objects.filter(org_id=org_id, purpose=purpose, retired_at__isnull=True)
                .order_by("-created_at")
                .values_list("id", "wrapped")
                .first()
            )
            if row is not None:
                key_id, wrapped = row
                if self._cached(key_id, org_id) is None:
                    result = self._client().unwrap(org_id, [wrapped])[0]
                    if isinstance(result, KeyServiceError):
                        raise result
                    self._store(key_id, org_id, result)
                    record_key_operation(org_id, "data_key_unwrap", [key_id])
            else:
                raw, wrapped = self._client().generate_data_key(org_id)
                data_key = DataKey(org_id=org_id, purpose=purpose, wrapped=wrapped, created_at=timezone.now())
                data_key.save(force_insert=True)
                key_id = data_key.id
                self._store(key_id, org_id, raw)
                record_key_operation(org_id, "data_key_generate", [key_id], {"purpose": purpose})
            self._current[slot] = (key_id, time.monotonic() + self.ttl)
            cipher = self._cached(key_id, org_id)
            assert cipher is not None
            return key_id, cipher

    def index_key(self, org_id: uuid.UUID) -> bytes:
        """The HMAC key for blind indexes (kept as bytes: HMAC needs the key itself, not a cipher)."""
        key_id, _ = self.current_key(org_id, INDEX)
        return self._keys[key_id][1]


keyring = Keyring()
