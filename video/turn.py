"""TURN: short-lived coturn credentials, and the checks a production coturn configuration must pass.

Credentials follow coturn's TURN REST API scheme (`use-auth-secret`): the username is
`<unix expiry>:<opaque user id>` and the password is base64(HMAC-SHA1(secret, username)). coturn recomputes the
HMAC with each of its `static-auth-secret` lines and refuses an expired username when a relay is allocated.
The first of settings.TURN_SHARED_SECRETS signs; the rest are only there to document what coturn still
accepts during a rotation (deploy/coturn/README.md). The opaque id is a keyed hash of the user id, so
coturn's logs and quotas see a stable per-user value without learning who it is.

`check_production_config()` reports what is wrong with a coturn configuration for this platform (`python -m
video.turn /etc/turnserver.conf`). The loopback configurations `make run` and the tests start are derived from
the same shipped file by devstack/coturn.py, which is development tooling and not part of this module.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import hmac
import ipaddress
import time
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


if __name__ == "__main__":  # python -m video.turn /etc/turnserver.conf
    import sys

    found = check_production_config(Path(sys.argv[1] if len(sys.argv) > 1 else PRODUCTION_CONFIG).read_text())
    print("\n".join(found) or "No problems found.")
    sys.exit(1 if found else 0)
