"""The Kubernetes manifests in deploy/k8s: valid, clean under checkov, and holding what the deployment relies on.

Three layers:
- every document validates against the Kubernetes API schemas (kubernetes_validate, strict: unknown fields
  are errors) of the oldest and the newest Kubernetes version the manifests target;
- checkov's static security scan finds nothing, and every check it skips carries a reason;
- the properties the platform depends on, checked by meaning (pod security, probes, autoscaling, network
  isolation, secrets from Vault, coturn's placement and configuration). Each check is a function returning
  the problems it finds; `test_checks_catch_regressions` breaks a copy of the manifests in each way and
  makes sure the check notices, so a check that has gone blind fails too.

No database, no Django settings: `.venv/bin/python -m pytest tests/deploy -p no:django --noconftest`, or as
part of `make test`. checkov runs from its own venv (`make .venv-checkov/bin/checkov`); without it this
skips, except in CI (CI=true), where it fails.
"""

from __future__ import annotations

import copy
import ipaddress
import json
import os
import re
import subprocess
from pathlib import Path

import kubernetes_validate
import pytest
import yaml
from django.core.exceptions import ImproperlyConfigured

from config.proxies import parse_trusted_proxies
from tests.tools import require_tool

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
CHECKOV = ROOT / ".venv-checkov" / "bin" / "checkov"

# The oldest Kubernetes the manifests support (preStop `sleep` is on by default from 1.30), and the newest
# whose schemas kubernetes_validate ships.
KUBERNETES_VERSIONS = ("1.30", kubernetes_validate.latest_version())

# Documents that are not Kubernetes API objects, so no API schema applies. CRDs (e.g. a SecretProviderClass)
# would be listed here too, each with its reason; the manifests use none.
NOT_API_OBJECTS = {
    ("kustomize.config.k8s.io/v1beta1", "Kustomization"): (
        "kustomize's own file, read by `kubectl apply -k`; it never reaches the API server"
    ),
}

NAMESPACE = "telemed"
TURN_NAMESPACE = "telemed-turn"
WORKLOAD_KINDS = {"Deployment", "DaemonSet", "StatefulSet", "Job", "CronJob", "Pod", "ReplicaSet"}
DIGEST = re.compile(r"@sha256:[0-9a-f]{64}$")

# What each workload may reach (protocol, port), besides nothing. DNS goes to kube-dns only.
DNS = {("UDP", 53), ("TCP", 53)}
PGBOUNCER, AUDIT_DB, REDIS, VAULT = ("TCP", 6432), ("TCP", 5432), ("TCP", 6379), ("TCP", 8200)
WEB_EGRESS = DNS | {PGBOUNCER, AUDIT_DB, REDIS, VAULT}
SHIPPER_EGRESS = DNS | {PGBOUNCER, AUDIT_DB, VAULT}

# Secrets each workload's Vault template must export, and ones no running pod may ever hold.
WEB_SECRETS = {
    "DJANGO_SECRET_KEY",
    "USER_LOOKUP_KEY",
    "TENANCY_CONTEXT_KEY",
    "VAULT_ROLE_ID",
    "VAULT_SECRET_ID",
    "DATABASE_URL",
    "AUDIT_READER_DATABASE_URL",
    "REDIS_URL",
    "TURN_SHARED_SECRETS",
}
SHIPPER_SECRETS = {
    "DJANGO_SECRET_KEY",
    "TENANCY_CONTEXT_KEY",
    "VAULT_ROLE_ID",
    "VAULT_SECRET_ID",
    "DATABASE_URL",
    "AUDIT_DATABASE_URL",
    "AUDIT_READER_DATABASE_URL",
}
NEVER_IN_A_POD = {"VAULT_OPS_TOKEN", "VAULT_TOKEN", "DATABASE_OWNER_URL", "AUDIT_OWNER_DATABASE_URL"}
SECRET_SETTINGS = WEB_SECRETS | SHIPPER_SECRETS | NEVER_IN_A_POD | {"DATABASE_ADMIN_URL"}

# Variables telemed-config may set that config/settings.py does not read, with who reads them.
CONFIG_READ_ELSEWHERE = {
    "PYTHONDONTWRITEBYTECODE": "Python (read-only root filesystem)",
    "PYTHONUNBUFFERED": "Python",
    "REQUESTS_CA_BUNDLE": "requests (hvac)",
    "SSL_CERT_FILE": "OpenSSL (urllib in /readyz, redis)",
}

# How the Kubernetes coturn configuration may differ from deploy/coturn/turnserver.conf: the start script
# and Vault supply the addresses and secrets; files move to where the pod can write or Vault renders them.
TURN_OPTIONS_DROPPED = {"listening-ip", "relay-ip", "external-ip", "static-auth-secret", "syslog"}
TURN_OPTIONS_CHANGED = {
    "cert": "/vault/secrets/turn-fullchain.pem",
    "pkey": "/vault/secrets/turn-privkey.pem",
    "pidfile": "/tmp/turnserver.pid",
}
TURN_OPTIONS_ADDED = {"log-file": "stdout", "userdb": "/tmp/turndb"}


# -- loading ---------------------------------------------------------------------------------------------------


def load_documents(directory: Path = K8S) -> list[tuple[str, dict]]:
    documents = []
    for path in sorted(directory.glob("*.y*ml")):
        for document in yaml.safe_load_all(path.read_text()):
            if document:
                documents.append((path.name, document))
    return documents


@pytest.fixture(scope="module")
def documents() -> list[tuple[str, dict]]:
    return load_documents()


@pytest.fixture(scope="module")
def docs(documents) -> list[dict]:
    return [document for _, document in documents]


def api_objects(docs: list[dict]) -> list[dict]:
    return [d for d in docs if (d.get("apiVersion"), d.get("kind")) not in NOT_API_OBJECTS]


