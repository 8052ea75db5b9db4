"""TURN against a real coturn: credentials from the endpoint, refused credentials, refused relay peers.

Two coturn instances run on loopback, both derived by devstack/coturn.py from deploy/coturn/turnserver.conf:
- `local_turn`, the development/test variant: relays on their own loopback address, which is the one
  loopback peer it lets through (what two local WebRTC peers need);
- `shipped_turn`, the shipped peer policy unchanged (only addresses, ports, certificate, secrets and file paths
  rewritten): it must refuse loopback like everything else in the deny list.

A minimal STUN/TURN client (RFC 5389 / RFC 5766) below talks to them. Every packet goes to coturn on
127.0.0.1; a CreatePermission for 10.0.0.1 is a request *to coturn* naming that peer, which coturn refuses
without sending anything anywhere. No test sends traffic to a non-loopback address.

The tests that need coturn skip when `turnserver` is missing, except in CI (CI=true), where they fail.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import os
import secrets
import socket
import ssl
import struct
import time
import uuid
import zlib
from dataclasses import dataclass

import pytest
from django.utils import timezone

from clinic import services as clinic
from devstack.coturn import prepare_local_turn, turnserver_binary
from tenancy import events as event_bus
from tenancy.context import tenant_context
from tenancy.services import ensure_member
from tests.conftest import PASSWORD
from tests.tools import require_tool
from video import turn
from video.turn import (
    PRODUCTION_CONFIG,
    check_production_config,
    opaque_user_id,
    sign_username,
    turn_credentials,
)

# -- a minimal STUN/TURN client ------------------------------------------------------------------------

MAGIC_COOKIE = 0x2112A442
ALLOCATE, REFRESH, CREATE_PERMISSION = 0x003, 0x004, 0x008
SUCCESS, FAILURE = 0x100, 0x110
USERNAME, MESSAGE_INTEGRITY, ERROR_CODE, LIFETIME = 0x0006, 0x0008, 0x0009, 0x000D
XOR_PEER_ADDRESS, REALM, NONCE, XOR_RELAYED_ADDRESS = 0x0012, 0x0014, 0x0015, 0x0016
REQUESTED_TRANSPORT, FINGERPRINT = 0x0019, 0x8028
UDP = bytes([17, 0, 0, 0])


def _attribute(kind: int, value: bytes) -> bytes:
    return struct.pack("!HH", kind, len(value)) + value + b"\0" * (-len(value) % 4)


def _xor_address(ip: str, port: int) -> bytes:
    """XOR-PEER-ADDRESS for an IPv4 peer (the relays here are IPv4)."""
    packed = ipaddress.IPv4Address(ip).packed
    raw = bytes(a ^ b for a, b in zip(packed, struct.pack("!I", MAGIC_COOKIE), strict=True))
    return struct.pack("!BBH", 0, 1, port ^ (MAGIC_COOKIE >> 16)) + raw


def _unxor_address(value: bytes, transaction: bytes) -> tuple[str, int]:
    family, port = value[1], struct.unpack("!H", value[2:4])[0] ^ (MAGIC_COOKIE >> 16)
    mask = struct.pack("!I", MAGIC_COOKIE) + (transaction if family == 2 else b"")
    raw = bytes(a ^ b for a, b in zip(value[4:], mask, strict=False))
    return str(ipaddress.ip_address(raw)), port


def encode(method: int, transaction: bytes, attributes: list[tuple[int, bytes]], key: bytes | None) -> bytes:
    """A request with MESSAGE-INTEGRITY (when keyed) and FINGERPRINT, lengths as RFC 5389 section 15 says."""
    body = b"".join(_attribute(kind, value) for kind, value in attributes)

    def header(length: int) -> bytes:
        return struct.pack("!HHI", method, length, MAGIC_COOKIE) + transaction

    if key is not None:
        mac = hmac.new(key, header(len(body) + 24) + body, hashlib.sha1).digest()
        body += _attribute(MESSAGE_INTEGRITY, mac)
    crc = zlib.crc32(header(len(body) + 8) + body) ^ 0x5354554E
    body += _attribute(FINGERPRINT, struct.pack("!I", crc & 0xFFFFFFFF))
    return header(len(body)) + body


@dataclass
class Answer:
    kind: int
    transaction: bytes
    attributes: dict[int, bytes]

    @property
    def ok(self) -> bool:
        return self.kind & 0x110 == SUCCESS

    @property
    def error(self) -> int | None:
        value = self.attributes.get(ERROR_CODE)
        return None if value is None else (value[2] & 7) * 100 + value[3]

    @property
    def reason(self) -> str:
        return self.attributes.get(ERROR_CODE, b"\0\0\0\0")[4:].decode(errors="replace")

    def __repr__(self) -> str:
        return f"Answer({'success' if self.ok else f'{self.error} {self.reason}'})"


def decode(data: bytes) -> Answer:
    kind, length, cookie = struct.unpack("!HHI", data[:8])
    assert cookie == MAGIC_COOKIE, "not a STUN message"
    attributes: dict[int, bytes] = {}
    offset = 20
    while offset < 20 + length:
        attr, size = struct.unpack("!HH", data[offset : offset + 4])
        attributes.setdefault(attr, data[offset + 4 : offset + 4 + size])
        offset += 4 + size + (-size % 4)
    return Answer(kind, data[8:20], attributes)


class TurnClient:
    """One TURN client connection to coturn on loopback: UDP, or TLS over TCP."""

    def __init__(self, host: str, port: int, *, tls: bool = False):
        assert ipaddress.ip_address(host).is_loopback, "these tests talk to loopback only"
        self.tls = tls
        if tls:
            context = ssl.create_default_context()
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE  # the local server's throwaway certificate
            self.sock = context.wrap_socket(socket.create_connection((host, port), timeout=5))
        else:
            self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            self.sock.settimeout(2)
            self.sock.connect((host, port))
        self.username = b""
        self.realm = b""
        self.nonce = b""
        self.key: bytes | None = None
        self.relayed: tuple[str, int] | None = None

    def close(self) -> None:
        if self.relayed is not None:
            try:
                self._authenticated(REFRESH, [(LIFETIME, struct.pack("!I", 0))])
            except OSError:
                pass
        self.sock.close()

    def __enter__(self) -> TurnClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _receive(self) -> bytes:
        if not self.tls:
            return self.sock.recv(65536)
        data = b""
        while len(data) < 20 or len(data) < 20 + struct.unpack("!H", data[2:4])[0]:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("coturn closed the connection")
            data += chunk
        return data

    def request(self, method: int, attributes: list[tuple[int, bytes]], key: bytes | None = None) -> Answer:
        transaction = os.urandom(12)
        message = encode(method, transaction, attributes, key)
        for _attempt in range(3):  # UDP retransmission (RFC 5389 7.2.1), loopback rarely needs it
            self.sock.sendall(message)
            try:
                while True:
                    answer = decode(self._receive())
                    if answer.transaction == transaction:
                        return answer
            except TimeoutError:
                if self.tls:
                    raise
        raise TimeoutError("no answer from coturn")

    def _authenticated(self, method: int, attributes: list[tuple[int, bytes]]) -> Answer:
        for _attempt in range(2):
            auth = [(USERNAME, self.username), (REALM, self.realm), (NONCE, self.nonce)]
            answer = self.request(method, attributes + auth, self.key)
            if answer.error != 438:  # Stale Nonce: take the new one and retry once
                return answer
            self.nonce = answer.attributes[NONCE]
        return answer

    def allocate(self, username: str, password: str) -> Answer:
        """Allocate (RFC 5766 6.1): unauthenticated first, 401 with realm and nonce, then with credentials."""
        challenge = self.request(ALLOCATE, [(REQUESTED_TRANSPORT, UDP)])
        assert challenge.error == 401, challenge
        self.realm, self.nonce = challenge.attributes[REALM], challenge.attributes[NONCE]
        self.username = username.encode()
        self.key = hashlib.md5(self.username + b":" + self.realm + b":" + password.encode()).digest()
        answer = self._authenticated(ALLOCATE, [(REQUESTED_TRANSPORT, UDP)])
        if answer.ok:
            self.relayed = _unxor_address(answer.attributes[XOR_RELAYED_ADDRESS], answer.transaction)
        return answer

    def create_permission(self, peer: str) -> Answer:
        """Ask coturn to accept traffic with `peer`. Nothing is sent to the peer: no data follows."""
        return self._authenticated(CREATE_PERMISSION, [(XOR_PEER_ADDRESS, _xor_address(peer, 0))])


def rest_password(username: str, secret: str) -> str:
    return base64.b64encode(hmac.new(secret.encode(), username.encode(), hashlib.sha1).digest()).decode()


# -- coturn instances ----------------------------------------------------------------------------------

NEW_SECRET = "new-" + secrets.token_urlsafe(24)
OLD_SECRET = "old-" + secrets.token_urlsafe(24)


def _require_turnserver() -> str:
    binary = turnserver_binary()
    require_tool(binary, "turnserver is not installed (apt-get install coturn)")
    return binary


@pytest.fixture(scope="module")
def local_turn(tmp_path_factory):
    binary = _require_turnserver()
    server = prepare_local_turn(tmp_path_factory.mktemp("coturn-local"), [NEW_SECRET, OLD_SECRET])
    server.start(binary)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def shipped_turn(tmp_path_factory):
    binary = _require_turnserver()
    server = prepare_local_turn(
        tmp_path_factory.mktemp("coturn-shipped"), [NEW_SECRET, OLD_SECRET], production_peers=True
    )
    server.start(binary)
    yield server
    server.stop()


@pytest.fixture
def turn_settings(settings, local_turn):
    settings.TURN_SHARED_SECRETS = [NEW_SECRET, OLD_SECRET]
    settings.TURN_URLS = local_turn.urls()
    settings.TURN_CREDENTIAL_TTL_SECONDS = 600
    return settings


@pytest.fixture
def static_turn_settings(settings):
    """For the endpoint's rules, which need no server."""
    settings.TURN_SHARED_SECRETS = f"{NEW_SECRET},{OLD_SECRET}"  # as the environment gives it
    settings.TURN_URLS = ["turn:127.0.0.1:3478?transport=udp", "turns:127.0.0.1:5349?transport=tcp"]
    settings.TURN_CREDENTIAL_TTL_SECONDS = 600
    return settings


