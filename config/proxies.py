"""Which peers may tell the server a request's client address and scheme: the TRUSTED_PROXIES setting.

`X-Forwarded-For` and `X-Forwarded-Proto` are whatever the sender wrote, unless the sender is a proxy that
overwrites them. The client address the audit log records (every PHI read, sign-in, failure and lockout) and
the scheme that decides HSTS and the HTTPS redirect come from the ASGI server's connection scope, which uvicorn
rewrites from those headers only when the connecting peer is in `--forwarded-allow-ips`. TRUSTED_PROXIES is
that list, and nothing else in the application reads the headers (Django's SECURE_PROXY_SSL_HEADER stays
unset: it would believe X-Forwarded-Proto from any peer).

- Empty (the default, `make run`): uvicorn runs with `--no-proxy-headers`. Its own default, without that flag,
  would trust 127.0.0.1, i.e. every local process and any client of a server listening on loopback.
- Set: comma-separated IP addresses or CIDR networks of the proxies in front, and only them (the loopback
  cluster's nginx address, the ingress controller pods' CIDR). Entries must not cover addresses clients
  connect from: uvicorn takes the right-most X-Forwarded-For entry that is not a trusted proxy.

Anything that is not an address or a network, `*`, or a network of every address, refuses to start.
Imported by config.settings and by the launchers (devstack/launcher.py, devstack/cluster.py); no Django needed.
"""

from __future__ import annotations

import ipaddress

from django.core.exceptions import ImproperlyConfigured

VARIABLE = "TRUSTED_PROXIES"


def parse_trusted_proxies(value: str, name: str = VARIABLE) -> list[str]:
    """The normalised entries of a TRUSTED_PROXIES value; ImproperlyConfigured on anything else."""
    proxies: list[str] = []
    for item in (part.strip() for part in value.split(",")):
        if not item:
            continue
        if item == "*":
            raise ImproperlyConfigured(
                f"{name} may not be '*': that trusts X-Forwarded-For from every client. List the proxies' "
                "addresses or networks."
            )
        try:
            network = ipaddress.ip_network(item, strict=True)
        except ValueError as exc:
            raise ImproperlyConfigured(
                f"{name}: {item!r} is not an IP address or a CIDR network with no host bits set "
                "(comma-separated, e.g. 10.244.0.0/16,127.0.0.4)"
            ) from exc
        if network.prefixlen == 0:
            raise ImproperlyConfigured(f"{name} may not contain {item!r}: it trusts every address")
        proxies.append(str(network) if "/" in item else str(network.network_address))
    return proxies


def uvicorn_proxy_arguments(proxies: list[str]) -> list[str]:
    """uvicorn's options for these proxies: forwarded headers from them only, or from no one at all."""
    if not proxies:
        return ["--no-proxy-headers"]
    return ["--proxy-headers", f"--forwarded-allow-ips={','.join(proxies)}"]