def find(docs: list[dict], kind: str, name: str, namespace: str | None = NAMESPACE) -> dict:
    matches = [
        d
        for d in docs
        if d.get("kind") == kind
        and d["metadata"]["name"] == name
        and (namespace is None or d["metadata"].get("namespace") == namespace)
    ]
    assert len(matches) == 1, f"expected one {kind} {namespace}/{name}, found {len(matches)}"
    return matches[0]


def workloads(docs: list[dict]) -> list[dict]:
    return [d for d in docs if d.get("kind") in WORKLOAD_KINDS]


def pod_template(workload: dict) -> dict:
    if workload["kind"] == "Pod":
        return workload
    if workload["kind"] == "CronJob":
        return workload["spec"]["jobTemplate"]["spec"]["template"]
    return workload["spec"]["template"]


def containers(pod: dict, *, init: bool = True) -> list[dict]:
    spec = pod["spec"]
    return list(spec.get("containers", [])) + (list(spec.get("initContainers", [])) if init else [])


def label(workload: dict) -> str:
    return f"{workload['kind']} {workload['metadata'].get('namespace')}/{workload['metadata']['name']}"


def script(container: dict) -> str:
    return " ".join(container.get("command", []) + container.get("args", []))


def config_map_data(docs: list[dict], name: str, namespace: str = NAMESPACE) -> dict[str, str]:
    return find(docs, "ConfigMap", name, namespace).get("data") or {}


def allowed_hosts(docs: list[dict]) -> list[str]:
    value = config_map_data(docs, "telemed-config").get("DJANGO_ALLOWED_HOSTS", "")
    return [host.strip() for host in value.split(",") if host.strip()]


def host_allowed(host: str, patterns: list[str]) -> bool:
    # Django's rule: ".example.org" matches the domain and its subdomains; anything else matches exactly.
    host = host.lower()
    return any(
        host == p.lower() or (p.startswith(".") and (host.endswith(p.lower()) or host == p[1:].lower()))
        for p in patterns
    )


# -- checks: each returns the problems it finds -------------------------------------------------------------


def pod_security_problems(docs: list[dict]) -> list[str]:
    """Every container non-root, read-only, unprivileged, confined, bounded and pinned."""
    problems = []
    for workload in workloads(docs):
        pod = pod_template(workload)
        spec, where = pod["spec"], label(workload)
        pod_context = spec.get("securityContext") or {}
        if spec.get("automountServiceAccountToken") is not False:
            problems.append(f"{where}: automountServiceAccountToken is not false")
        for flag in ("hostPID", "hostIPC"):
            if spec.get(flag):
                problems.append(f"{where}: {flag}")
        if spec.get("hostNetwork") and workload["metadata"]["name"] != "coturn":
            problems.append(f"{where}: hostNetwork (only coturn needs it)")
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        for container in containers(pod):
            at = f"{where} container {container['name']}"
            context = container.get("securityContext") or {}

            def effective(key, context=context):
                return context.get(key, pod_context.get(key))

            if context.get("allowPrivilegeEscalation") is not False:
                problems.append(f"{at}: allowPrivilegeEscalation is not false")
            if context.get("readOnlyRootFilesystem") is not True:
                problems.append(f"{at}: readOnlyRootFilesystem is not true")
            if context.get("privileged"):
                problems.append(f"{at}: privileged")
            if effective("runAsNonRoot") is not True:
                problems.append(f"{at}: runAsNonRoot is not true")
            if not isinstance(effective("runAsUser"), int) or effective("runAsUser") < 1000:
                problems.append(f"{at}: runAsUser is not a non-root uid (>= 1000)")
            capabilities = context.get("capabilities") or {}
            if "ALL" not in (capabilities.get("drop") or []):
                problems.append(f"{at}: capabilities do not drop ALL")
            if capabilities.get("add"):
                problems.append(f"{at}: adds capabilities {capabilities['add']}")
            if (effective("seccompProfile") or {}).get("type") != "RuntimeDefault":
                problems.append(f"{at}: seccompProfile is not RuntimeDefault")
            resources = container.get("resources") or {}
            for kind in ("requests", "limits"):
                for resource in ("cpu", "memory"):
                    if resource not in (resources.get(kind) or {}):
                        problems.append(f"{at}: no {resource} {kind[:-1]}")
            if not DIGEST.search(container.get("image", "")):
                problems.append(f"{at}: image {container.get('image')!r} is not pinned by digest")
            for mount in container.get("volumeMounts", []):
                if mount.get("readOnly"):
                    continue
                volume = volumes.get(mount["name"], {})
                if mount["mountPath"] != "/tmp" or "emptyDir" not in volume:
                    problems.append(f"{at}: writable mount {mount['mountPath']} (only an emptyDir on /tmp)")
                elif not volume["emptyDir"].get("sizeLimit"):
                    problems.append(f"{at}: /tmp has no sizeLimit")
        agent_image = (pod["metadata"].get("annotations") or {}).get("vault.hashicorp.com/agent-image", "")
        if not DIGEST.search(agent_image):
            problems.append(f"{where}: the Vault Agent image {agent_image!r} is not pinned by digest")
    return problems


def http_port(container: dict, port) -> int | None:
    if isinstance(port, int):
        return port
    return next((p["containerPort"] for p in container.get("ports", []) if p.get("name") == port), None)


