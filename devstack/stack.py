"""What the launchers share: the checkout's paths, the development secrets, the stack's environment.

The lower module of the development tooling: `devstack.launcher` (make run/test/bench/drills/manage) and
`devstack.cluster` (make cluster, the drills) both build on it, and it imports neither of them.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from urllib.parse import quote

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / ".data"
STACK_VARIABLES = (
    "DJANGO_",
    "DATABASE_",
    "AUDIT_",
    "VAULT_",
    "TENANCY_",
    "USER_LOOKUP_KEY",
    "REDIS_URL",
    "TURN_",
)
PYTHON = sys.executable


def log(message: str) -> None:
    print(f"[devstack] {message}", flush=True)


def dev_secrets() -> dict:
    """Random secrets generated once per checkout and kept under .data/ (never committed)."""
    DATA.mkdir(exist_ok=True)
    path = DATA / "dev-secrets.json"
    values = json.loads(path.read_text()) if path.exists() else {}
    wanted = {
        "secret_key": 48,
        "owner_password": 24,
        "app_password": 24,
        "audit_owner_password": 24,
        "audit_writer_password": 24,
        "audit_reader_password": 24,
        "turn_secret": 32,
    }
    if set(wanted) <= set(values):
        return values
    for name, size in wanted.items():
        values.setdefault(name, secrets.token_urlsafe(size))
    path.write_text(json.dumps(values, indent=2))
    path.chmod(0o600)
    return values


def role_url(admin_url: str, user: str, password: str, dbname: str) -> str:
    import psycopg

    info = psycopg.conninfo.conninfo_to_dict(admin_url)
    host = str(info.get("host") or "localhost")
    port = info.get("port")
    netloc = f"{quote(user)}:{quote(password)}@{quote(host, safe='')}" + (f":{port}" if port else "")
    return f"postgresql://{netloc}/{dbname}"


def stack_environment(admin_url: str, dbname: str, debug: bool = False, demo: bool = False) -> dict:
    values = dev_secrets()
    prefix = dbname.replace("-", "_")
    env = dict(os.environ)
    env.update(
        {
            "DJANGO_SETTINGS_MODULE": "config.settings",
            "DJANGO_DEBUG": "true" if debug else "false",
            "DJANGO_SECRET_KEY": env.get("DJANGO_SECRET_KEY") or values["secret_key"],
            "DATABASE_ADMIN_URL": admin_url,
            "DATABASE_URL": role_url(admin_url, f"{prefix}_app", values["app_password"], dbname),
            "DATABASE_OWNER_URL": role_url(admin_url, f"{prefix}_owner", values["owner_password"], dbname),
            # The audit log's own database in the same cluster, with its own three roles.
            "AUDIT_OWNER_DATABASE_URL": role_url(
                admin_url, f"{prefix}_audit_owner", values["audit_owner_password"], f"{dbname}_audit"
            ),
            "AUDIT_DATABASE_URL": role_url(
                admin_url, f"{prefix}_audit_writer", values["audit_writer_password"], f"{dbname}_audit"
            ),
            "AUDIT_READER_DATABASE_URL": role_url(
                admin_url, f"{prefix}_audit_reader", values["audit_reader_password"], f"{dbname}_audit"
            ),
            "PYTHONUNBUFFERED": "1",
        }
    )
    if debug:
        env.setdefault("DJANGO_SECURE_COOKIES", "false")
    elif demo:
        # The demo runs with production settings but over plain http on loopback names only, which the
        # settings allow for insecure cookies and nothing else (README: how production differs).
        env.setdefault("DJANGO_ALLOWED_HOSTS", ".localhost,localhost,127.0.0.1")
        env.setdefault("DJANGO_SECURE_COOKIES", "false")
    else:
        env.setdefault("DJANGO_ALLOWED_HOSTS", ".localhost,localhost,testserver,127.0.0.1")
        # No shipper runs beside the test suite; tests of the lag check set their own limit.
        env.setdefault("AUDIT_MAX_LAG_SECONDS", "86400")
    return env


def manage(env: dict, *args: str) -> None:
    subprocess.run([PYTHON, str(ROOT / "manage.py"), *args], env=env, cwd=ROOT, check=True)


def ensure_debian_package(
    package: str, present: Callable[[], bool], *, needed_for: str, without: str, elsewhere: str
) -> bool:
    """Whether `package` is there, installing it with apt-get where this process can (root, apt-get present)
    and saying so; elsewhere, or when apt-get fails, say what is missing, what goes without it, and how to
    install it. Never fails the launcher: what needs the package degrades and says so."""
    if present():
        return True
    if os.geteuid() == 0 and shutil.which("apt-get"):
        log(f"Installing {package} with apt-get ({needed_for})...")
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        install = ["apt-get", "install", "-y", "-qq", package]
        done = subprocess.run(install, env=env, stdout=subprocess.DEVNULL, check=False).returncode == 0
        if not done:  # a fresh image often has no package lists yet
            subprocess.run(["apt-get", "update", "-qq"], env=env, stdout=subprocess.DEVNULL, check=False)
            subprocess.run(install, env=env, stdout=subprocess.DEVNULL, check=False)
        if present():
            log(f"Installed {package}.")
            return True
        log(f"apt-get could not install {package} (see its messages above).")
    log(f"{package} is not installed, so {without}. Install it with: {elsewhere}")
    return False
