"""TURN: short-lived coturn credentials, and local coturn configurations derived from the production one.

Credentials follow coturn's TURN REST API scheme (`use-auth-secret`): the username is
`<unix expiry>:<opaque user id>` and the password is base64(HMAC-SHA1(secret, username)). coturn recomputes the
HMAC with each of its `static-auth-secret` lines and refuses an expired username when a relay is allocated.
The first of settings.TURN_SHARED_SECRETS signs; the rest are only there to document what coturn still
accepts during a rotation (deploy/coturn/README.md). The opaque id is a keyed hash of the user id, so
coturn's logs and quotas see a stable per-user value without learning who it is.

`turn_config()` rewrites deploy/coturn/turnserver.conf for development (`make run`) and the tests: loopback
addresses, free ports, a self-signed certificate, local secrets and file paths. Every other line (denied
peer ranges, quotas, TLS versions, no-tcp-relay...) is the shipped one. One difference is added on purpose
for two peers relayed through the same local server, see `LOOPBACK_RELAY_EXCEPTION`.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import hmac
import ipaddress
import random
import shutil
import socket
import subprocess
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from django.conf import settings
from django.utils.crypto import salted_hmac

PRODUCTION_CONFIG = Path(__file__).resolve().parent.parent / "deploy" / "coturn" / "turnserver.conf"

# Ranges the production file must deny (coturn's own defaults leave RFC 1918 and CGNAT open).
REQUIRED_DENIED_PEER_RANGES = (
    "0.0.0.0-0.255.255.255",
    "10.0.0.0-10.255.255.255",
    "100.64.0.0-100.127.255.255",
    "127.0.0.0-127.255.255.255",
    "169.254.0.0-169.254.255.255",
    "172.16.0.0-172.31.255.255",
    "192.0.0.0-192.0.0.255",
    "192.168.0.0-192.168.255.255",
    "198.18.0.0-198.19.255.255",
    "224.0.0.0-255.255.255.255",
    "::1",
    "::ffff:0.0.0.0-::ffff:255.255.255.255",
    "fc00::-fdff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
    "fe80::-febf:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
)

# Lines the production file must carry, and lines it must never carry.
REQUIRED_FLAGS = (
    "use-auth-secret",
    "no-cli",
    "no-multicast-peers",
    "no-tcp-relay",
    "fingerprint",
    "no-tlsv1",
)
FORBIDDEN_OPTIONS = ("allow-loopback-peers", "allowed-peer-ip", "no-auth", "lt-cred-mech", "web-admin")

LOOPBACK_RELAY_EXCEPTION = """\
# -- Development and tests only (added by video/turn.py; never in the production file) --------------------
# Two local peers relay through this one server, so each must be allowed to reach the other's relay address,
# which is on loopback. coturn refuses every loopback peer *before* it reads allowed-peer-ip, and only
# allow-loopback-peers lifts that; the denied-peer-ip=127.0.0.0-127.255.255.255 line above then refuses all of
# loopback again except the one address allowed-peer-ip names: {relay_ip}, the relay address, where only this
# server's relay sockets listen. Everything else denied above stays denied, and so does 127.0.0.1 when the
# relay has its own address. This server listens on loopback only, so no one off this machine can use it.
allow-loopback-peers
allowed-peer-ip={relay_ip}
"""


class TurnUnavailable(RuntimeError):
    """No TURN secret or URL is configured."""


# -- credentials ------------------------------------------------------------------------------------------


def _setting_list(name: str) -> list[str]:
    raw = getattr(settings, name, None) or []
    if isinstance(raw, str):
        raw = raw.split(",")
    return [item.strip() for item in raw if item and item.strip()]


def shared_secrets() -> list[str]:
    """settings.TURN_SHARED_SECRETS, newest first: the first signs."""
    return _setting_list("TURN_SHARED_SECRETS")


def turn_urls() -> list[str]:
    return _setting_list("TURN_URLS")


def opaque_user_id(user_id: object) -> str:
    """A stable per-user id for coturn (logs, quotas) that does not reveal the user id."""
    return salted_hmac("video.turn.opaque-user-id", str(user_id), algorithm="sha256").hexdigest()[:32]


def sign_username(username: str, secret: str) -> str:
    """The TURN REST API password for `username` under `secret` (what coturn recomputes)."""
    digest = hmac.new(secret.encode(), username.encode(), hashlib.sha1).digest()
    return base64.b64encode(digest).decode("ascii")


def turn_credentials(user_id: object, ttl: int | None = None, *, now: float | None = None) -> dict:
    """Short-lived TURN credentials for one user: {"username", "credential", "ttl", "expires_at", "uris"}."""
    secrets, uris = shared_secrets(), turn_urls()
    if not secrets or not uris:
        raise TurnUnavailable("TURN_SHARED_SECRETS and TURN_URLS must both be set.")
    ttl = int(settings.TURN_CREDENTIAL_TTL_SECONDS if ttl is None else ttl)
    if ttl <= 0:
        raise ValueError("ttl must be positive")
    expiry = int(time.time() if now is None else now) + ttl
    username = f"{expiry}:{opaque_user_id(user_id)}"
    return {
        "username": username,
        "credential": sign_username(username, secrets[0]),
        "ttl": ttl,
        "expires_at": datetime.datetime.fromtimestamp(expiry, tz=datetime.UTC).isoformat(),
        "uris": uris,
    }


def ice_servers(credentials: dict) -> list[dict]:
    """The RTCConfiguration.iceServers entry for credentials from turn_credentials()."""
    return [
        {
            "urls": list(credentials["uris"]),
            "username": credentials["username"],
            "credential": credentials["credential"],
        }
    ]


# -- the production file -----------------------------------------------------------------------------------


def _options(text: str) -> list[tuple[str, str]]:
    """(name, value) for every option line; a flag's value is ''."""
    options = []
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        name, _, value = stripped.partition("=")
        options.append((name.strip().lstrip("-"), value.strip()))
    return options