def web_probe_problems(docs: list[dict]) -> list[str]:
    """Liveness on /healthz, readiness on /readyz, on the uvicorn port, with a Host Django accepts."""
    problems = []
    pod = pod_template(find(docs, "Deployment", "telemed-web"))
    web = next(c for c in pod["spec"]["containers"] if c["name"] == "web")
    hosts = allowed_hosts(docs)
    expected = {"livenessProbe": "/healthz", "readinessProbe": "/readyz", "startupProbe": "/healthz"}
    for probe_name, path in expected.items():
        probe = web.get(probe_name)
        if probe is None:
            if probe_name != "startupProbe":
                problems.append(f"web has no {probe_name}")
            continue
        get = probe.get("httpGet") or {}
        if get.get("path") != path:
            problems.append(f"web {probe_name} checks {get.get('path')!r}, not {path}")
        if http_port(web, get.get("port")) != 8000:
            problems.append(f"web {probe_name} is not on port 8000")
        host = next((h["value"] for h in get.get("httpHeaders", []) if h["name"].lower() == "host"), None)
        if host is None or not host_allowed(host, hosts):
            problems.append(f"web {probe_name} sends Host {host!r}, which DJANGO_ALLOWED_HOSTS refuses (404)")
    if "uvicorn config.asgi:application" not in script(web) or "--port 8000" not in script(web):
        problems.append("web does not run uvicorn config.asgi:application on port 8000")
    if "--proxy-headers" not in script(web) or "--forwarded-allow-ips" not in script(web):
        problems.append("web does not trust proxy headers from the ingress only (--forwarded-allow-ips)")
    return problems


# `--forwarded-allow-ips <value>` / `--forwarded-allow-ips=<value>`, quoted or not.
FORWARDED_ALLOW_IPS = re.compile(r"--forwarded-allow-ips(?:=|\s+)(\S+)")
TRUSTED_PROXIES_REFERENCE = {"$TRUSTED_PROXIES", "${TRUSTED_PROXIES}"}


def proxy_trust_problems(docs: list[dict]) -> list[str]:
    """X-Forwarded-For/-Proto (the audited client address, the https scheme) are believed from the ingress
    controller only: uvicorn's allow list is the TRUSTED_PROXIES setting, which names private addresses and
    never everyone; nothing else (uvicorn's FORWARDED_ALLOW_IPS, Django's old DJANGO_BEHIND_TLS_PROXY) adds
    trust."""
    problems = []
    config = config_map_data(docs, "telemed-config")
    for workload in workloads(docs):
        pod = pod_template(workload)
        for container in containers(pod):
            name = f"{label(workload)}/{container['name']}"
            for value in FORWARDED_ALLOW_IPS.findall(script(container)):
                if value.strip("'\"") not in TRUSTED_PROXIES_REFERENCE:
                    problems.append(
                        f"{name}: --forwarded-allow-ips {value} is not the TRUSTED_PROXIES setting"
                    )
            env = {e["name"]: e.get("value") for e in container.get("env", [])}
            for variable in ("FORWARDED_ALLOW_IPS", "DJANGO_BEHIND_TLS_PROXY"):
                if variable in env:
                    problems.append(f"{name} sets {variable}: trust comes from TRUSTED_PROXIES only")
            if "TRUSTED_PROXIES" in env:
                problems.append(f"{name} overrides TRUSTED_PROXIES of telemed-config")
    for variable in ("FORWARDED_ALLOW_IPS", "DJANGO_BEHIND_TLS_PROXY"):
        if variable in config:
            problems.append(f"telemed-config sets {variable}: trust comes from TRUSTED_PROXIES only")
    web = _container(docs, "Deployment", "telemed-web")
    allow_lists = [value.strip("'\"") for value in FORWARDED_ALLOW_IPS.findall(script(web))]
    if (
        "--proxy-headers" not in script(web)
        or not allow_lists
        or allow_lists[0] not in TRUSTED_PROXIES_REFERENCE
    ):
        problems.append(
            'web does not pass --proxy-headers --forwarded-allow-ips="$TRUSTED_PROXIES" to uvicorn'
        )
    value = config.get("TRUSTED_PROXIES", "")
    try:
        proxies = parse_trusted_proxies(value)
    except ImproperlyConfigured as exc:  # what config/settings.py would refuse to start on
        problems.append(f"telemed-config TRUSTED_PROXIES {value!r}: {exc}")
        proxies = []
    if not proxies:
        problems.append("telemed-config names no TRUSTED_PROXIES: the ingress controller's pods")
    for proxy in proxies:
        if not ipaddress.ip_network(proxy).is_private:
            problems.append(
                f"TRUSTED_PROXIES {proxy} is not a private range: not the ingress controller's pods"
            )
    return problems


def autoscaling_problems(docs: list[dict]) -> list[str]:
    """The HPA scales telemed-web out early and fast, and in slowly."""
    problems = []
    hpa = find(docs, "HorizontalPodAutoscaler", "telemed-web")
    spec = hpa["spec"]
    if hpa["apiVersion"] != "autoscaling/v2":
        problems.append("HPA is not autoscaling/v2")
    if (spec["scaleTargetRef"]["kind"], spec["scaleTargetRef"]["name"]) != ("Deployment", "telemed-web"):
        problems.append("HPA does not scale Deployment telemed-web")
    if spec.get("minReplicas", 1) < 2:
        problems.append("HPA minReplicas < 2")
    if spec["maxReplicas"] <= spec.get("minReplicas", 1):
        problems.append("HPA maxReplicas leaves no room to scale")
    cpu_targets = [
        m["resource"]["target"]
        for m in spec.get("metrics", [])
        if m["type"] == "Resource" and m["resource"]["name"] == "cpu"
    ]
    if not cpu_targets:
        problems.append("HPA has no CPU target")
    for target in cpu_targets:
        if target.get("type") != "Utilization" or not 0 < target.get("averageUtilization", 100) <= 60:
            problems.append(f"HPA CPU target {target} is not a utilization of at most 60 %")
    behavior = spec.get("behavior") or {}
    if (behavior.get("scaleUp") or {}).get("stabilizationWindowSeconds", 0) > 60:
        problems.append("HPA scale-up waits more than a minute")
    if (behavior.get("scaleDown") or {}).get("stabilizationWindowSeconds", 300) < 300:
        problems.append("HPA scales down within 5 minutes of a peak")
    deployment = find(docs, "Deployment", "telemed-web")
    if "replicas" in deployment["spec"]:
        problems.append("Deployment telemed-web sets replicas, which resets the HPA's count on every apply")
    web = pod_template(deployment)["spec"]["containers"][0]
    if "cpu" not in (web.get("resources") or {}).get("requests", {}):
        problems.append("telemed-web has no CPU request: the HPA's utilization is undefined")
    pdbs = [
        d
        for d in docs
        if d["kind"] == "PodDisruptionBudget"
        and d["spec"]["selector"].get("matchLabels") == deployment["spec"]["selector"]["matchLabels"]
    ]
    if len(pdbs) != 1:
        problems.append("telemed-web has no PodDisruptionBudget")
    return problems


