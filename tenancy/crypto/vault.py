"""Vault (OpenBao) Transit, as the application uses it: one derived key per organization, `org-<uuid>`.

The server never sees an organization key. It asks Transit for data keys (returned wrapped under the org key,
bound to the organization by the derivation context) and to unwrap them, in batches. Every call carries the
application's request id (X-Request-Id) so Vault's audit device joins the application's audit log.

Two credentials: the application's (AppRole, or a token; policy deploy/openbao/app.hcl: use keys, never
manage them) and the operators' (VAULT_OPS_TOKEN; ops.hcl / offboarding.hcl) for provisioning, rotation and
shredding, which only management commands use.
"""

from __future__ import annotations

import base64
import logging
import threading
import time
import uuid
from typing import Any

import hvac
import requests
from django.conf import settings

from ..context import current

logger = logging.getLogger(__name__)


class KeyServiceError(RuntimeError):
    """Base for key failures."""


class VaultUnavailable(KeyServiceError):
    """Vault did not answer, or refused our credentials: the caller answers 503 and writes nothing."""


class KeyNotFound(KeyServiceError):
    """The organization's Transit key does not exist (never created, or shredded)."""


class UnwrapFailed(KeyServiceError):
    """Transit refused to unwrap a data key: wrong organization context, a refused version, or tampering."""


def key_name(org_id: uuid.UUID | str) -> str:
    return f"org-{org_id}"


def derivation_context(org_id: uuid.UUID | str) -> str:
    """The Transit derivation context that binds a wrapped data key to its organization."""
    return base64.b64encode(f"telemed-org:{org_id}".encode()).decode()


