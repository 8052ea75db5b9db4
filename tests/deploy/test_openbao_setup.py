"""deploy/openbao/setup.sh against a real OpenBao: it runs twice without harm, and the Vault Agent roles it
creates for Kubernetes give each workload its own secrets and nothing else (the web tier never reads the
audit log's writer credential, coturn reads nothing but TURN's)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from devstack.vault import DevVault, bao_binary

ROOT = Path(__file__).resolve().parents[2]
SETUP = ROOT / "deploy" / "openbao" / "setup.sh"
SECRETS = ("app", "database", "audit-reader", "audit-writer", "redis", "turn", "turn-tls")


@pytest.fixture(scope="module")
def openbao(tmp_path_factory):
    server = DevVault(Path(tmp_path_factory.mktemp("openbao-setup")))
    server.start()
    try:
        yield server
    finally:
        server.stop()


def bao(server: DevVault, *args: str, token: str | None = None, check: bool = True):
    env = {**os.environ, "BAO_ADDR": server.addr, "BAO_TOKEN": token or server.root_token}
    return subprocess.run([bao_binary(), *args], env=env, capture_output=True, text=True, check=check)


def api_server_ca(directory: Path) -> Path:
    """A self-signed CA standing in for the Kubernetes API server's (OpenBao outside a pod needs one)."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kubernetes")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    path = directory / "kubernetes-ca.crt"
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path


def run_setup(server: DevVault) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "BAO_ADDR": server.addr,
        "BAO_TOKEN": server.root_token,
        "BAO": bao_binary(),
        "KUBERNETES_HOST": "https://kubernetes.default.svc:443",
        "KUBERNETES_CA_FILE": str(api_server_ca(server.workdir)),
        "AUDIT_FILE": str(server.workdir / "setup-audit.log"),
    }
    return subprocess.run(["bash", str(SETUP)], env=env, capture_output=True, text=True)


def token_for(server: DevVault, role: str) -> str:
    """A token with exactly the policies the Kubernetes role hands its pods (no cluster here to log in)."""
    policies = json.loads(bao(server, "read", "-format=json", f"auth/kubernetes/role/{role}").stdout)["data"][
        "token_policies"
    ]
    args = ["token", "create", "-format=json", "-no-default-policy", "-ttl=5m"]
    args += [f"-policy={policy}" for policy in policies]
    return json.loads(bao(server, *args).stdout)["auth"]["client_token"]


def can_read(server: DevVault, token: str, name: str) -> bool:
    return bao(server, "kv", "get", f"secret/telemed/{name}", token=token, check=False).returncode == 0


def test_setup_runs_twice_and_creates_the_agent_roles(openbao):
    for attempt in (1, 2):
        result = run_setup(openbao)
        # 3: everything done except an audit device the server refused through the API (setup.sh's header).
        assert result.returncode in (0, 3), f"run {attempt}:\n{result.stdout}\n{result.stderr}"
    roles = bao(openbao, "list", "-format=json", "auth/kubernetes/role").stdout
    assert set(json.loads(roles)) == {"telemed-web", "telemed-audit-shipper", "telemed-turn"}
    web = json.loads(bao(openbao, "read", "-format=json", "auth/kubernetes/role/telemed-web").stdout)["data"]
    assert web["bound_service_account_names"] == ["telemed-web"]
    assert web["bound_service_account_namespaces"] == ["telemed"]
    assert web["token_max_ttl"] <= 600


def test_each_workload_reads_its_own_secrets_and_nothing_else(openbao):
    assert run_setup(openbao).returncode in (0, 3)
    for name in SECRETS:
        bao(openbao, "kv", "put", f"secret/telemed/{name}", "value=x")
    expected = {
        "telemed-web": {"app", "database", "audit-reader", "redis", "turn"},
        "telemed-audit-shipper": {"app", "database", "audit-writer", "audit-reader"},
        "telemed-turn": {"turn", "turn-tls"},
    }
    for role, allowed in expected.items():
        token = token_for(openbao, role)
        readable = {name for name in SECRETS if can_read(openbao, token, name)}
        assert readable == allowed, role
        # And no writes, even to its own paths.
        own = sorted(allowed)[0]
        refused = bao(openbao, "kv", "put", f"secret/telemed/{own}", "value=y", token=token, check=False)
        assert refused.returncode != 0, role