def allocate(server, username: str, password: str, *, tls: bool = False) -> tuple[TurnClient, Answer]:
    port = server.ports.tls if tls else server.ports.listening
    client = TurnClient(server.listening_ip, port, tls=tls)
    return client, client.allocate(username, password)


# -- a visit -------------------------------------------------------------------------------------------


@dataclass
class Visit:
    org: object
    host: str
    encounter: object
    patient: object
    doctor: object  # the encounter's practitioner (Membership)
    colleague: object  # a practitioner on the patient's care team, not in this encounter
    staff: object
    patient_email: str


def _schedule(practitioner, staff, patient):
    return clinic.schedule_encounter(
        patient=patient, practitioner=practitioner, actor=staff, scheduled_at=timezone.now(), reason="video"
    )


@pytest.fixture
def visit(alpha) -> Visit:
    """alpha's practitioner and a seeded patient with a portal sign-in, a planned encounter between them."""
    org = alpha.org
    with tenant_context(org_id=org.id, role="platform", purpose="treatment"):
        _, colleague, _ = ensure_member(
            org=org, email="turn-colleague@alpha.test", role="practitioner", password=PASSWORD
        )
        patient = alpha.patients[0]
        clinic.assign_care_team(patient=patient, practitioner=colleague, actor=alpha.membership("org_admin"))
        encounter = _schedule(alpha.membership("practitioner"), alpha.membership("staff"), patient)
    return Visit(
        org,
        alpha.host,
        encounter,
        patient,
        alpha.membership("practitioner"),
        colleague,
        alpha.membership("staff"),
        SEEDED_PATIENT_EMAIL,
    )


