"""The clinic-day load test's run: locust (tests/load/locustfile.py) against a one-worker and a two-worker cluster.

`make drills` runs it at length (tests/drills/test_load.py) and `make bench` briefly (tests/bench/test_load.py);
both call `clinic_day(...)` and fail on the same problems (`problems(...)`): any locust failure or exception and
any missing or duplicated audit event.

Each run starts a fresh cluster (devstack/cluster.py), runs the same users at the same spawn rate for the minutes
asked (the drill: LOAD_MINUTES_ONE, default 4, on one worker and LOAD_MINUTES, default 10, on two), and meanwhile
samples `/readyz` every few seconds for the audit backlog's age and every process's CPU time (psutil). Then it
waits for the outbox to drain, exports each clinic's audit log (`manage.py audit_export`), verifies the exports
offline against the signing key read from Vault (`python -m audit.verify --key ... --check-derived`), and checks
that every audited request locust recorded (by its X-Request-ID) and every video step (by action, encounter and
user) is in the export, and that no event id appears twice.

The report (`clinic_day`'s first result; `render` makes it markdown) has the throughput, p50/p99, the two/one
ratio, CPU by process group over the whole run and per HTTP request, the same over the steady-state window
alone (`steady_cpu`: CPU sampled every few seconds, so the sign-ins' Argon2 hashes of the
warm-up are left out), the audit backlog's maximum age, and audited requests counted and found. The run's files
(locust CSVs, what locust recorded) stay under `.bench/load/<run>/`; the exports are deleted once checked.

LOAD_PROFILE=<seconds> also records each worker with py-spy for that long, from a minute into the run (after the
sign-in stampede), and keeps a flame graph (`flame-<worker>.svg`) and its collapsed stacks (`flame-<worker>.txt`,
for grep and sort) under `.bench/load/<run>/`.

LOAD_USERS (default 60) and LOAD_SPAWN_RATE (default 2 per second: a faster stampede of sign-ins, each an Argon2
hash inside a pooled transaction, outlasts PgBouncer's 10 s query_wait_timeout on one worker) set the
closed-loop users; LOAD_THINK (default 0.5) scales their wait times (tests/load/locustfile.py).
"""

from __future__ import annotations

import csv
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import psutil

from clinic.management.commands.seed_demo import CLINICS, DEMO_PASSWORD, patient_email
from devstack.cluster import Cluster
from tenancy.models import Role
from tests.drills.conftest import pgbouncer_logins, start_cluster

ROOT = Path(__file__).resolve().parents[2]
PYTHON = sys.executable
LOCUSTFILE = ROOT / "tests" / "load" / "locustfile.py"
BENCH = ROOT / ".bench"

USERS = int(os.environ.get("LOAD_USERS", "60"))
SPAWN_RATE = float(os.environ.get("LOAD_SPAWN_RATE", "2"))
# Half the locustfile's think times: closed-loop users that keep a worker busy (tests/load/locustfile.py).
THINK = os.environ.get("LOAD_THINK", "0.5")
PROFILE_SECONDS = int(os.environ.get("LOAD_PROFILE", "0"))
PROFILE_AFTER = 60.0
SAMPLE_SECONDS = 5.0
DRAIN_TIMEOUT = 300.0
VKEY = re.compile(r"^[^+\s]+\+[0-9a-f]{8}\+[A-Za-z0-9+/]+=*$")


# -- the accounts locust signs in as ----------------------------------------------------------------------


def write_accounts(path: Path) -> dict:
    """The demo clinics' practitioners and patients (seed_demo), for the locustfile."""
    clinics = []
    for clinic in CLINICS:
        clinics.append(
            {
                "slug": clinic["slug"],
                "host": clinic["host"],
                "practitioners": [email for email, role, _ in clinic["people"] if role == Role.PRACTITIONER],
                "patients": [patient_email(clinic, name) for name in clinic["patients"]],
            }
        )
    accounts = {"password": DEMO_PASSWORD, "clinics": clinics}
    path.write_text(json.dumps(accounts, indent=2))
    return accounts


# -- sampling while locust runs ---------------------------------------------------------------------------