def check_production_config(text: str) -> list[str]:
    """What is wrong with a production coturn configuration for this platform (empty: nothing found)."""
    options = _options(text)
    names = {name for name, _ in options}
    denied = {value for name, value in options if name == "denied-peer-ip"}
    problems = [f"missing denied-peer-ip={r}" for r in REQUIRED_DENIED_PEER_RANGES if r not in denied]
    problems += [f"missing {flag}" for flag in REQUIRED_FLAGS if flag not in names]
    problems += [f"{name} must not be set" for name in FORBIDDEN_OPTIONS if name in names]
    secrets = [value for name, value in options if name == "static-auth-secret"]
    if not secrets:
        problems.append("no static-auth-secret")
    for number, secret in enumerate(secrets, 1):
        if "REPLACE" in secret.upper():
            problems.append(f"static-auth-secret #{number} is still a placeholder")
        elif len(secret) < 32:
            problems.append(f"static-auth-secret #{number} is shorter than 32 characters")
    for name, value in options:
        if name in ("listening-ip", "relay-ip", "external-ip") and "203.0.113.10" in value:
            problems.append(f"{name} is still the placeholder address 203.0.113.10")
    for name, value in options:
        if name != "denied-peer-ip":
            continue
        try:
            ends = [ipaddress.ip_address(end) for end in value.split("-")]
        except ValueError:
            problems.append(f"denied-peer-ip={value} is not an address or range")
            continue
        if len(ends) > 2 or ends[0].version != ends[-1].version or int(ends[0]) > int(ends[-1]):
            problems.append(f"denied-peer-ip={value} is not an address or range")
        elif ends[0].version == 6 and int(ends[0]) == 0:
            # coturn 4.6 matches every IPv4 peer against a range starting at `::`: it would relay nothing.
            problems.append(f"denied-peer-ip={value} starts at ::, which coturn applies to all IPv4 peers")
    return problems


# -- local configurations (development, tests) -------------------------------------------------------------


@dataclass
class LocalPorts:
    listening: int
    tls: int
    alt_listening: int
    alt_tls: int
    min_relay: int
    max_relay: int