SEEDED_PATIENT_EMAIL = "quorvinda.z@alpha-patients.test"


def transition(visit: Visit, action: str, actor) -> None:
    with tenant_context(org_id=visit.org.id, role="platform", purpose="treatment"):
        visit.encounter = clinic.transition_encounter(encounter=visit.encounter, action=action, actor=actor)


def client(api, host: str, email: str):
    c = api(host)
    c.sign_in_token(email)
    return c


def credentials_url(encounter) -> str:
    return f"/api/v1/video/turn-credentials?encounter={encounter.pk}"


# -- the shipped file ----------------------------------------------------------------------------------

REWRITTEN = {
    "listening-ip",
    "relay-ip",
    "external-ip",
    "listening-port",
    "tls-listening-port",
    "alt-listening-port",
    "alt-tls-listening-port",
    "min-port",
    "max-port",
    "cert",
    "pkey",
    "static-auth-secret",
    "pidfile",
    "userdb",
    "syslog",
    "log-file",
    "simple-log",
}


def options(text: str) -> list[tuple[str, str]]:
    return [(n, v) for n, v in turn._options(text) if n not in REWRITTEN]


PLACEHOLDERS = [
    "static-auth-secret #1 is still a placeholder",
    "static-auth-secret #2 is still a placeholder",
    "listening-ip is still the placeholder address 203.0.113.10",
    "relay-ip is still the placeholder address 203.0.113.10",
    "external-ip is still the placeholder address 203.0.113.10",
]