def readyz(cluster: Cluster, timeout: float = 10.0) -> tuple[int, dict]:
    request = urllib.request.Request(f"{cluster.url}/readyz", headers={"Host": "127.0.0.1"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


def outbox_age(body: dict) -> float | None:
    return (body.get("gauges") or {}).get("audit_outbox_oldest_age_seconds")


def process_groups(cluster: Cluster, locust_pid: int) -> dict[str, list[int]]:
    """The pids of each part of the cluster, plus locust and this test process."""
    roots: dict[str, list[int]] = {"locust": [locust_pid], "pytest": [os.getpid()], "workers": []}
    for name, service in cluster.services.items():
        group = "workers" if name.startswith("worker") else name
        if service.pid:
            roots.setdefault(group, []).append(service.pid)
    postmaster = cluster.workdir / "pg" / "postmaster.pid"
    if postmaster.exists():
        roots["postgres"] = [int(postmaster.read_text().split()[0])]
    if cluster.vault is not None and cluster.vault.process is not None:
        roots["openbao"] = [cluster.vault.process.pid]
    return roots


class Sampler:
    """Every few seconds: /readyz (the audit backlog's age) and the CPU time of every process of interest."""

    def __init__(self, cluster: Cluster, locust_pid: int) -> None:
        self.cluster, self.locust_pid = cluster, locust_pid
        self.stopping = threading.Event()
        self.backlog: list[tuple[float, float | None, int]] = []  # (t, age or None, status)
        self.readyz_errors: list[str] = []
        # pid -> [group, cpu seconds at first sight, latest cpu seconds]
        self.cpu: dict[int, list] = {}
        # (seconds since the start, CPU seconds used so far by each group), one per CPU sample
        self.series: list[tuple[float, dict[str, float]]] = []
        self.started = time.time()
        self.machine_start = psutil.cpu_times()
        self.machine_end = self.machine_start
        self.threads = [
            threading.Thread(target=self._loop, args=(self._sample_readyz,), daemon=True),
            threading.Thread(target=self._loop, args=(self._sample_cpu,), daemon=True),
        ]

    def start(self) -> Sampler:
        self._sample_cpu()
        for thread in self.threads:
            thread.start()
        return self

    def stop(self) -> None:
        self.stopping.set()
        for thread in self.threads:
            thread.join(timeout=30)
        self._sample_cpu()
        self.machine_end = psutil.cpu_times()
        self.ended = time.time()

    def _loop(self, sample) -> None:
        while not self.stopping.wait(SAMPLE_SECONDS):
            sample()

    def _sample_readyz(self) -> None:
        at = time.time() - self.started
        try:
            status, body = readyz(self.cluster)
        except Exception as exc:  # a sample that fails is reported, and the run goes on
            self.readyz_errors.append(f"{at:.0f}s: {exc!r}")
            return
        self.backlog.append((at, outbox_age(body), status))

    def _sample_cpu(self) -> None:
        for group, pids in process_groups(self.cluster, self.locust_pid).items():
            for root in pids:
                try:
                    process = psutil.Process(root)
                    # Every process of the cluster is a child of this one: the pytest group is itself only.
                    family = [process] if group == "pytest" else [process, *process.children(recursive=True)]
                except psutil.Error:
                    continue
                for member in family:
                    try:
                        times = member.cpu_times()
                        used = times.user + times.system
                        born = member.create_time()
                    except psutil.Error:
                        continue
                    entry = self.cpu.get(member.pid)
                    if entry is None:
                        # A process born during the run counts from zero; an older one from now.
                        self.cpu[member.pid] = [group, 0.0 if born >= self.started else used, used]
                    else:
                        entry[2] = used
        self.series.append((time.time() - self.started, self.cpu_by_group()))

    def cpu_by_group(self) -> dict[str, float]:
        """CPU seconds used during the run by each group."""
        totals: Counter[str] = Counter()
        for group, first, last in self.cpu.values():
            totals[group] += max(0.0, last - first)
        return dict(totals)

    def machine_busy_seconds(self) -> float:
        def busy(times) -> float:
            return sum(times) - times.idle - getattr(times, "iowait", 0.0)

        return busy(self.machine_end) - busy(self.machine_start)


# -- one run ----------------------------------------------------------------------------------------------


@dataclass
class Run:
    label: str
    workers: int
    minutes: float
    directory: Path
    locust_returncode: int = 0
    stats: dict = field(default_factory=dict)
    audit: dict = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)


def run_locust(cluster: Cluster, run: Run, accounts_file: Path) -> Sampler:
    env = {
        **os.environ,
        "LOAD_ACCOUNTS": str(accounts_file),
        "LOAD_RECORD_DIR": str(run.directory),
        "LOAD_THINK": THINK,
    }
    args = [
        PYTHON,
        "-m",
        "locust",
        "-f",
        str(LOCUSTFILE),
        "--headless",
        "--users",
        str(USERS),
        "--spawn-rate",
        str(SPAWN_RATE),
        "--run-time",
        f"{int(run.minutes * 60)}s",
        "--host",
        cluster.url,
        "--csv",
        str(run.directory / "locust"),
        "--only-summary",
        "--loglevel",
        "WARNING",
        "--exit-code-on-error",
        "1",
    ]
    with (run.directory / "locust.log").open("wb") as log:
        process = subprocess.Popen(args, env=env, cwd=run.directory, stdout=log, stderr=subprocess.STDOUT)
        sampler = Sampler(cluster, process.pid).start()
        profiler = threading.Thread(target=profile_workers, args=(cluster, run), daemon=True)
        if PROFILE_SECONDS:
            profiler.start()
        try:
            run.locust_returncode = process.wait(timeout=run.minutes * 60 + 300)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
            sampler.stop()
            if profiler.is_alive():
                profiler.join(timeout=PROFILE_SECONDS + 120)
    return sampler


def profile_workers(cluster: Cluster, run: Run) -> None:
    """py-spy on every worker at once for PROFILE_SECONDS, once the sign-ins are over: a flame graph and the
    collapsed stacks per worker under the run's directory (LOAD_PROFILE; the module's docstring). Two samplers
    per worker, both --nonblocking (they read its memory without stopping it, so they do not contend)."""
    time.sleep(PROFILE_AFTER)
    recorders = []
    for name, service in cluster.services.items():
        if not name.startswith("worker") or not service.pid:
            continue
        for kind, suffix in (("flamegraph", "svg"), ("raw", "txt")):
            out = run.directory / f"flame-{name}.{suffix}"
            command = [
                str(Path(PYTHON).with_name("py-spy")),
                "record",
                "--pid",
                str(service.pid),
                "--subprocesses",
            ]
            command += [
                "--duration",
                str(PROFILE_SECONDS),
                "--rate",
                "50",
                "--nonblocking",
                "--format",
                kind,
                "--output",
                str(out),
            ]
            recorders.append(subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE))
    for recorder in recorders:
        _, err = recorder.communicate(timeout=PROFILE_SECONDS + 60)
        if recorder.returncode != 0:
            run.problems.append(f"py-spy failed: {err.decode(errors='replace')[-300:]}")


