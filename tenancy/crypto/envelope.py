"""The stored format of an encrypted value, and blind-index tokens.

    version (1 byte, 0x01) | data key id (16 bytes, UUID) | nonce (12 bytes) | ciphertext | tag (16 bytes)

AES-256-GCM with a fresh random nonce per value. The associated data binds the value to its organization,
table, column and row, so a ciphertext copied anywhere else fails to decrypt instead of reading as valid.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import uuid

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

FORMAT_V1 = 1
HEADER = 1 + 16 + 12
TAG = 16
BLIND_INDEX_VERSION = "b1"
BLIND_INDEX_BYTES = 16


class CiphertextError(ValueError):
    """A stored value could not be authenticated: moved, edited, truncated, or under an unknown key."""


class Sealed(bytes):
    """Ciphertext as read from (or ready for) the database; never mistaken for plaintext."""

    __slots__ = ()

    @property
    def key_id(self) -> uuid.UUID:
        if len(self) < HEADER + TAG:
            raise CiphertextError("encrypted value is truncated")
        return uuid.UUID(bytes=self[1:17])


def associated_data(org_id: uuid.UUID | str, table: str, column: str, pk: uuid.UUID | str) -> bytes:
    return f"v1|{org_id}|{table}|{column}|{pk}".encode()


def cipher_for(key: bytes | AESGCM) -> AESGCM:
    return key if isinstance(key, AESGCM) else AESGCM(key)


def seal(key_id: uuid.UUID, key: bytes | AESGCM, plaintext: bytes, aad: bytes) -> Sealed:
    nonce = os.urandom(12)
    return Sealed(bytes([FORMAT_V1]) + key_id.bytes + nonce + cipher_for(key).encrypt(nonce, plaintext, aad))


def parse(blob: bytes) -> tuple[int, uuid.UUID, bytes, bytes]:
    if len(blob) < HEADER + TAG:
        raise CiphertextError("encrypted value is truncated")
    version = blob[0]
    if version != FORMAT_V1:
        raise CiphertextError(f"encrypted value has unknown format version {version}")
    return version, uuid.UUID(bytes=bytes(blob[1:17])), bytes(blob[17:29]), bytes(blob[29:])


def open_sealed(blob: bytes, key: bytes | AESGCM, aad: bytes) -> bytes:
    if len(blob) < HEADER + TAG:
        raise CiphertextError("encrypted value is truncated")
    if blob[0] != FORMAT_V1:
        raise CiphertextError(f"encrypted value has unknown format version {blob[0]}")
    try:
        return cipher_for(key).decrypt(blob[17:29], blob[29:], aad)
    except InvalidTag as exc:
        raise CiphertextError(
            "encrypted value failed authentication: it belongs to another row, column or organization, "
            "or it was altered"
        ) from exc


def blind_index(index_key: bytes, normalized: str) -> str:
    """A truncated, versioned HMAC-SHA256 token: equal values match within one organization only."""
    digest = hmac.new(index_key, normalized.encode(), hashlib.sha256).digest()[:BLIND_INDEX_BYTES]
    return f"{BLIND_INDEX_VERSION}:{digest.hex()}"