def deployed(text: str) -> str:
    """The shipped file as an operator fills it in (README: placeholders)."""
    lines = []
    for line in text.splitlines():
        if line.startswith(("listening-ip=", "relay-ip=", "external-ip=")):
            line = line.replace("203.0.113.10", "198.51.100.7")
        elif line == "static-auth-secret=REPLACE-WITH-CURRENT-SECRET":
            line = f"static-auth-secret={secrets.token_urlsafe(48)}"
        elif line.startswith("static-auth-secret=REPLACE-WITH-NEW-SECRET"):
            continue
        lines.append(line)
    return "\n".join(lines) + "\n"


def test_the_shipped_config_denies_every_private_loopback_link_local_cgnat_and_metadata_range():
    text = PRODUCTION_CONFIG.read_text()
    assert check_production_config(text) == PLACEHOLDERS  # nothing else is wrong, and these are reported
    assert check_production_config(deployed(text)) == []
    names = [name for name, _ in turn._options(text)]
    assert "allow-loopback-peers" not in names and "allowed-peer-ip" not in names
    for flag in ("no-cli", "no-multicast-peers", "no-tcp-relay", "stale-nonce", "fingerprint", "no-tlsv1_1"):
        assert flag in names
    values = dict(turn._options(text))
    assert (values["tls-listening-port"], values["alt-tls-listening-port"]) == ("5349", "443")
    assert int(values["max-port"]) - int(values["min-port"]) < 1000  # a narrow relay range
    assert len([n for n in names if n == "static-auth-secret"]) == 2  # the rotation overlap


def test_weak_configurations_are_reported():
    text = deployed(PRODUCTION_CONFIG.read_text())
    # coturn 4.6 applies a denied range starting at `::` to every IPv4 peer: it would relay nothing.
    assert check_production_config(text + "denied-peer-ip=::-::ffff:ffff\n") == [
        "denied-peer-ip=::-::ffff:ffff starts at ::, which coturn applies to all IPv4 peers"
    ]
    opened = text.replace("denied-peer-ip=10.0.0.0-10.255.255.255\n", "") + "allow-loopback-peers\n"
    assert check_production_config(opened) == [
        "missing denied-peer-ip=10.0.0.0-10.255.255.255",
        "allow-loopback-peers must not be set",
    ]
    assert check_production_config(text + "static-auth-secret=short\n") == [
        "static-auth-secret #2 is shorter than 32 characters"
    ]


def test_derived_configs_change_only_addresses_ports_paths_and_secrets(local_turn, shipped_turn):
    shipped = options(PRODUCTION_CONFIG.read_text())
    assert options(shipped_turn.config.read_text()) == shipped
    local = options(local_turn.config.read_text())
    assert local == [*shipped, ("allow-loopback-peers", ""), ("allowed-peer-ip", local_turn.relay_ip)]
    for server in (local_turn, shipped_turn):
        values = turn._options(server.config.read_text())
        assert ("listening-ip", "127.0.0.1") in values
        assert [v for n, v in values if n == "static-auth-secret"] == [NEW_SECRET, OLD_SECRET]
        assert not [n for n, _ in values if n == "external-ip"]


