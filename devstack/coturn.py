"""Local coturn for `make run`, `make cluster` and the tests: configurations derived from the production one.

`turn_config()` rewrites deploy/coturn/turnserver.conf for development (`make run`) and the tests: loopback
addresses, free ports, a self-signed certificate, local secrets and file paths. Every other line (denied
peer ranges, quotas, TLS versions, no-tcp-relay...) is the shipped one. One difference is added on purpose
for two peers relayed through the same local server, see `LOOPBACK_RELAY_EXCEPTION`. `prepare_local_turn()`
writes such a configuration with its certificate, and `LocalTurn` starts and stops the coturn running it.

The credentials coturn checks, and the checks of the production file, are the runtime's: video/turn.py.
"""

from __future__ import annotations

import datetime
import ipaddress
import random
import shutil
import socket
import subprocess
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from video.turn import PRODUCTION_CONFIG, TurnUnavailable, _options

LOOPBACK_RELAY_EXCEPTION = """\
# -- Development and tests only (added by devstack/coturn.py; never in the production file) -----------------
# Two local peers relay through this one server, so each must be allowed to reach the other's relay address,
# which is on loopback. coturn refuses every loopback peer *before* it reads allowed-peer-ip, and only
# allow-loopback-peers lifts that; the denied-peer-ip=127.0.0.0-127.255.255.255 line above then refuses all of
# loopback again except the one address allowed-peer-ip names: {relay_ip}, the relay address, where only this
# server's relay sockets listen. Everything else denied above stays denied, and so does 127.0.0.1 when the
# relay has its own address. This server listens on loopback only, so no one off this machine can use it.
allow-loopback-peers
allowed-peer-ip={relay_ip}
"""


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
        out.append("# -- Local values (devstack/coturn.py) --")
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
