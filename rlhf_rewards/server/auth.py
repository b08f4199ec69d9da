"""API-key check: ``Authorization: Bearer KEY`` on every route but ``/health`` (vLLM's ``--api-key``).

The key is compared with :func:`hmac.compare_digest` (constant time) and never logged.
"""

from __future__ import annotations

import hmac
from typing import Any

from rlhf_rewards.server.errors import error_bytes

#: Routes open without a key (load balancers and orchestrators probe them).
PUBLIC_PATHS = frozenset({"/health"})
API_KEY_ENV = "RLHF_REWARDS_API_KEY"


def key_matches(header: str | None, api_key: str) -> bool:
    """Whether an ``Authorization`` header value carries ``api_key`` as a bearer token."""
    if not header:
        return False
    scheme, _, token = header.strip().partition(" ")
    if scheme.lower() != "bearer":
        return False
    return hmac.compare_digest(token.strip().encode("utf-8", "surrogateescape"), api_key.encode("utf-8"))


class AuthMiddleware:
    """Pure ASGI middleware: answers 401 before the body is read when the key is missing or wrong.

    Args:
        app: The wrapped ASGI app.
        api_key: The key; ``None`` or empty turns the check off.
    """

    def __init__(self, app: Any, api_key: str | None = None) -> None:
        self.app = app
        self.api_key = api_key or None

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if self.api_key is None or scope["type"] != "http" or scope["path"] in PUBLIC_PATHS:
            await self.app(scope, receive, send)
            return
        header = None
        for name, value in scope.get("headers", ()):
            if name == b"authorization":
                header = value.decode("latin-1")
                break
        if key_matches(header, self.api_key):
            await self.app(scope, receive, send)
            return
        body = error_bytes(401, "Missing or wrong API key: send the header 'Authorization: Bearer <key>'.")
        await send({"type": "http.response.start", "status": 401,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                                (b"www-authenticate", b"Bearer")]})
        await send({"type": "http.response.body", "body": body})


__all__ = ["API_KEY_ENV", "AuthMiddleware", "PUBLIC_PATHS", "key_matches"]