def test_coturn_applies_every_denied_range_of_the_shipped_file(shipped_turn):
    log = shipped_turn.log.read_text()
    for name, value in turn._options(PRODUCTION_CONFIG.read_text()):
        if name == "denied-peer-ip":
            assert f"Black listing: {value}" in log, value
    assert "White listing" not in log


# -- credentials from the endpoint, accepted by coturn ------------------------------------------------


def test_credentials_from_the_endpoint_allocate_a_relay(api, visit, turn_settings, local_turn):
    doctor = client(api, visit.host, "practitioner@alpha.test")
    response = doctor.get(credentials_url(visit.encounter))
    assert response.status_code == 200, response.content
    assert response["Cache-Control"] == "no-store"
    creds = response.json()
    assert creds["uris"] == local_turn.urls() and creds["ttl"] == 600
    expiry, opaque = creds["username"].split(":")
    assert 590 <= int(expiry) - time.time() <= 600
    assert opaque == opaque_user_id(visit.doctor.user_id) and str(visit.doctor.user_id) not in opaque
    assert creds["credential"] == sign_username(creds["username"], NEW_SECRET)  # the first secret signs

    for tls in (False, True):  # turn: over UDP and turns: over TLS, the production TLS settings
        relay, answer = allocate(local_turn, creds["username"], creds["credential"], tls=tls)
        with relay:
            assert answer.ok, answer
            assert relay.relayed is not None and relay.relayed[0] == local_turn.relay_ip


def test_the_admitted_patient_s_credentials_allocate_a_relay(api, visit, turn_settings, local_turn):
    transition(visit, "arrive", visit.staff)
    transition(visit, "admit", visit.doctor)
    patient = client(api, visit.host, visit.patient_email)
    response = patient.get(credentials_url(visit.encounter))
    assert response.status_code == 200, response.content
    creds = response.json()
    relay, answer = allocate(local_turn, creds["username"], creds["credential"])
    with relay:
        assert answer.ok, answer


def test_credentials_signed_with_the_previous_secret_are_still_accepted(local_turn, settings):
    """Rotation: coturn lists both; credentials issued just before the app switched to the new secret work."""
    settings.TURN_URLS = local_turn.urls()
    settings.TURN_SHARED_SECRETS = [OLD_SECRET]  # the app before the switch
    before = turn_credentials(uuid.uuid4())
    settings.TURN_SHARED_SECRETS = [NEW_SECRET, OLD_SECRET]  # and after
    after = turn_credentials(uuid.uuid4())
    assert after["credential"] == sign_username(after["username"], NEW_SECRET)
    for creds in (before, after):
        relay, answer = allocate(local_turn, creds["username"], creds["credential"])
        with relay:
            assert answer.ok, answer


def test_expired_and_forged_credentials_are_refused(local_turn, turn_settings):
    expired = turn_credentials(uuid.uuid4(), ttl=600, now=time.time() - 3600)
    assert int(expired["username"].split(":")[0]) < time.time()
    valid = turn_credentials(uuid.uuid4())
    expiry, opaque = valid["username"].split(":")
    stretched = f"{int(expiry) + 86400}:{opaque}"  # a later expiry with the original signature
    refused = {
        "expired": (expired["username"], expired["credential"]),
        "unknown secret": (valid["username"], rest_password(valid["username"], "not-" + NEW_SECRET)),
        "edited username": (stretched, valid["credential"]),
        "no expiry": (opaque, rest_password(opaque, NEW_SECRET)),
    }
    for case, (username, password) in refused.items():
        relay, answer = allocate(local_turn, username, password)
        with relay:
            assert not answer.ok and answer.error in (401, 438), (case, answer)
    relay, answer = allocate(local_turn, valid["username"], valid["credential"])
    with relay:
        assert answer.ok, answer


# -- peers the relay must refuse -------------------------------------------------------------------------

PRIVATE_PEERS = ["10.0.0.1", "169.254.169.254", "192.168.1.1", "172.16.0.1", "100.64.0.1", "100.100.100.200"]