def selects(policy: dict, labels: dict) -> bool:
    selector = policy["spec"]["podSelector"]
    assert not selector.get("matchExpressions"), "the checks understand matchLabels only"
    return all(labels.get(key) == value for key, value in (selector.get("matchLabels") or {}).items())


def ports_of(rule: dict) -> set[tuple[str, int]]:
    return {(p.get("protocol", "TCP"), p["port"]) for p in rule.get("ports") or []}


def is_kube_dns(peer: dict) -> bool:
    namespaces = (peer.get("namespaceSelector") or {}).get("matchLabels") or {}
    pods = (peer.get("podSelector") or {}).get("matchLabels") or {}
    return namespaces == {"kubernetes.io/metadata.name": "kube-system"} and pods == {"k8s-app": "kube-dns"}


def default_deny_problems(docs: list[dict], namespace: str) -> list[str]:
    denies = [
        d
        for d in docs
        if d["kind"] == "NetworkPolicy"
        and d["metadata"].get("namespace") == namespace
        and d["spec"]["podSelector"] in ({}, None)
        and set(d["spec"].get("policyTypes", [])) == {"Ingress", "Egress"}
        and not d["spec"].get("ingress")
        and not d["spec"].get("egress")
    ]
    return [] if denies else [f"namespace {namespace} has no default-deny NetworkPolicy"]


def egress_problems(docs: list[dict], workload_name: str, allowed: set[tuple[str, int]]) -> list[str]:
    """The pods may reach exactly `allowed` (protocol, port): DNS at kube-dns, the rest at ipBlocks."""
    problems = []
    labels = pod_template(find(docs, "Deployment", workload_name))["metadata"]["labels"]
    policies = [
        d
        for d in docs
        if d["kind"] == "NetworkPolicy" and d["metadata"].get("namespace") == NAMESPACE and selects(d, labels)
    ]
    reachable: set[tuple[str, int]] = set()
    for policy in policies:
        for rule in policy["spec"].get("egress") or []:
            name = f"{workload_name} egress rule in {policy['metadata']['name']}"
            if not rule.get("to"):
                problems.append(f"{name} allows every destination")
            if not rule.get("ports"):
                problems.append(f"{name} allows every port")
            ports = ports_of(rule)
            for peer in rule.get("to") or []:
                if "ipBlock" in peer:
                    network = ipaddress.ip_network(peer["ipBlock"]["cidr"], strict=False)
                    if network.prefixlen < 8:
                        problems.append(f"{name} opens {network}, far more than one service")
                    if ports & DNS:
                        problems.append(f"{name} allows DNS to {network} instead of kube-dns")
                elif is_kube_dns(peer):
                    if ports - DNS:
                        problems.append(f"{name} allows {sorted(ports - DNS)} to kube-dns")
                else:
                    problems.append(f"{name} allows a peer that is neither kube-dns nor an ipBlock: {peer}")
            reachable |= ports
    if reachable != allowed:
        extra, missing = sorted(reachable - allowed), sorted(allowed - reachable)
        problems.append(f"{workload_name} egress: extra {extra}, missing {missing}")
    return problems


def ingress_problems(docs: list[dict]) -> list[str]:
    """Web pods accept connections from the ingress controller only, on 8000; the shipper from no one."""
    problems = []
    for workload_name, allowed_from_controller in (("telemed-web", True), ("telemed-audit-shipper", False)):
        labels = pod_template(find(docs, "Deployment", workload_name))["metadata"]["labels"]
        for policy in docs:
            if policy["kind"] != "NetworkPolicy" or policy["metadata"].get("namespace") != NAMESPACE:
                continue
            if not selects(policy, labels):
                continue
            for rule in policy["spec"].get("ingress") or []:
                name = f"{workload_name} ingress rule in {policy['metadata']['name']}"
                if not allowed_from_controller:
                    problems.append(f"{name}: nothing may connect to the shipper")
                    continue
                if ports_of(rule) != {("TCP", 8000)}:
                    problems.append(f"{name} opens {sorted(ports_of(rule))}, not TCP 8000 only")
                for peer in rule.get("from") or [{"everyone": True}]:
                    namespaces = (peer.get("namespaceSelector") or {}).get("matchLabels") or {}
                    pods = (peer.get("podSelector") or {}).get("matchLabels") or {}
                    if namespaces.get("kubernetes.io/metadata.name") != "ingress-nginx" or not pods:
                        problems.append(f"{name} admits {peer}, not the ingress controller's pods")
    return problems


def template_exports(pod: dict, file_name: str) -> set[str]:
    annotations = pod["metadata"].get("annotations") or {}
    template = annotations.get(f"vault.hashicorp.com/agent-inject-template-{file_name}", "")
    return set(re.findall(r"^\s*export ([A-Z_][A-Z0-9_]*)=", template, re.MULTILINE))


