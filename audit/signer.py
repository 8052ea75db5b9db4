"""Checkpoint signing with Vault Transit's Ed25519 key: the private key never leaves Vault."""

from __future__ import annotations

import time

from django.conf import settings

from tenancy.crypto.vault import VaultClient, app_client

from . import tlog


class CheckpointSigner:
    def __init__(self, client: VaultClient | None = None):
        self._client = client
        self._keys: dict[int, bytes] = {}
        self._keys_at = 0.0

    @property
    def client(self) -> VaultClient:
        return self._client or app_client()

    @property
    def name(self) -> str:
        return settings.AUDIT_KEY_NAME

    def public_keys(self, refresh: bool = False) -> dict[int, bytes]:
        if refresh or not self._keys or time.monotonic() - self._keys_at > 300:
            self._keys = self.client.public_keys(settings.AUDIT_SIGNING_KEY)
            self._keys_at = time.monotonic()
        return self._keys

    def vkeys(self) -> list[str]:
        return [tlog.vkey(self.name, public) for _, public in sorted(self.public_keys(refresh=True).items())]

    def sign(self, body: bytes) -> str:
        version, signature = self.client.sign(settings.AUDIT_SIGNING_KEY, body)
        public = self.public_keys().get(version) or self.public_keys(refresh=True)[version]
        return tlog.signed_note(body, [tlog.sign_line(self.name, tlog.key_id(self.name, public), signature)])