class VaultClient:
    """A thread-safe Transit client with AppRole login and token renewal before expiry."""

    def __init__(
        self,
        addr: str,
        *,
        token: str = "",
        role_id: str = "",
        secret_id: str = "",
        mount: str = "transit",
        timeout: float = 2.0,
    ):
        self.addr, self.mount, self.timeout = addr, mount, timeout
        self._static_token, self._role_id, self._secret_id = token, role_id, secret_id
        self._client = hvac.Client(url=addr, timeout=timeout)
        self._lock = threading.Lock()
        self._token_expires = 0.0
        self._token_ttl = 0.0
        self.calls = 0  # HTTP requests made to Vault (benchmarks and tests count them)

    # -- authentication ------------------------------------------------------------------------------

    def _ensure_token(self) -> None:
        now = time.monotonic()
        if self._static_token:
            self._client.token = self._static_token
            return
        # Renew when two thirds of the TTL have passed; log in again if renewal fails or the token is gone.
        if self._client.token and now < self._token_expires - self._token_ttl / 3:
            return
        with self._lock:
            if self._client.token and now < self._token_expires - self._token_ttl / 3:
                return
            try:
                auth = None
                if self._client.token and now < self._token_expires:
                    try:
                        auth = self._client.auth.token.renew_self()["auth"]
                        self.calls += 1
                        if float(auth.get("lease_duration") or 0) < 2:
                            auth = None  # at its maximum TTL: renewing gains nothing, log in afresh
                    except hvac.exceptions.VaultError:
                        auth = None  # expired or revoked meanwhile: log in afresh below
                if auth is None:
                    auth = self._client.auth.approle.login(role_id=self._role_id, secret_id=self._secret_id)[
                        "auth"
                    ]
                    self.calls += 1
            except (requests.RequestException, hvac.exceptions.VaultDown) as exc:
                raise VaultUnavailable(f"Vault is unreachable at {self.addr}: {type(exc).__name__}") from exc
            except hvac.exceptions.VaultError as exc:
                self._client.token = None
                raise VaultUnavailable(f"Vault refused the application's credentials: {exc}") from exc
            self._client.token = auth["client_token"]
            self._token_ttl = float(auth.get("lease_duration") or 3600)
            self._token_expires = time.monotonic() + self._token_ttl

    def token_info(self) -> dict:
        self._ensure_token()
        return self._client.auth.token.lookup_self()["data"]

    # -- raw calls -----------------------------------------------------------------------------------

    def _call(self, method: str, path: str, payload: dict | None = None) -> dict[str, Any]:
        self._ensure_token()
        ctx = current()
        headers = {"X-Request-Id": ctx.request_id} if ctx else {}
        self.calls += 1
        try:
            response = self._client.adapter.request(method, f"/v1/{path}", json=payload, headers=headers)
        except (requests.RequestException, hvac.exceptions.VaultDown) as exc:
            raise VaultUnavailable(f"Vault is unreachable at {self.addr}: {type(exc).__name__}") from exc
        except hvac.exceptions.InvalidPath as exc:
            raise KeyNotFound(f"Transit key for {path} does not exist") from exc
        except hvac.exceptions.Forbidden as exc:
            if self._static_token:
                raise VaultUnavailable(f"Vault refused the request to {path}: permission denied") from exc
            self._client.token = None  # a revoked token: log in again once, then give up loudly
            self._token_expires = 0
            raise VaultUnavailable(f"Vault refused the request to {path}: permission denied") from exc
        except hvac.exceptions.InvalidRequest as exc:
            message = str(exc)
            if "not found" in message or "no existing key" in message:
                raise KeyNotFound(f"Transit key for {path} does not exist") from exc
            body = getattr(exc, "json", None) or {}
            if isinstance(body, dict) and body.get("data", {}).get("batch_results"):
                return body  # per-item errors are reported in the batch results
            raise UnwrapFailed(f"Vault refused {path}: {message[:200]}") from exc
        except hvac.exceptions.InternalServerError as exc:
            if "not found" in str(exc) or "no existing key" in str(exc):
                raise KeyNotFound(f"Transit key for {path} does not exist") from exc
            raise VaultUnavailable(f"Vault failed on {path}: {str(exc)[:200]}") from exc
        except hvac.exceptions.VaultError as exc:
            raise VaultUnavailable(f"Vault failed on {path}: {str(exc)[:200]}") from exc
        if isinstance(response, requests.Response):  # 204 No Content
            return {}
        return response or {}

    # -- what the application may do -----------------------------------------------------------------

    def generate_data_key(self, org_id: uuid.UUID) -> tuple[bytes, str]:
        """A fresh 256-bit data key: (plaintext for this process's memory, wrapped for the database)."""
        data = self._call(
            "POST",
            f"{self.mount}/datakey/plaintext/{key_name(org_id)}",
            {"context": derivation_context(org_id), "bits": 256},
        )["data"]
        return base64.b64decode(data["plaintext"]), data["ciphertext"]

    BATCH = 200  # OpenBao refuses JSON bodies with too many strings (about 250 batch items)

    def unwrap(self, org_id: uuid.UUID, wrapped: list[str]) -> list[bytes | KeyServiceError]:
        """Unwrap several data keys of one organization: one request per 200 keys."""
        results: list[bytes | KeyServiceError] = []
        for start in range(0, len(wrapped), self.BATCH):
            results.extend(self._unwrap_batch(org_id, wrapped[start : start + self.BATCH]))
        return results

    def _unwrap_batch(self, org_id: uuid.UUID, wrapped: list[str]) -> list[bytes | KeyServiceError]:
        context = derivation_context(org_id)
        body = self._call(
            "POST",
            f"{self.mount}/decrypt/{key_name(org_id)}",
            {"batch_input": [{"ciphertext": w, "context": context} for w in wrapped]},
        )
        results: list[bytes | KeyServiceError] = []
        for item in body["data"]["batch_results"]:
            if item.get("error"):
                results.append(UnwrapFailed(item["error"]))
            else:
                results.append(base64.b64decode(item["plaintext"]))
        return results

    def sign(self, key: str, data: bytes) -> tuple[int, bytes]:
        """Sign with a Transit asymmetric key (Ed25519 signs the message itself): (key version, signature)."""
        body = self._call("POST", f"{self.mount}/sign/{key}", {"input": base64.b64encode(data).decode()})
        _, version, signature = body["data"]["signature"].split(":", 2)
        return int(version.lstrip("v")), base64.b64decode(signature)

    def public_keys(self, key: str) -> dict[int, bytes]:
        """Every version's public key of a Transit asymmetric key (old checkpoints stay verifiable)."""
        keys = self._call("GET", f"{self.mount}/keys/{key}")["data"]["keys"]
        return {int(version): base64.b64decode(info["public_key"]) for version, info in keys.items()}

    # -- what operators may do (ops / offboarding credentials) ---------------------------------------

    def create_org_key(self, org_id: uuid.UUID, rotation_period: str = "") -> None:
        payload: dict[str, Any] = {"type": "aes256-gcm96", "derived": True, "exportable": False}
        if rotation_period:
            payload["auto_rotate_period"] = rotation_period
        self._call("POST", f"{self.mount}/keys/{key_name(org_id)}", payload)

    def read_org_key(self, org_id: uuid.UUID) -> dict:
        return self._call("GET", f"{self.mount}/keys/{key_name(org_id)}")["data"]

    def rotate_org_key(self, org_id: uuid.UUID) -> int:
        self._call("POST", f"{self.mount}/keys/{key_name(org_id)}/rotate", {})
        return int(self.read_org_key(org_id)["latest_version"])

    def rewrap(self, org_id: uuid.UUID, wrapped: list[str]) -> list[str]:
        """Re-encrypt wrapped data keys under the newest key version; plaintext never leaves Vault."""
        context = derivation_context(org_id)
        body = self._call(
            "POST",
            f"{self.mount}/rewrap/{key_name(org_id)}",
            {"batch_input": [{"ciphertext": w, "context": context} for w in wrapped]},
        )
        out = []
        for item in body["data"]["batch_results"]:
            if item.get("error"):
                raise UnwrapFailed(f"rewrap refused: {item['error']}")
            out.append(item["ciphertext"])
        return out

    def set_min_decryption_version(self, org_id: uuid.UUID, version: int) -> None:
        self._call(
            "POST", f"{self.mount}/keys/{key_name(org_id)}/config", {"min_decryption_version": version}
        )

    def delete_org_key(self, org_id: uuid.UUID) -> None:
        self._call("POST", f"{self.mount}/keys/{key_name(org_id)}/config", {"deletion_allowed": True})
        self._call("DELETE", f"{self.mount}/keys/{key_name(org_id)}")