def vault_problems(docs: list[dict]) -> list[str]:
    """Secrets reach every pod from Vault through the agent, as files in memory, each pod only its own."""
    problems = []
    if any(d["kind"] == "Secret" and (d.get("data") or d.get("stringData")) for d in docs):
        problems.append("a Secret with data is committed in the manifests")
    config = config_map_data(docs, "telemed-config")
    for name in sorted(set(config) & SECRET_SETTINGS):
        problems.append(f"telemed-config sets the secret {name}")
    for workload in workloads(docs):
        pod, where = pod_template(workload), label(workload)
        annotations = pod["metadata"].get("annotations") or {}
        if annotations.get("vault.hashicorp.com/agent-inject") != "true":
            problems.append(f"{where}: no Vault Agent injection")
            continue
        if not annotations.get("vault.hashicorp.com/role"):
            problems.append(f"{where}: no Vault role")
        if annotations.get("vault.hashicorp.com/agent-pre-populate-only") != "true":
            problems.append(f"{where}: a long-running Vault Agent sidecar (pre-populate only is enough)")
        # The agent authenticates with a projected, audience-bound token the application never sees.
        token_volume = annotations.get("vault.hashicorp.com/agent-service-account-token-volume-name")
        volume = next((v for v in pod["spec"].get("volumes", []) if v["name"] == token_volume), None)
        sources = ((volume or {}).get("projected") or {}).get("sources") or []
        token = next((s["serviceAccountToken"] for s in sources if "serviceAccountToken" in s), None)
        if token is None or token.get("audience") != "vault" or token.get("expirationSeconds", 3600) > 3600:
            problems.append(
                f"{where}: the Vault Agent's token is not a short-lived projected token for vault"
            )
        for container in containers(pod):
            if any(m["name"] == token_volume for m in container.get("volumeMounts", [])):
                problems.append(f"{where}: container {container['name']} mounts the Vault login token")
            for file_name in re.findall(r"/vault/secrets/([A-Za-z0-9._-]+)", script(container)):
                if f"vault.hashicorp.com/agent-inject-template-{file_name}" not in annotations:
                    problems.append(
                        f"{where}: {container['name']} reads {file_name}, which Vault never renders"
                    )
                if annotations.get(f"vault.hashicorp.com/agent-inject-perms-{file_name}") != "0400":
                    problems.append(f"{where}: {file_name} is not rendered with mode 0400")
        for key, template in annotations.items():
            if key.startswith("vault.hashicorp.com/agent-inject-template-"):
                for name in NEVER_IN_A_POD:
                    if name in template:
                        problems.append(f"{where}: the Vault template {key} hands out {name}")
    web = pod_template(find(docs, "Deployment", "telemed-web"))
    shipper = pod_template(find(docs, "Deployment", "telemed-audit-shipper"))
    for pod, file_name, expected in (
        (web, "web.env", WEB_SECRETS),
        (shipper, "shipper.env", SHIPPER_SECRETS),
    ):
        exported = template_exports(pod, file_name)
        if exported != expected:
            problems.append(
                f"{file_name} exports {sorted(exported - expected)} too many, {sorted(expected - exported)} missing"
            )
    return problems


def settings_variables() -> set[str]:
    source = (ROOT / "config" / "settings.py").read_text()
    return set(
        re.findall(r"(?:os\.environ\.get|env_bool|env_int|env_list)\(\s*\"([A-Z][A-Z0-9_]*)\"", source)
    )


def config_problems(docs: list[dict]) -> list[str]:
    """telemed-config names only variables something reads, and says what production needs."""
    problems = []
    config = config_map_data(docs, "telemed-config")
    known = settings_variables() | set(CONFIG_READ_ELSEWHERE)
    for name in sorted(set(config) - known):
        problems.append(f"telemed-config sets {name}, which nothing reads")
    required = {
        "DATABASE_TRANSACTION_POOLER": "true",
        "DJANGO_DEBUG": "false",
        "DJANGO_SECURE_COOKIES": "true",
    }
    for name, value in required.items():
        if config.get(name) != value:
            problems.append(f"telemed-config {name} is {config.get(name)!r}, not {value!r}")
    if not config.get("VAULT_ADDR", "").startswith("https://"):
        problems.append("VAULT_ADDR is not https://")
    if "*" in allowed_hosts(docs):
        problems.append("DJANGO_ALLOWED_HOSTS contains *")
    for workload_name in ("telemed-web", "telemed-audit-shipper"):
        for container in pod_template(find(docs, "Deployment", workload_name))["spec"]["containers"]:
            refs = [e["configMapRef"]["name"] for e in container.get("envFrom", []) if "configMapRef" in e]
            if refs != ["telemed-config"]:
                problems.append(f"{workload_name}/{container['name']} does not read telemed-config")
            if any("valueFrom" in e and "secretKeyRef" in e["valueFrom"] for e in container.get("env", [])):
                problems.append(f"{workload_name}/{container['name']} reads a Kubernetes Secret")
    web = pod_template(find(docs, "Deployment", "telemed-web"))["spec"]["containers"][0]
    web_env = {e["name"]: e.get("value") for e in web.get("env", [])}
    for name in sorted(set(web_env) - known):
        problems.append(f"telemed-web sets {name}, which nothing reads")
    if not str(web_env.get("DATABASE_POOL_SIZE", "")).isdigit() or int(web_env["DATABASE_POOL_SIZE"]) < 1:
        problems.append("telemed-web keeps no pool of database connections (DATABASE_POOL_SIZE)")
    shipper = pod_template(find(docs, "Deployment", "telemed-audit-shipper"))["spec"]["containers"][0]
    if "manage.py audit_ship" not in script(shipper):
        problems.append("telemed-audit-shipper does not run manage.py audit_ship")
    return problems