def wait_for_drain(cluster: Cluster) -> float:
    """Seconds until the outbox is empty after the run (the shipper caught up)."""
    started = time.monotonic()
    while time.monotonic() - started < DRAIN_TIMEOUT:
        status, body = readyz(cluster)
        if status == 200 and outbox_age(body) is None:
            return time.monotonic() - started
        time.sleep(1)
    raise AssertionError(f"the audit outbox did not drain within {DRAIN_TIMEOUT:.0f} s after the run")


def catch_up_messages(cluster: Cluster) -> int:
    """Signalling messages the workers delivered only through the catch-up (their flush notice lost or a whole
    interval late, video/liveness.py), summed over the workers' /metrics."""
    total = 0
    for port in cluster.worker_ports:
        request = urllib.request.Request(f"http://127.0.0.1:{port}/metrics", headers={"Host": "127.0.0.1"})
        with urllib.request.urlopen(request, timeout=10) as response:
            for line in response.read().decode().splitlines():
                if line.startswith("telemed_video_catch_up_messages "):
                    total += int(float(line.split()[1]))
    return total


def manage(cluster: Cluster, *args: str) -> str:
    result = subprocess.run(
        [PYTHON, str(ROOT / "manage.py"), *args],
        env=cluster.env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=1800,
    )
    if result.returncode != 0:
        raise AssertionError(f"manage.py {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")
    return result.stdout