def test_the_test_config_refuses_private_peers_and_admits_only_its_own_relay(local_turn, turn_settings):
    creds = turn_credentials(uuid.uuid4())
    relay, answer = allocate(local_turn, creds["username"], creds["credential"])
    with relay:
        assert answer.ok, answer
        for peer in PRIVATE_PEERS:
            refused = relay.create_permission(peer)
            assert (refused.error, refused.reason) == (403, "Forbidden IP"), peer
        if local_turn.relay_ip != "127.0.0.1":
            # The relay has its own address, so even this configuration keeps the rest of loopback closed:
            # 127.0.0.1 is where the application, PostgreSQL and OpenBao listen.
            assert relay.create_permission("127.0.0.1").error == 403
            assert relay.create_permission("127.0.0.3").error == 403
        # What the exception is for: one local peer reaching another's relay on the same server.
        assert relay.create_permission(local_turn.relay_ip).ok
        # And the deny list is not a catch-all: a public peer is permitted (nothing is sent to it).
        assert relay.create_permission("8.8.8.8").ok


def test_the_shipped_config_refuses_loopback_and_every_denied_range(shipped_turn, settings):
    settings.TURN_SHARED_SECRETS = [NEW_SECRET]
    settings.TURN_URLS = shipped_turn.urls()
    creds = turn_credentials(uuid.uuid4())
    relay, answer = allocate(shipped_turn, creds["username"], creds["credential"])
    with relay:
        assert answer.ok, answer
        assert relay.relayed is not None and relay.relayed[0] == "127.0.0.1"
        peers = [
            "127.0.0.1",  # even the relay's own address: no loopback exception in the shipped file
            "127.0.0.2",
            *PRIVATE_PEERS,
            "0.0.0.0",
            "172.31.255.254",
            "192.0.0.9",
            "192.168.255.255",
            "198.18.0.1",
            "224.0.0.1",
            "239.255.255.250",
            "255.255.255.255",
        ]
        for peer in peers:
            refused = relay.create_permission(peer)
            assert refused.error == 403 and refused.reason == "Forbidden IP", (peer, refused)
        for peer in ("8.8.8.8", "1.1.1.1", "100.128.0.1", "172.32.0.1", "169.255.0.1"):
            assert relay.create_permission(peer).ok, peer  # just outside the ranges


# -- who gets credentials ------------------------------------------------------------------------------


def test_only_the_encounter_s_practitioner_gets_credentials(api, alpha, beta, visit, static_turn_settings):
    doctor = client(api, visit.host, "practitioner@alpha.test")
    assert doctor.get(credentials_url(visit.encounter)).status_code == 200
    # A colleague on the patient's care team sees the encounter but is not in the call.
    colleague = client(api, visit.host, "turn-colleague@alpha.test")
    assert colleague.get(f"/api/v1/encounters/{visit.encounter.pk}").status_code == 200
    assert colleague.get(credentials_url(visit.encounter)).json()["error"]["code"] == "not_found"
    # A practitioner with no relationship to the patient does not see it at all.
    with tenant_context(org_id=alpha.org.id, role="platform"):
        ensure_member(org=alpha.org, email="turn-stranger@alpha.test", role="practitioner", password=PASSWORD)
    stranger = client(api, visit.host, "turn-stranger@alpha.test")
    assert stranger.get(credentials_url(visit.encounter)).status_code == 404
    # Another organization's encounter, asked for on this organization's host, and on its own host.
    with tenant_context(org_id=beta.org.id, role="platform", purpose="treatment"):
        theirs = _schedule(beta.membership("practitioner"), beta.membership("staff"), beta.patients[0])
        clinic.transition_encounter(encounter=theirs, action="start", actor=beta.membership("practitioner"))
    assert doctor.get(credentials_url(theirs)).status_code == 404
    assert api(beta.host).get(credentials_url(theirs)).status_code in (401, 403)
    # An unknown encounter, and a malformed or missing parameter.
    assert doctor.get(f"/api/v1/video/turn-credentials?encounter={uuid.uuid4()}").status_code == 404
    assert doctor.get("/api/v1/video/turn-credentials?encounter=nope").status_code == 400
    assert doctor.get("/api/v1/video/turn-credentials").status_code == 400