def turn_options(text: str) -> list[tuple[str, str]]:
    options = []
    for line in text.splitlines():
        stripped = line.strip()
        if stripped and not stripped.startswith("#"):
            name, _, value = stripped.partition("=")
            options.append((name.strip(), value.strip()))
    return options


def coturn_problems(docs: list[dict]) -> list[str]:
    """coturn on the host network of dedicated nodes in the clinics' region, with the shipped peer policy."""
    problems = []
    daemonset = find(docs, "DaemonSet", "coturn", TURN_NAMESPACE)
    spec = pod_template(daemonset)["spec"]
    if spec.get("hostNetwork") is not True:
        problems.append("coturn is not on the host network")
    terms = (
        ((spec.get("affinity") or {}).get("nodeAffinity") or {})
        .get("requiredDuringSchedulingIgnoredDuringExecution", {})
        .get("nodeSelectorTerms", [])
    )
    if not terms:
        problems.append("coturn has no required node affinity")
    for term in terms:
        expressions = {e["key"]: e for e in term.get("matchExpressions", [])}
        region = expressions.get("topology.kubernetes.io/region")
        if not region or region["operator"] != "In" or not region.get("values"):
            problems.append("a coturn node term does not pin topology.kubernetes.io/region")
        dedicated = [k for k in expressions if k != "topology.kubernetes.io/region" and "turn" in k]
        if not dedicated:
            problems.append("a coturn node term does not require the dedicated TURN node label")
        for key in dedicated:
            if not any(t.get("key") == key for t in spec.get("tolerations", [])):
                problems.append(f"coturn does not tolerate the dedicated nodes' taint {key}")
    coturn = spec["containers"][0]
    env = {e["name"]: e.get("valueFrom") or {} for e in coturn.get("env", [])}
    if env.get("HOST_IP", {}).get("fieldRef", {}).get("fieldPath") != "status.hostIP":
        problems.append("coturn does not learn its node's address (HOST_IP from status.hostIP)")
    if "listening-ip=" not in script(coturn) or "relay-ip=" not in script(coturn):
        problems.append("coturn's start script does not set listening-ip and relay-ip")
    shipped = turn_options((ROOT / "deploy" / "coturn" / "turnserver.conf").read_text())
    conf = config_map_data(docs, "coturn-config", TURN_NAMESPACE).get("turnserver.conf", "")
    ours = turn_options(conf)
    expected = [(n, TURN_OPTIONS_CHANGED.get(n, v)) for n, v in shipped if n not in TURN_OPTIONS_DROPPED]
    expected += list(TURN_OPTIONS_ADDED.items())
    if sorted(ours) != sorted(expected):
        extra = sorted(set(ours) - set(expected))
        missing = sorted(set(expected) - set(ours))
        problems.append(
            f"coturn-config differs from deploy/coturn/turnserver.conf: extra {extra}, missing {missing}"
        )
    # With the secrets Vault appends, the file passes the production checks video/turn.py applies.
    from video.turn import check_production_config

    with_secret = conf + "\nstatic-auth-secret=" + "s" * 48
    problems += [f"coturn-config: {p}" for p in check_production_config(with_secret)]
    return problems


def service_and_ingress_problems(docs: list[dict]) -> list[str]:
    """The Service reaches uvicorn; the Ingress routes the app's prefixes (with /ws/) and not /metrics."""
    problems = []
    service = find(docs, "Service", "telemed-web")
    deployment = find(docs, "Deployment", "telemed-web")
    web = pod_template(deployment)["spec"]["containers"][0]
    if service["spec"]["selector"] != deployment["spec"]["selector"]["matchLabels"]:
        problems.append("Service telemed-web does not select the web pods")
    for port in service["spec"]["ports"]:
        if http_port(web, port["targetPort"]) != 8000:
            problems.append(f"Service port {port.get('name')} does not reach uvicorn on 8000")
    ingress = find(docs, "Ingress", "telemed-web")
    if not ingress["spec"].get("tls"):
        problems.append("the Ingress has no TLS")
    paths = [p for rule in ingress["spec"]["rules"] for p in rule["http"]["paths"]]
    prefixes = {p["path"] for p in paths}
    if "/ws/" not in prefixes:
        problems.append("the Ingress does not route /ws/ (video signalling)")
    for path in paths:
        if path["backend"]["service"]["name"] != "telemed-web":
            problems.append(f"the Ingress sends {path['path']} elsewhere")
        for private in ("/metrics", "/healthz", "/readyz"):
            if private.startswith(path["path"].rstrip("/") + "/") or path["path"] in ("/", private):
                problems.append(f"the Ingress exposes {private} through {path['path']}")
    return problems


# -- tests ------------------------------------------------------------------------------------------------