def export_and_verify(cluster: Cluster, run: Run, slugs: list[str]) -> list[dict]:
    """Each clinic's export, verified offline with the signing key pinned from Vault; their entries."""
    keys_dir = run.directory / "keys"
    keys_dir.mkdir(exist_ok=True)
    vkeys = manage(
        cluster,
        "shell",
        "-c",
        "from audit.signer import CheckpointSigner; print(*CheckpointSigner().vkeys(), sep=chr(10))",
    )
    # Only the key lines: Django may print warnings around them.
    vkeys = [line.strip() for line in vkeys.splitlines() if VKEY.match(line.strip())]
    if not vkeys:
        raise AssertionError("Vault returned no verifier key for the audit log")
    key_args = []
    for index, vkey in enumerate(vkeys):
        path = keys_dir / f"key{index}.vkey"
        path.write_text(vkey + "\n")
        key_args += ["--key", str(path)]
    entries: list[dict] = []
    for slug in slugs:
        out = run.directory / f"export-{slug}"
        shutil.rmtree(out, ignore_errors=True)
        manage(cluster, "audit_export", "--org", slug, "--out", str(out))
        verify = subprocess.run(
            [PYTHON, "-m", "audit.verify", str(out), *key_args, "--check-derived"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=1800,
        )
        run.audit.setdefault("verify", {})[slug] = (verify.stdout + verify.stderr).strip().splitlines()[:3]
        if verify.returncode != 0:
            run.problems.append(f"audit.verify failed for {slug}: {verify.stdout}{verify.stderr}")
        with (out / "entries.ndjson").open() as handle:
            entries += [json.loads(line) for line in handle if line.strip()]
        shutil.rmtree(out)  # large (FHIR and CSV copies of every event); checked, so not kept
    return entries


def check_audit(run: Run, entries: list[dict]) -> None:
    """Every audited request and video step that locust recorded against the exported entries."""
    event_ids = Counter(entry["event_id"] for entry in entries)
    duplicates = [event_id for event_id, n in event_ids.items() if n > 1]
    by_request: Counter[tuple] = Counter()
    by_video: Counter[tuple] = Counter()
    for entry in entries:
        resource = entry.get("resource") or {}
        what = (entry["action"], resource.get("type"), resource.get("id") or "")
        by_request[(entry.get("request_id"), *what)] += 1
        by_video[(*what, (entry.get("actor") or {}).get("user"))] += 1
    recorded = [
        json.loads(line)
        for path in sorted(run.directory.glob("audited-*.ndjson"))
        for line in path.read_text().splitlines()
        if line.strip()
    ]
    expected_http: Counter[tuple] = Counter()
    expected_video: Counter[tuple] = Counter()
    request_ids: Counter[str] = Counter()
    for record in recorded:
        for action, kind, resource_id, *user in record["expect"]:
            if record["kind"] == "http":
                expected_http[(record["request_id"], action, kind, resource_id)] += 1
            else:
                expected_video[(action, kind, resource_id, user[0])] += 1
        if record["kind"] == "http":
            request_ids[record["request_id"]] += 1
    missing_http = {key: n - by_request[key] for key, n in expected_http.items() if by_request[key] < n}
    missing_video = {key: n - by_video[key] for key, n in expected_video.items() if by_video[key] < n}
    lost_requests = {key[0] for key in missing_http}
    seen_load_ids = {
        entry.get("request_id") for entry in entries if str(entry.get("request_id")).startswith("load-")
    }
    http_records = sum(1 for record in recorded if record["kind"] == "http")
    run.audit.update(
        {
            "entries_exported": len(entries),
            "duplicate_event_ids": len(duplicates),
            "audited_requests_recorded": http_records,
            "audited_requests_found": http_records - len(lost_requests),
            "request_ids_reused": sum(1 for n in request_ids.values() if n > 1),
            "http_events_expected": sum(expected_http.values()),
            "http_events_missing": sum(missing_http.values()),
            "video_steps_recorded": sum(1 for record in recorded if record["kind"] == "ws"),
            "video_events_expected": sum(expected_video.values()),
            "video_events_missing": sum(missing_video.values()),
            # Requests the server completed after locust stopped waiting for them (killed at the end of the
            # run): in the log, not in locust's record. Information only.
            "logged_load_requests_not_recorded": len(seen_load_ids - set(request_ids)),
        }
    )
    if duplicates:
        run.problems.append(f"{len(duplicates)} event ids appear more than once, e.g. {duplicates[:3]}")
    if request_ids and max(request_ids.values()) > 1:
        run.problems.append("a request id was recorded twice (the client must make each one unique)")
    if missing_http:
        sample = list(missing_http.items())[:5]
        run.problems.append(
            f"{sum(missing_http.values())} audit events of HTTP requests missing, e.g. {sample}"
        )
    if missing_video:
        sample = list(missing_video.items())[:5]
        run.problems.append(
            f"{sum(missing_video.values())} audit events of video steps missing, e.g. {sample}"
        )


# -- figures ----------------------------------------------------------------------------------------------


def warmup_seconds(minutes: float) -> float:
    """Latency and throughput are measured once every user has started and signed in (an Argon2 hash each),
    so the window is the steady state both runs share; a short run keeps at least its second half."""
    return min(USERS / SPAWN_RATE + 30, minutes * 60 / 2)


def percentile(sorted_values: list[float], q: float) -> float | None:
    if not sorted_values:
        return None
    index = min(len(sorted_values) - 1, max(0, round(q * (len(sorted_values) - 1))))
    return round(sorted_values[index], 1)


def summarize(samples: list[tuple[float, float]], seconds: float) -> dict:
    latencies = sorted(ms for _, ms in samples)
    return {
        "requests": len(latencies),
        "per_second": round(len(latencies) / seconds, 1) if seconds > 0 else None,
        "p50_ms": percentile(latencies, 0.50),
        "p99_ms": percentile(latencies, 0.99),
        "mean_ms": round(statistics.fmean(latencies), 1) if latencies else None,
    }


def steady_cpu(sampler: Sampler, rows: list[tuple], warmup: float) -> dict:
    """CPU per HTTP request over the steady-state window alone: CPU between the first sample at or after the
    warm-up and the last sample, against the HTTP requests locust timed between those two instants (locust's
    clock starts when it has imported, a second or two after the sampler's: a small bias, the same in every
    run). Leaves out the sign-ins' Argon2 hashes and the drain after the run."""
    inside = [(t, cpu) for t, cpu in sampler.series if t >= warmup]
    if len(inside) < 2:
        return {"seconds": 0.0, "http_requests": 0, "cpu_ms_per_http_request": {}}
    (t0, first), (t1, last) = inside[0], inside[-1]
    requests = sum(1 for t, kind, *_ in rows if kind == "HTTP" and t0 <= t <= t1)
    used = {group: max(0.0, last.get(group, 0.0) - first.get(group, 0.0)) for group in last}
    return {
        "seconds": round(t1 - t0, 1),
        "http_requests": requests,
        "cpu_ms_per_http_request": {
            group: round(1000 * seconds_ / requests, 2)
            for group, seconds_ in sorted(used.items())
            if requests
        },
    }


def read_stats(run: Run, sampler: Sampler) -> None:
    """Steady-state figures from locust's per-request timings, locust's own totals, CPU and the backlog."""
    rows = []
    for path in run.directory.glob("timings-*.csv"):
        with path.open() as handle:
            rows += [
                (float(r["t"]), r["kind"], r["name"], float(r["ms"]), r["ok"] == "1")
                for r in csv.DictReader(handle)
            ]
    end = max((t for t, *_ in rows), default=0.0)
    warmup = warmup_seconds(run.minutes)
    window = [row for row in rows if row[0] >= warmup]
    seconds = end - warmup
    http = [(t, ms) for t, kind, _, ms, _ in window if kind == "HTTP"]
    # Signalling latency: joins and round trips. The "wait: ..." steps wait for the other person (a patient to
    # arrive, the practitioner to write a note), so they are reported per step but not in that figure.
    ws = [(t, ms) for t, kind, name, ms, _ in window if kind == "WS" and not name.startswith("wait")]
    ws_steps = {}
    for name in sorted({name for _, kind, name, _, _ in window if kind == "WS"}):
        samples = [(t, ms) for t, kind, n, ms, _ in window if kind == "WS" and n == name]
        ws_steps[name] = summarize(samples, seconds)
    with (run.directory / "locust_stats.csv").open() as handle:
        total = next(r for r in csv.DictReader(handle) if r["Name"] == "Aggregated")
    with (run.directory / "locust_exceptions.csv").open() as handle:
        exceptions = list(csv.DictReader(handle))
    with (run.directory / "locust_failures.csv").open() as handle:
        failures = list(csv.DictReader(handle))
    counters: Counter[str] = Counter()
    for path in run.directory.glob("counters-*.json"):
        counters.update(json.loads(path.read_text()))
    wall = sampler.ended - sampler.started
    cpu = sampler.cpu_by_group()
    ours = sum(cpu.values())
    busy = sampler.machine_busy_seconds()
    cores = psutil.cpu_count() or 1
    http_all = len([1 for _, kind, *_ in rows if kind == "HTTP"])
    ages = [age or 0.0 for _, age, _ in sampler.backlog]
    run.stats = {
        "http_requests_total": http_all,
        "warmup_seconds": round(warmup, 1),
        "window_seconds": round(seconds, 1),
        "http": summarize(http, seconds),
        "ws_signalling": summarize(ws, seconds),
        "ws_by_step": ws_steps,
        "locust_total": {
            "requests": int(total["Request Count"]),
            "failures": int(total["Failure Count"]),
            "per_second": round(float(total["Requests/s"]), 1),
            "p50_ms": float(total["50%"]),
            "p99_ms": float(total["99%"]),
        },
        "failures": failures,
        "exceptions": exceptions,
        "visits": dict(counters),
        "cpu_cores": {group: round(seconds_ / wall, 2) for group, seconds_ in sorted(cpu.items())},
        "cpu_ms_per_http_request": {
            group: round(1000 * seconds_ / http_all, 2) for group, seconds_ in sorted(cpu.items()) if http_all
        },
        "steady_cpu": steady_cpu(sampler, rows, warmup),
        "machine": {
            "cores": cores,
            "busy_cores": round(busy / wall, 2),
            "other_cores": round(max(0.0, busy - ours) / wall, 2),  # the rest of the machine (other clusters)
            "load_average_end": [round(x, 2) for x in os.getloadavg()],
        },
        "audit_backlog": {
            "max_age_seconds": round(max(ages), 2) if ages else None,
            "samples": len(ages),
            "not_ready_samples": sum(1 for *_, status in sampler.backlog if status != 200),
            "failed_samples": sampler.readyz_errors,
        },
    }
    if int(total["Failure Count"]) or failures:
        run.problems.append(f"locust counted {total['Failure Count']} failures: {failures[:5]}")
    if exceptions:
        run.problems.append(f"locust users raised {len(exceptions)} kinds of exceptions: {exceptions[:3]}")
    if run.locust_returncode != 0:
        run.problems.append(
            f"locust exited with {run.locust_returncode} (see {run.directory / 'locust.log'})"
        )
    if not http:
        run.problems.append("no request completed in the measurement window")


def signalling_evidence(cluster: Cluster, failures: list[dict]) -> list[dict]:
    """For each visit that failed, what the signalling store (Redis) holds: the participants and every numbered
    stream (seq and type), so a report shows whether a message that never arrived was in its recipient's stream."""
    import redis

    encounters = sorted({m for f in failures for m in re.findall(r"encounter ([0-9a-f-]{36})", f["Error"])})
    if not encounters:
        return []
    client = redis.Redis.from_url(cluster.redis_url, socket_timeout=5)
    evidence = []
    try:
        for encounter in encounters:
            keys: dict[str, object] = {}
            for key in sorted(k.decode() for k in client.scan_iter(match=f"video:*{encounter}*", count=1000)):
                kind = client.type(key).decode()
                if kind == "zset":
                    keys[key] = [
                        f"{int(score)}:{json.loads(member).get('type')}"
                        for member, score in client.zrange(key, 0, -1, withscores=True)
                    ]
                elif kind == "hash":
                    keys[key] = {
                        field.decode(): {
                            k: v for k, v in json.loads(value).items() if k in ("role", "status", "admitted")
                        }
                        for field, value in client.hgetall(key).items()
                    }
                elif kind == "string":
                    keys[key] = client.get(key).decode(errors="replace")
            evidence.append({"encounter": encounter, "redis": keys})
    finally:
        client.close()
    return evidence


def run_clinic_day(
    label: str, workers: int, minutes: float, accounts_file: Path, slugs: list[str], cluster_name: str = ""
) -> Run:
    run = Run(label, workers, minutes, BENCH / "load" / label)
    shutil.rmtree(run.directory, ignore_errors=True)
    run.directory.mkdir(parents=True)
    cluster = start_cluster(cluster_name or f"load{workers}", workers=workers)
    try:
        sampler = run_locust(cluster, run, accounts_file)
        read_stats(run, sampler)
        run.stats["signalling_failures"] = signalling_evidence(cluster, run.stats["failures"])
        # Every client login PgBouncer saw during the run (it logs each one): each costs a SCRAM exchange.
        # Django under ASGI runs each request on a thread of its own, so without the workers' pool
        # (DATABASE_POOL_SIZE) every request logs in anew.
        logins = pgbouncer_logins(cluster)
        run.stats["pgbouncer_logins"] = logins
        run.stats["pgbouncer_logins_per_http_request"] = round(
            logins / max(1, run.stats["http_requests_total"]), 2
        )
        run.stats["video_catch_up_messages"] = catch_up_messages(cluster)
        run.stats["audit_drain_seconds"] = round(wait_for_drain(cluster), 1)
        check_audit(run, export_and_verify(cluster, run, slugs))
    finally:
        cluster.stop()
    return run


# -- the report -------------------------------------------------------------------------------------------


def ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 2) if a and b else None