def turn_config(
    text: str | None = None,
    *,
    secrets: Sequence[str],
    ports: LocalPorts,
    cert: Path,
    pkey: Path,
    workdir: Path,
    listening_ip: str = "127.0.0.1",
    relay_ip: str = "127.0.0.1",
    realm: str | None = None,
    loopback_relay: bool = True,
) -> str:
    """The production configuration rewritten to run on this machine.

    Addresses, ports, certificate, secrets and file paths (pid, log, database) are replaced; `external-ip` is
    dropped. With `loopback_relay` the relay may reach its own loopback address and nothing else on loopback
    (LOOPBACK_RELAY_EXCEPTION): what two local peers need. Without it the result is the shipped policy
    unchanged, which refuses every loopback peer.
    """
    if text is None:
        text = PRODUCTION_CONFIG.read_text()
    if not secrets:
        raise ValueError("at least one secret is needed")
    names = {name for name, _ in _options(text)}
    for name in ("allow-loopback-peers", "allowed-peer-ip"):
        if name in names:
            raise ValueError(f"the production configuration must not set {name}")
    if loopback_relay and "127.0.0.0-127.255.255.255" not in {
        v for n, v in _options(text) if n == "denied-peer-ip"
    }:
        # allow-loopback-peers without this line would open all of loopback.
        raise ValueError("the production configuration must deny 127.0.0.0-127.255.255.255")
    replacements = {
        "listening-ip": [listening_ip],
        "relay-ip": [relay_ip],
        "external-ip": [],
        "listening-port": [str(ports.listening)],
        "tls-listening-port": [str(ports.tls)],
        "alt-listening-port": [str(ports.alt_listening)],
        "alt-tls-listening-port": [str(ports.alt_tls)],
        "min-port": [str(ports.min_relay)],
        "max-port": [str(ports.max_relay)],
        "cert": [str(cert)],
        "pkey": [str(pkey)],
        "static-auth-secret": list(secrets),
        "pidfile": [str(workdir / "turnserver.pid")],
        "userdb": [str(workdir / "turndb")],
        "syslog": [],
        "log-file": [str(workdir / "turnserver.log")],
        "simple-log": [""],
        **({"realm": [realm]} if realm else {}),
    }
    out: list[str] = []
    done: set[str] = set()
    for line in text.splitlines():
        stripped = line.strip()
        name = stripped.partition("=")[0].strip().lstrip("-")
        if stripped and not stripped.startswith("#") and name in replacements:
            if name not in done:
                out += [_line(name, value) for value in replacements[name]]
                done.add(name)
            continue
        out.append(line)
    missing = [n for n in replacements if n not in done and replacements[n]]
    if missing:
        out.append("# -- Local values (video/turn.py) --")
        out += [_line(name, value) for name in missing for value in replacements[name]]
    if loopback_relay:
        out.append(LOOPBACK_RELAY_EXCEPTION.format(relay_ip=relay_ip).rstrip("\n"))
    return "\n".join(out) + "\n"


def _line(name: str, value: str) -> str:
    return f"{name}={value}" if value else name


def turnserver_binary() -> str | None:
    return shutil.which("turnserver") or next(
        (p for p in ("/usr/bin/turnserver", "/usr/local/bin/turnserver") if Path(p).exists()), None
    )


def _bindable(address: str, port: int, kinds: Iterable[int]) -> bool:
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    sockets = []
    try:
        for kind in kinds:
            sock = socket.socket(family, kind)
            sockets.append(sock)
            sock.bind((address, port))
        return True
    except OSError:
        return False
    finally:
        for sock in sockets:
            sock.close()


def loopback_relay_address() -> str:
    """127.0.0.2 where it exists (Linux routes all of 127/8 to lo), so the relay has an address of its own and
    the local configuration still refuses 127.0.0.1, where the application and its services listen; else
    127.0.0.1 (macOS configures only that one)."""
    return "127.0.0.2" if _bindable("127.0.0.2", 0, (socket.SOCK_DGRAM,)) else "127.0.0.1"


def free_ports(listening_ip: str, relay_ip: str, relay_count: int = 32) -> LocalPorts:
    """Four listener ports free on `listening_ip` (UDP and TCP) and a relay range free on `relay_ip`, below
    Linux's ephemeral range so outgoing connections do not take them meanwhile."""
    both = (socket.SOCK_STREAM, socket.SOCK_DGRAM)
    chosen: list[int] = []
    rng = random.SystemRandom()
    while len(chosen) < 4:
        port = rng.randrange(20000, 32000)
        if port not in chosen and _bindable(listening_ip, port, both):
            chosen.append(port)
    for _ in range(200):
        start = rng.randrange(10000, 20000 - relay_count)
        if all(_bindable(relay_ip, p, (socket.SOCK_DGRAM,)) for p in range(start, start + relay_count)):
            listening, tls, alt_listening, alt_tls = chosen
            return LocalPorts(listening, tls, alt_listening, alt_tls, start, start + relay_count - 1)
    raise RuntimeError("no free relay port range")