def test_a_patient_gets_credentials_only_once_admitted(api, alpha, visit, static_turn_settings):
    patient = client(api, visit.host, visit.patient_email)
    waiting = patient.get(credentials_url(visit.encounter))
    assert (waiting.status_code, waiting.json()["error"]["code"]) == (403, "not_admitted")
    transition(visit, "arrive", visit.staff)
    waiting = patient.get(credentials_url(visit.encounter))
    assert (waiting.status_code, waiting.json()["error"]["code"]) == (403, "not_admitted")
    transition(visit, "admit", visit.doctor)
    admitted = patient.get(credentials_url(visit.encounter))
    assert admitted.status_code == 200, admitted.content
    assert admitted.json()["username"].endswith(":" + opaque_user_id(visit.patient.user_id))
    transition(visit, "start", visit.doctor)
    assert patient.get(credentials_url(visit.encounter)).status_code == 200
    # Another patient of the clinic: not theirs, so not found.
    other = client(api, visit.host, "brannoch.i@alpha-patients.test")
    assert other.get(credentials_url(visit.encounter)).status_code == 404
    # The visit ends: no more relays for anyone.
    transition(visit, "end", visit.doctor)
    ended = patient.get(credentials_url(visit.encounter))
    assert (ended.status_code, ended.json()["error"]["code"]) == (409, "encounter_closed")
    doctor = client(api, visit.host, "practitioner@alpha.test")
    assert doctor.get(credentials_url(visit.encounter)).status_code == 409


def test_an_encounter_started_without_the_waiting_room_admits_its_patient(api, visit, static_turn_settings):
    transition(visit, "start", visit.doctor)
    patient = client(api, visit.host, visit.patient_email)
    assert patient.get(credentials_url(visit.encounter)).status_code == 200


def test_staff_administrators_and_auditors_get_no_credentials(api, alpha, visit, static_turn_settings):
    transition(visit, "start", visit.doctor)
    for role in ("staff", "org_admin", "auditor"):
        response = client(api, visit.host, alpha.email(role)).get(credentials_url(visit.encounter))
        assert response.status_code in (403, 404), (role, response.content)
    assert api(visit.host).get(credentials_url(visit.encounter)).status_code in (401, 403)


def test_credentials_are_audited_and_unconfigured_turn_answers_503(api, visit, static_turn_settings):
    events: list[event_bus.PhiAccess] = []
    event_bus.subscribe(event_bus.PhiAccess, events.append)
    try:
        doctor = client(api, visit.host, "practitioner@alpha.test")
        assert doctor.get(credentials_url(visit.encounter)).status_code == 200
    finally:
        event_bus.unsubscribe(event_bus.PhiAccess, events.append)
    assert [(e.action, e.resource, e.resource_id, e.patient_id, e.actor.user, e.purpose) for e in events] == [
        (
            "turn_credentials",
            "Encounter",
            str(visit.encounter.pk),
            str(visit.patient.pk),
            str(visit.doctor.user_id),
            "treatment",
        )
    ]
    static_turn_settings.TURN_SHARED_SECRETS = []
    unavailable = doctor.get(credentials_url(visit.encounter))
    assert (unavailable.status_code, unavailable.json()["error"]["code"]) == (503, "turn_unavailable")


def test_the_practitioner_needs_the_treatment_purpose(api, visit, static_turn_settings):
    doctor = client(api, visit.host, "practitioner@alpha.test")
    response = doctor.get(credentials_url(visit.encounter), **{"X-Purpose-Of-Use": "operations"})
    assert (response.status_code, response.json()["error"]["code"]) == (403, "purpose_not_permitted")


def test_the_opaque_id_is_stable_per_user_and_reveals_nothing(settings):
    settings.TURN_SHARED_SECRETS = [NEW_SECRET]
    settings.TURN_URLS = ["turn:127.0.0.1:3478"]
    user = uuid.uuid4()
    first, second = turn_credentials(user), turn_credentials(user)
    assert first["username"].split(":")[1] == second["username"].split(":")[1] == opaque_user_id(user)
    assert opaque_user_id(uuid.uuid4()) != opaque_user_id(user)
    assert str(user) not in first["username"] and user.hex not in first["username"]