def bottleneck(one: Run, two: Run) -> list[str]:
    """Name what limited each run, and the ratio, from the CPU measurements (not from expectations)."""
    lines = []

    def stack_cores(run: Run) -> float:
        return run.stats["machine"]["busy_cores"] - run.stats["machine"]["other_cores"]

    def cost(run: Run) -> float:
        """CPU per HTTP request of everything the test runs (WS work included), in ms."""
        return sum(ms for group, ms in run.stats["cpu_ms_per_http_request"].items() if group != "pytest")

    for run in (one, two):
        cores, machine = run.stats["cpu_cores"], run.stats["machine"]
        workers = cores.get("workers", 0.0)
        top = sorted(cores.items(), key=lambda item: -item[1])[:4]
        measured = (
            f"{run.label} worker(s): the machine was busy {machine['busy_cores']:.2f} of {machine['cores']} cores, "
            f"{machine['other_cores']:.2f} of them outside this test (other processes on the machine), "
            f"{stack_cores(run):.2f} for the cluster and locust; the workers used {workers:.2f} "
            f"({workers / run.workers:.2f} each); biggest: " + ", ".join(f"{g} {v:.2f}" for g, v in top) + "."
        )
        if machine["busy_cores"] >= 0.9 * machine["cores"]:
            verdict = "Bottleneck: the machine's CPU (saturated)"
            if workers / run.workers >= 0.8:
                verdict += ", and the worker process was at about one core, all one Python process gets (GIL)"
        elif workers / run.workers >= 0.8:
            verdict = "Bottleneck: the worker process, at about one core, all one Python process gets (GIL)"
        else:
            verdict = "Neither the CPU nor the worker was saturated: the closed-loop users limited the load"
        lines.append(f"{measured} {verdict}.")
    t1, t2 = one.stats["http"]["per_second"], two.stats["http"]["per_second"]
    c1, c2 = cost(one), cost(two)
    s1, s2 = stack_cores(one), stack_cores(two)
    if t1 and t2 and c1 and c2 and s1 > 0 and s2 > 0:
        lines.append(
            f"The ratio: with two workers the cluster and locust got {s2 / s1:.2f}x the CPU ({s2:.2f} against "
            f"{s1:.2f} cores) and each request cost {c2 / c1:.2f}x the CPU ({c2:.1f} against {c1:.1f} ms), which "
            f"predicts {(s2 / s1) / (c2 / c1):.2f}x the throughput; measured {t2 / t1:.2f}x."
        )
    worker_ms = one.stats["cpu_ms_per_http_request"].get("workers", 0.0)
    cores = two.stats["machine"]["cores"]
    if worker_ms and c2:
        one_ceiling, machine_ceiling = 1000 / worker_ms, 1000 * cores / c2
        lines.append(
            f"Even on an idle machine the ratio stays small: one worker can serve at most about "
            f"{one_ceiling:.0f} req/s (one core at {worker_ms:.1f} ms of worker CPU per request), and the whole "
            f"stack on {cores} cores about {machine_ceiling:.0f} req/s ({c2:.1f} ms per request: workers "
            f"{two.stats['cpu_ms_per_http_request'].get('workers', 0.0):.1f}, PostgreSQL "
            f"{two.stats['cpu_ms_per_http_request'].get('postgres', 0.0):.1f}, PgBouncer "
            f"{two.stats['cpu_ms_per_http_request'].get('pgbouncer', 0.0):.1f}, locust "
            f"{two.stats['cpu_ms_per_http_request'].get('locust', 0.0):.1f}), so two/one is at most about "
            f"{machine_ceiling / one_ceiling:.2f} here: a second worker competes with the first, PostgreSQL, "
            "PgBouncer and locust for the same two cores."
        )
    bouncer = two.stats.get("pgbouncer_logins_per_http_request")
    if bouncer is not None:
        why = " (a new database connection, with a SCRAM exchange, per request)" if bouncer >= 0.9 else ""
        lines.append(
            f"PgBouncer used {two.stats['cpu_ms_per_http_request'].get('pgbouncer', 0.0):.1f} ms of CPU per "
            f"request against PostgreSQL's {two.stats['cpu_ms_per_http_request'].get('postgres', 0.0):.1f}: it "
            f"saw {bouncer} client logins per HTTP request{why}."
        )
    return lines