def test_every_manifest_is_in_the_kustomization(documents):
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    files = {name for name, _ in documents} - {"kustomization.yaml"}
    assert set(kustomization["resources"]) == files


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_every_document_validates_against_the_kubernetes_schemas(documents, version):
    validated = 0
    for file_name, document in documents:
        key = (document.get("apiVersion"), document.get("kind"))
        if key in NOT_API_OBJECTS:
            continue
        name = f"{file_name}: {document.get('kind')} {document.get('metadata', {}).get('name')}"
        try:
            kubernetes_validate.validate(document, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            path = ".".join(str(part) for part in exc.path)
            pytest.fail(f"{name} is invalid for Kubernetes {version}: {path}: {exc.message}")
        except kubernetes_validate.SchemaNotFoundError as exc:
            pytest.fail(f"{name}: {exc.message} (a CRD needs an entry with a reason in NOT_API_OBJECTS)")
        validated += 1
    assert validated >= 20


def test_every_object_lives_in_a_telemed_namespace(docs):
    for document in api_objects(docs):
        kind, name = document["kind"], document["metadata"]["name"]
        if kind == "Namespace":
            assert name in (NAMESPACE, TURN_NAMESPACE)
            continue
        namespace = document["metadata"].get("namespace")
        # coturn (hostNetwork) lives apart; its namespace holds nothing else but a default deny.
        if name.startswith("coturn"):
            assert namespace == TURN_NAMESPACE, f"{kind} {name} is in {namespace}"
        else:
            assert namespace == NAMESPACE or (kind, name) == ("NetworkPolicy", "default-deny-all"), (
                f"{kind} {name} is in {namespace}"
            )
    labels = find(docs, "Namespace", NAMESPACE, None)["metadata"]["labels"]
    assert labels["pod-security.kubernetes.io/enforce"] == "restricted"


def test_pod_security(docs):
    assert workloads(docs), "no workloads found"
    assert pod_security_problems(docs) == []


def test_web_probes_and_command(docs):
    assert web_probe_problems(docs) == []


def test_proxy_trust(docs):
    assert proxy_trust_problems(docs) == []


def test_autoscaling_scales_out_early(docs):
    assert autoscaling_problems(docs) == []


@pytest.mark.parametrize("namespace", [NAMESPACE, TURN_NAMESPACE])
def test_namespace_denies_by_default(docs, namespace):
    assert default_deny_problems(docs, namespace) == []


def test_web_egress_is_postgres_redis_vault_and_dns_only(docs):
    assert egress_problems(docs, "telemed-web", WEB_EGRESS) == []


def test_shipper_egress_is_the_databases_vault_and_dns_only(docs):
    assert egress_problems(docs, "telemed-audit-shipper", SHIPPER_EGRESS) == []


def test_ingress_only_from_the_ingress_controller(docs):
    assert ingress_problems(docs) == []


def test_secrets_come_from_vault(docs):
    assert vault_problems(docs) == []


def test_configuration(docs):
    assert config_problems(docs) == []


def test_coturn(docs):
    assert coturn_problems(docs) == []


def test_service_and_ingress(docs):
    assert service_and_ingress_problems(docs) == []


# Each breaks a copy of the manifests in one way that a reviewer would reject; the named check must notice.
def _container(docs, kind, name, namespace=NAMESPACE):
    return pod_template(find(docs, kind, name, namespace))["spec"]["containers"][0]


def _web_policy(docs):
    return find(docs, "NetworkPolicy", "telemed-web")


def _coturn_node_terms(docs):
    affinity = pod_template(find(docs, "DaemonSet", "coturn", TURN_NAMESPACE))["spec"]["affinity"]
    return affinity["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]


def _without_line(text: str, line: str) -> str:
    assert line in text
    return text.replace(line, "")


REGRESSIONS = {
    "writable root filesystem": (
        pod_security_problems,
        lambda d: _container(d, "Deployment", "telemed-web")["securityContext"].pop("readOnlyRootFilesystem"),
    ),
    "privilege escalation": (
        pod_security_problems,
        lambda d: _container(d, "Deployment", "telemed-audit-shipper")["securityContext"].update(
            allowPrivilegeEscalation=True
        ),
    ),
    "root user": (
        pod_security_problems,
        lambda d: _container(d, "DaemonSet", "coturn", TURN_NAMESPACE)["securityContext"].update(runAsUser=0),
    ),
    "no memory limit": (
        pod_security_problems,
        lambda d: _container(d, "Deployment", "telemed-web")["resources"]["limits"].pop("memory"),
    ),
    "image by tag": (
        pod_security_problems,
        lambda d: _container(d, "Deployment", "telemed-web").update(image="registry.example.com/app:latest"),
    ),
    "readiness on /healthz": (
        web_probe_problems,
        lambda d: _container(d, "Deployment", "telemed-web")["readinessProbe"]["httpGet"].update(
            path="/healthz"
        ),
    ),
    "probe with the pod IP as Host": (
        web_probe_problems,
        lambda d: _container(d, "Deployment", "telemed-web")["livenessProbe"]["httpGet"].pop("httpHeaders"),
    ),
    "uvicorn trusts every peer": (
        proxy_trust_problems,
        lambda d: _container(d, "Deployment", "telemed-web").update(
            args=[_container(d, "Deployment", "telemed-web")["args"][0].replace('"$TRUSTED_PROXIES"', "'*'")]
        ),
    ),
    "TRUSTED_PROXIES is everyone": (
        proxy_trust_problems,
        lambda d: find(d, "ConfigMap", "telemed-config")["data"].update(TRUSTED_PROXIES="*"),
    ),
    "TRUSTED_PROXIES is the internet": (
        proxy_trust_problems,
        lambda d: find(d, "ConfigMap", "telemed-config")["data"].update(
            TRUSTED_PROXIES="0.0.0.0/1,128.0.0.0/1"
        ),
    ),
    "uvicorn's own FORWARDED_ALLOW_IPS": (
        proxy_trust_problems,
        lambda d: find(d, "ConfigMap", "telemed-config")["data"].update(FORWARDED_ALLOW_IPS="*"),
    ),
    "web without --proxy-headers": (
        proxy_trust_problems,
        lambda d: _container(d, "Deployment", "telemed-web").update(
            args=[_container(d, "Deployment", "telemed-web")["args"][0].replace("--proxy-headers ", "")]
        ),
    ),
    "HPA target at saturation": (
        autoscaling_problems,
        lambda d: find(d, "HorizontalPodAutoscaler", "telemed-web")["spec"]["metrics"][0]["resource"][
            "target"
        ].update(averageUtilization=90),
    ),
    "one replica": (
        autoscaling_problems,
        lambda d: find(d, "HorizontalPodAutoscaler", "telemed-web")["spec"].update(minReplicas=1),
    ),
    "no default deny": (
        lambda d: default_deny_problems(d, NAMESPACE),
        lambda d: find(d, "NetworkPolicy", "default-deny-all")["spec"].update(egress=[{}]),
    ),
    "web egress to HTTPS": (
        lambda d: egress_problems(d, "telemed-web", WEB_EGRESS),
        lambda d: _web_policy(d)["spec"]["egress"].append(
            {"to": [{"ipBlock": {"cidr": "0.0.0.0/0"}}], "ports": [{"protocol": "TCP", "port": 443}]}
        ),
    ),
    "web egress anywhere": (
        lambda d: egress_problems(d, "telemed-web", WEB_EGRESS),
        lambda d: _web_policy(d)["spec"]["egress"][1].pop("to"),
    ),
    "web ingress from any pod": (
        ingress_problems,
        lambda d: _web_policy(d)["spec"]["ingress"][0]["from"][0].pop("namespaceSelector"),
    ),
    "writer URL in the web tier": (
        vault_problems,
        lambda d: pod_template(find(d, "Deployment", "telemed-web"))["metadata"]["annotations"].update(
            {"vault.hashicorp.com/agent-inject-template-web.env": "export AUDIT_DATABASE_URL='x'"}
        ),
    ),
    "secret in the ConfigMap": (
        vault_problems,
        lambda d: find(d, "ConfigMap", "telemed-config")["data"].update(DJANGO_SECRET_KEY="x" * 50),
    ),
    "no transaction pooler setting": (
        config_problems,
        lambda d: find(d, "ConfigMap", "telemed-config")["data"].pop("DATABASE_TRANSACTION_POOLER"),
    ),
    "web without a connection pool": (
        config_problems,
        lambda d: pod_template(find(d, "Deployment", "telemed-web"))["spec"]["containers"][0].pop("env"),
    ),
    "coturn off the host network": (
        coturn_problems,
        lambda d: pod_template(find(d, "DaemonSet", "coturn", TURN_NAMESPACE))["spec"].pop("hostNetwork"),
    ),
    "coturn in any region": (
        coturn_problems,
        lambda d: _coturn_node_terms(d)[0]["matchExpressions"].pop(0),
    ),
    "coturn relays to 10/8": (
        coturn_problems,
        lambda d: find(d, "ConfigMap", "coturn-config", TURN_NAMESPACE)["data"].update(
            {
                "turnserver.conf": _without_line(
                    config_map_data(d, "coturn-config", TURN_NAMESPACE)["turnserver.conf"],
                    "denied-peer-ip=10.0.0.0-10.255.255.255\n",
                )
            }
        ),
    ),
    "/metrics exposed": (
        service_and_ingress_problems,
        lambda d: find(d, "Ingress", "telemed-web")["spec"]["rules"][0]["http"]["paths"][0].update(path="/"),
    ),
}


@pytest.mark.parametrize("regression", sorted(REGRESSIONS))
def test_checks_catch_regressions(docs, regression):
    check, mutate = REGRESSIONS[regression]
    assert check(docs) == [], "the unmodified manifests must pass this check"
    broken = copy.deepcopy(docs)
    mutate(broken)
    assert check(broken), f"the check did not notice: {regression}"


# -- checkov -----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def checkov_report() -> dict:
    require_tool(CHECKOV.exists(), f"checkov is not installed at {CHECKOV} (make .venv-checkov/bin/checkov)")
    # --skip-download: no call to Prisma Cloud for guidelines (offline, and nothing leaves the machine).
    command = [str(CHECKOV), "-d", str(K8S), "--framework", "kubernetes", "-o", "json", "--compact"]
    result = subprocess.run(
        [*command, "--skip-download"],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ROOT,
        env={**os.environ, "BC_SKIP_MAPPING": "TRUE"},
    )
    # Exit status 1 means failed checks: the assertions below name them.
    assert result.returncode in (0, 1), f"checkov failed to run:\n{result.stderr[-3000:]}"
    report = json.loads(result.stdout)
    reports = report if isinstance(report, list) else [report]
    assert [r["check_type"] for r in reports] == ["kubernetes"]
    return reports[0]


def test_checkov_finds_nothing(checkov_report):
    failed = [
        f"{c['check_id']} {c['resource']} ({c['file_path']}): {c['check_name']}"
        for c in checkov_report["results"].get("failed_checks", [])
    ]
    assert failed == []
    assert checkov_report["summary"]["parsing_errors"] == 0
    # It did scan the workloads (a parsing change that silently drops them would pass with nothing failed).
    scanned = {c["resource"] for c in checkov_report["results"]["passed_checks"]}
    for resource in (
        "Deployment.telemed.telemed-web",
        "Deployment.telemed.telemed-audit-shipper",
        "DaemonSet.telemed-turn.coturn",
    ):
        assert resource in scanned


def test_every_checkov_skip_is_justified(checkov_report, docs):
    for check in checkov_report["results"].get("skipped_checks", []):
        reason = (check.get("check_result") or {}).get("suppress_comment") or ""
        assert len(reason.split()) >= 8, (
            f"{check['check_id']} on {check['resource']} is skipped without a reason"
        )
    # Every skip annotation in the manifests names one check and says why.
    for document in docs:
        for key, value in (document.get("metadata", {}).get("annotations") or {}).items():
            if key.startswith("checkov.io/skip"):
                check_id, _, reason = value.partition("=")
                assert re.fullmatch(r"CKV2?_K8S_\d+", check_id), value
                assert len(reason.split()) >= 8, f"{check_id} is skipped without a reason"
