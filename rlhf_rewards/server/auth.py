"""API-key check: ``Authorization: Bearer KEY`` on every route but ``/health`` (vLLM's ``--api-key``).

The key is compared with :func:`hmac.compare_digest` (constant time) and never logged.

**Key-less clients.** OpenRLHF's and verl's reward clients cannot send an ``Authorization`` header. With
``--allow-keyless-from 127.0.0.1/32,10.0.0.0/8`` a request WITHOUT any ``Authorization`` header is let in
when its peer address (the TCP connection's, never a forwarded-for header) is in one of those networks;
everything else still needs the key, and a wrong key is refused from anywhere. Refused by default (no
networks). Behind a reverse proxy the peer is the proxy: list only networks no untrusted client shares.
"""

from __future__ import annotations

import hmac
import ipaddress
from collections.abc import Iterable
from typing import Any

from rlhf_rewards.server.errors import error_bytes

#: Routes open without a key (load balancers and orchestrators probe them).
PUBLIC_PATHS = frozenset({"/health", "/ping"})  # health probes (vLLM and SageMaker leave /ping open)
API_KEY_ENV = "RLHF_REWARDS_API_KEY"


def key_matches(header: str | None, api_key: str) -> bool:
    """Whether an ``Authorization`` header value carries ``api_key`` as a bearer token."""
    if not header:
        return False
    scheme, _, token = header.strip().partition(" ")
    if scheme.lower() != "bearer":
        return False
    return hmac.compare_digest(token.strip().encode("utf-8", "surrogateescape"), api_key.encode("utf-8"))


Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_networks(spec: str | Iterable[str] | None) -> tuple[Network, ...]:
    """Networks of ``--allow-keyless-from`` (comma-separated CIDRs or addresses); ``ValueError`` names a bad one."""
    if spec is None:
        return ()
    items = spec.split(",") if isinstance(spec, str) else list(spec)
    networks = []
    for item in (i.strip() for i in items):
        if not item:
            continue
        try:
            networks.append(ipaddress.ip_network(item, strict=True))
        except ValueError as exc:
            raise ValueError(
                f"--allow-keyless-from: {item!r} is not a network (CIDR such as 127.0.0.1/32 or "
                f"10.0.0.0/8, host bits zero): {exc}"
            ) from None
    return tuple(networks)


def peer_in(scope: dict[str, Any], networks: Iterable[Network]) -> bool:
    """Whether the connection's peer address (``scope["client"]``) is in one of ``networks``."""
    client = scope.get("client")
    if not client:
        return False
    try:
        address = ipaddress.ip_address(client[0])
    except ValueError:
        return False  # a unix socket or an unparsable peer is never trusted
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return any(address.version == net.version and address in net for net in networks)


def allow_keyless_from(app: Any, networks: str | Iterable[str] | None) -> tuple[Network, ...]:
    """Let requests without an ``Authorization`` header in from ``networks`` (see the module docstring).

    Kept on ``app.state.keyless_networks``, which :class:`AuthMiddleware` reads; returns the parsed networks.
    """
    parsed = parse_networks(networks)
    app.state.keyless_networks = parsed
    return parsed


class AuthMiddleware:
    """Pure ASGI middleware: answers 401 before the body is read when the key is missing or wrong.

    Args:
        app: The wrapped ASGI app.
        api_key: The key; ``None`` or empty turns the check off.
        keyless_networks: Peers allowed without any ``Authorization`` header; default: those set with
            :func:`allow_keyless_from` on the application (none unless set).
    """

    def __init__(
        self, app: Any, api_key: str | None = None, keyless_networks: Iterable[str] | str | None = None
    ) -> None:
        self.app = app
        self.api_key = api_key or None
        self.keyless_networks = parse_networks(keyless_networks) if keyless_networks is not None else None

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if self.api_key is None or scope["type"] != "http" or scope["path"] in PUBLIC_PATHS:
            await self.app(scope, receive, send)
            return
        header = None
        for name, value in scope.get("headers", ()):
            if name == b"authorization":
                header = value.decode("latin-1")
                break
        if key_matches(header, self.api_key) or (header is None and peer_in(scope, self._keyless(scope))):
            await self.app(scope, receive, send)
            return
        body = error_bytes(401, "Missing or wrong API key: send the header 'Authorization: Bearer <key>'.")
        await send(
            {
                "type": "http.response.start",
                "status": 401,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"www-authenticate", b"Bearer"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})

    def _keyless(self, scope: dict[str, Any]) -> tuple[Network, ...]:
        if self.keyless_networks is not None:
            return self.keyless_networks
        app = scope.get("app")  # Starlette puts itself in the scope before its middleware runs
        return getattr(getattr(app, "state", None), "keyless_networks", ()) or ()


__all__ = [
    "API_KEY_ENV",
    "AuthMiddleware",
    "PUBLIC_PATHS",
    "allow_keyless_from",
    "key_matches",
    "parse_networks",
    "peer_in",
]