def render(report: dict) -> str:
    one, two = report["runs"]["one"], report["runs"]["two"]

    def row(label: str, run: dict) -> str:
        http, ws = run["stats"]["http"], run["stats"]["ws_signalling"]
        return (
            f"| {label} | {run['minutes']:g} min | {http['per_second']} | {http['p50_ms']} | {http['p99_ms']} "
            f"| {ws['per_second']} | {ws['p50_ms']} | {ws['p99_ms']} | {run['stats']['locust_total']['failures']} "
            f"| {run['stats']['audit_backlog']['max_age_seconds']} |"
        )

    lines = [
        f"# Clinic-day load test ({report['finished_at']})",
        "",
        f"{report['users']} closed-loop users (practitioners:patients 1:3), spawn rate {report['spawn_rate']}/s, "
        f"think times x{report['think']:g}, steady-state window after "
        f"{one['stats']['warmup_seconds']:.0f} s / {two['stats']['warmup_seconds']:.0f} s of warm-up. "
        f"Machine: {report['machine']}.",
        "",
        "| workers | run | HTTP req/s | p50 ms | p99 ms | WS ops/s | WS p50 | WS p99 | failures | max audit backlog s |",
        "|---|---|---|---|---|---|---|---|---|---|",
        row("1", one),
        row("2", two),
        f"| **2/1** | | **{report['ratios']['throughput']}** | {report['ratios']['p50']} | "
        f"{report['ratios']['p99']} | {report['ratios']['ws_throughput']} | | | | |",
        "",
        "Overall (locust's totals, warm-up included): "
        + "; ".join(
            f"{label} worker(s) {run['stats']['locust_total']['requests']} requests, "
            f"{run['stats']['locust_total']['per_second']}/s, p50 {run['stats']['locust_total']['p50_ms']} ms, "
            f"p99 {run['stats']['locust_total']['p99_ms']} ms"
            for label, run in (("1", one), ("2", two))
        )
        + ".",
    ]
    lines += [
        "",
        "WS: joins (connect to `welcome`) and round trips (send, until the awaited message arrives); the "
        "`wait:` steps wait for the other person and are left out of the WS figures above.",
        "",
        "| WS step | 1 worker p50 / p99 ms | 2 workers p50 / p99 ms | count 1 / 2 |",
        "|---|---|---|---|",
    ]
    for name in sorted(set(one["stats"]["ws_by_step"]) | set(two["stats"]["ws_by_step"])):
        a, b = one["stats"]["ws_by_step"].get(name, {}), two["stats"]["ws_by_step"].get(name, {})
        lines.append(
            f"| {name} | {a.get('p50_ms')} / {a.get('p99_ms')} | {b.get('p50_ms')} / {b.get('p99_ms')} "
            f"| {a.get('requests')} / {b.get('requests')} |"
        )
    lines += [
        "",
        "## CPU (cores used on average during the run, and CPU time per HTTP request)",
        "",
        "| group | " + " | ".join(f"{run['workers']} worker(s)" for run in (one, two)) + " |",
        "|---|---|---|",
    ]
    groups = sorted(set(one["stats"]["cpu_cores"]) | set(two["stats"]["cpu_cores"]))
    for group in groups:
        lines.append(
            f"| {group} | "
            + " | ".join(
                f"{run['stats']['cpu_cores'].get(group, 0.0):.2f} "
                f"({run['stats']['cpu_ms_per_http_request'].get(group, 0.0):.1f} ms/request)"
                for run in (one, two)
            )
            + " |"
        )
    lines.append(
        "| workers, steady state only | "
        + " | ".join(
            f"{run['stats'].get('steady_cpu', {}).get('cpu_ms_per_http_request', {}).get('workers', 0.0):.1f} "
            f"ms/request over {run['stats'].get('steady_cpu', {}).get('seconds', 0.0):.0f} s"
            for run in (one, two)
        )
        + " |"
    )
    for label in ("busy_cores", "other_cores"):
        lines.append(
            f"| machine {label.replace('_cores', '')} | "
            + " | ".join(f"{run['stats']['machine'][label]:.2f}" for run in (one, two))
            + " |"
        )
    lines += ["", "## Bottleneck", "", *[f"- {line}" for line in report["bottleneck"]], "", "## Audit", ""]
    for label, run in (("1", one), ("2", two)):
        audit = run["audit"]
        lines.append(
            f"- {label} worker(s): {audit.get('audited_requests_found')} of "
            f"{audit.get('audited_requests_recorded')} audited requests found in the export "
            f"({audit.get('http_events_expected', 0) - audit.get('http_events_missing', 0)} of "
            f"{audit.get('http_events_expected')} events), video: "
            f"{audit.get('video_events_expected', 0) - audit.get('video_events_missing', 0)} of "
            f"{audit.get('video_events_expected')} events; {audit.get('entries_exported')} entries exported, "
            f"{audit.get('duplicate_event_ids')} duplicate event ids; verify: "
            + "; ".join(f"{slug}: {(out or ['?'])[0]}" for slug, out in audit.get("verify", {}).items())
            + f"; backlog max {run['stats']['audit_backlog']['max_age_seconds']} s, drained "
            f"{run['stats'].get('audit_drain_seconds')} s after the run; visits {run['stats']['visits']}; "
            f"signalling messages delivered by the catch-up (notice lost or late): "
            f"{run['stats'].get('video_catch_up_messages')}."
        )
    problems = [f"{label}: {p}" for label, run in (("1", one), ("2", two)) for p in run["problems"]]
    for label, run in (("1", one), ("2", two)):
        for visit in run["stats"].get("signalling_failures", []):
            problems.append(
                f"{label}: failed visit {visit['encounter']}, signalling store after the run: "
                + "; ".join(f"`{key}` {value}" for key, value in visit["redis"].items())
            )
    lines += ["", "## Problems", ""] + ([f"- {p}" for p in problems] or ["None."])
    return "\n".join(lines) + "\n"


