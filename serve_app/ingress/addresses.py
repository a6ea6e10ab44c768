"""Where a request comes from, for the two decisions that depend on it: whether a deployment without keys may
serve it (its own machine only, unless anonymous access is asked for), and which address per-address limits
count (failed authentications, anonymous callers).

A reverse proxy or a mesh sidecar on the same host connects from loopback for every client it forwards (an
Istio sidecar from 127.0.0.6), so an address alone proves nothing: a request is local only when its peer is
exactly 127.0.0.1 or ::1 and it carries none of the headers a proxy adds. Forwarded addresses are believed
only from ``access.trusted_proxies`` (none by default) and read here, not by uvicorn: Serve's proxy runs
uvicorn, which would otherwise rewrite the peer from X-Forwarded-For (the images set FORWARDED_ALLOW_IPS empty).
Hand-written because the rule (rightmost address that is not a trusted proxy) is a few lines and uvicorn keeps
its own implementation private.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

from starlette.datastructures import Headers
from starlette.types import Scope

LOCAL_PEERS = frozenset({"127.0.0.1", "::1"})
PROXY_HEADERS = frozenset({"forwarded", "x-real-ip", "via"})  # and every X-Forwarded-*


def peer(scope: Scope) -> str:
    """The address the connection came from, as the server saw it."""
    client = scope.get("client")
    return str(client[0]) if client else "unknown"


def forwarded(headers: Headers) -> bool:
    """Whether a proxy (or a client pretending to be one) says it forwarded the request."""
    return any(name in PROXY_HEADERS or name.startswith("x-forwarded-") for name in headers.keys())


def is_local(scope: Scope, headers: Headers) -> bool:
    """A request from this machine itself: peer exactly 127.0.0.1 or ::1, and no proxy in between."""
    return peer(scope) in LOCAL_PEERS and not forwarded(headers)


class Addresses:
    """The client address that per-address limits count: the peer's, unless the peer is a trusted proxy."""

    def __init__(self, trusted_proxies: Iterable[str]) -> None:
        self._trusted = [ipaddress.ip_network(network, strict=False) for network in trusted_proxies]

    def client(self, scope: Scope, headers: Headers) -> str:
        """The peer; behind trusted proxies, the rightmost X-Forwarded-For address that is not one of them."""
        address = peer(scope)
        if not self._is_trusted(address):
            return address
        hops = [hop.strip() for hop in headers.get("x-forwarded-for", "").split(",") if hop.strip()]
        for hop in reversed(hops):
            address = hop
            if not self._is_trusted(hop):
                break
        return address

    def _is_trusted(self, address: str) -> bool:
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        return any(ip in network for network in self._trusted)