def self_signed_certificate(directory: Path, name: str = "localhost") -> tuple[Path, Path]:
    """A throwaway certificate for the local TLS listener (valid for localhost and 127.0.0.1, 30 days)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName(name), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    directory.mkdir(parents=True, exist_ok=True)
    cert, pkey = directory / "cert.pem", directory / "pkey.pem"
    pkey.touch(mode=0o600)
    pkey.chmod(0o600)
    pkey.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    cert.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    return cert, pkey


@dataclass
class LocalTurn:
    """A coturn configuration written for this machine, and how to reach it."""

    workdir: Path
    config: Path
    listening_ip: str
    relay_ip: str
    ports: LocalPorts
    secrets: list[str]
    realm: str
    cert: Path
    process: subprocess.Popen | None = field(default=None, repr=False)

    @property
    def log(self) -> Path:
        return self.workdir / "turnserver.log"

    def urls(self) -> list[str]:
        """turn: over UDP first (aiortc uses only the first URL), then TCP and TLS."""
        ip, port, tls = self.listening_ip, self.ports.listening, self.ports.tls
        return [
            f"turn:{ip}:{port}?transport=udp",
            f"turn:{ip}:{port}?transport=tcp",
            f"turns:{ip}:{tls}?transport=tcp",
        ]

    def start(self, binary: str | None = None, timeout: float = 15.0) -> subprocess.Popen:
        binary = binary or turnserver_binary()
        if binary is None:
            raise TurnUnavailable("turnserver is not installed (apt-get install coturn)")
        self.log.unlink(missing_ok=True)
        self.process = subprocess.Popen(
            [binary, "-c", str(self.config)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            stdin=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"turnserver exited ({self.process.returncode}):\n{self.log_tail()}")
            if self._listening():
                return self.process
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"turnserver did not start within {timeout} s:\n{self.log_tail()}")

    def _listening(self) -> bool:
        for port in (self.ports.listening, self.ports.tls):
            try:
                socket.create_connection((self.listening_ip, port), timeout=0.2).close()
            except OSError:
                return False
        return True

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)
        self.process = None

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


def prepare_local_turn(
    workdir: Path,
    secrets: Sequence[str],
    *,
    production_peers: bool = False,
    realm: str | None = None,
    source: Path = PRODUCTION_CONFIG,
) -> LocalTurn:
    """Write a loopback coturn configuration under `workdir` (certificate included) and describe it.

    By default it is the development/test variant: relays on their own loopback address, which local peers
    may reach (LOOPBACK_RELAY_EXCEPTION). With `production_peers` the shipped peer policy is kept unchanged
    (no exception at all), with relays on 127.0.0.1: what proves the shipped file refuses loopback.
    """
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    workdir.chmod(0o700)
    listening_ip = "127.0.0.1"
    relay_ip = "127.0.0.1" if production_peers else loopback_relay_address()
    ports = free_ports(listening_ip, relay_ip)
    cert, pkey = self_signed_certificate(workdir)
    text = turn_config(
        source.read_text(),
        secrets=secrets,
        ports=ports,
        cert=cert,
        pkey=pkey,
        workdir=workdir,
        listening_ip=listening_ip,
        relay_ip=relay_ip,
        realm=realm,
        loopback_relay=not production_peers,
    )
    config = workdir / "turnserver.conf"
    config.touch(mode=0o600)
    config.chmod(0o600)
    config.write_text(text)
    effective_realm = realm or next((v for n, v in _options(text) if n == "realm"), "")
    return LocalTurn(workdir, config, listening_ip, relay_ip, ports, list(secrets), effective_realm, cert)


if __name__ == "__main__":  # python -m video.turn /etc/turnserver.conf
    import sys

    found = check_production_config(Path(sys.argv[1] if len(sys.argv) > 1 else PRODUCTION_CONFIG).read_text())
    print("\n".join(found) or "No problems found.")
    sys.exit(1 if found else 0)