_app_client: VaultClient | None = None
_ops_client: VaultClient | None = None
_clients_lock = threading.Lock()


def app_client() -> VaultClient:
    global _app_client
    if _app_client is None:
        with _clients_lock:
            if _app_client is None:
                if not settings.VAULT_ADDR:
                    raise VaultUnavailable(
                        "Vault is not configured (VAULT_ADDR): health information is unavailable"
                    )
                _app_client = VaultClient(
                    settings.VAULT_ADDR,
                    token=settings.VAULT_TOKEN,
                    role_id=settings.VAULT_ROLE_ID,
                    secret_id=settings.VAULT_SECRET_ID,
                    mount=settings.VAULT_TRANSIT_MOUNT,
                    timeout=settings.VAULT_TIMEOUT_SECONDS,
                )
    return _app_client


def ops_client() -> VaultClient:
    global _ops_client
    if _ops_client is None:
        if not settings.VAULT_ADDR or not settings.VAULT_OPS_TOKEN:
            raise VaultUnavailable(
                "key operations need VAULT_ADDR and VAULT_OPS_TOKEN (an operator's credential)"
            )
        _ops_client = VaultClient(
            settings.VAULT_ADDR,
            token=settings.VAULT_OPS_TOKEN,
            mount=settings.VAULT_TRANSIT_MOUNT,
            timeout=max(settings.VAULT_TIMEOUT_SECONDS, 10.0),
        )
    return _ops_client


def set_clients(app: VaultClient | None, ops: VaultClient | None = None) -> None:
    """Point the process at another Vault (tests that stop their own OpenBao)."""
    global _app_client, _ops_client
    _app_client, _ops_client = app, ops