# -- the two runs -----------------------------------------------------------------------------------------


def clinic_day(minutes_one: float, minutes_two: float, workdir: Path, prefix: str = "") -> tuple[dict, dict]:
    """One run on one worker for `minutes_one`, then one on two workers for `minutes_two`, each on a fresh
    cluster; the report (see the module's docstring) and the runs by label ("one", "two"). `prefix` names the
    runs' directories (.bench/load/<prefix><label>/) and clusters, so a short bench run and the drill keep apart."""
    accounts_file = workdir / "accounts.json"
    accounts = write_accounts(accounts_file)
    slugs = [clinic["slug"] for clinic in accounts["clinics"]]
    one = run_clinic_day(f"{prefix}one", 1, minutes_one, accounts_file, slugs, f"{prefix}load1")
    two = run_clinic_day(f"{prefix}two", 2, minutes_two, accounts_file, slugs, f"{prefix}load2")
    runs = {"one": one, "two": two}
    report = {
        "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "users": USERS,
        "spawn_rate": SPAWN_RATE,
        "think": float(THINK),
        "machine": f"{psutil.cpu_count()} CPUs, {platform.platform()}",
        "runs": {
            label: {
                "workers": run.workers,
                "minutes": run.minutes,
                "stats": run.stats,
                "audit": run.audit,
                "problems": run.problems,
            }
            for label, run in runs.items()
        },
        "ratios": {
            "throughput": ratio(two.stats["http"]["per_second"], one.stats["http"]["per_second"]),
            "p50": ratio(two.stats["http"]["p50_ms"], one.stats["http"]["p50_ms"]),
            "p99": ratio(two.stats["http"]["p99_ms"], one.stats["http"]["p99_ms"]),
            "ws_throughput": ratio(
                two.stats["ws_signalling"]["per_second"], one.stats["ws_signalling"]["per_second"]
            ),
        },
        "bottleneck": bottleneck(one, two),
    }
    return report, runs


def problems(runs: dict[str, Run]) -> list[str]:
    """What fails a clinic day: every run's problems (locust failures and exceptions, missing or duplicated
    audit events, a failed verification)."""
    return [f"{run.label} worker(s): {problem}" for run in runs.values() for problem in run.problems]
