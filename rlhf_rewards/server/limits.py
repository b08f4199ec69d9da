"""The server's request limits (:class:`ServerLimits`) and the admission control that applies them before a
request reaches a route: body size (413) and draining on shutdown (503)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from rlhf_rewards.server.errors import error_bytes

_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})


async def _answer(
    send: Any, status: int, message: str, headers: list[tuple[bytes, bytes]] | None = None
) -> None:
    body = error_bytes(status, message)
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
                *(headers or []),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


@dataclass
class ServerLimits:
    """Limits that protect the server from oversized or abusive requests.

    Args:
        max_body_bytes: Largest request body (413 above).
        max_client_batch_size: Most prompts in one request (413 above).
        max_queue_size: Most prompts waiting for the engine (503 + Retry-After above).
        max_batch_tokens: Token budget of one merged engine call.
        batch_wait_s: Longest delay of an engine call while more requests are arriving, so they join it
            (see :mod:`~rlhf_rewards.server.batcher`); ``0`` turns it off. An idle server never waits.
        trust_request_chat_template: Accept a ``chat_template`` sent in a request (it runs as Jinja).
        chat_template: The server's chat template (``--chat-template``), used when a request sends none;
            ``None``: the tokenizer's.
    """

    max_body_bytes: int = 32 * 1024 * 1024
    max_client_batch_size: int = 1024
    max_queue_size: int = 8192
    max_batch_tokens: int = 65536
    batch_wait_s: float = 0.05
    trust_request_chat_template: bool = False
    chat_template: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """Public limits (sent to clients in ``/v1/model_info``)."""
        return {
            "max_body_bytes": self.max_body_bytes,
            "max_client_batch_size": self.max_client_batch_size,
            "max_queue_size": self.max_queue_size,
        }


class LimitsMiddleware:
    """Pure ASGI middleware enforcing ``--max-body-bytes`` and refusing new work while draining.

    The body is read here (at most ``max_body_bytes``) and replayed to the app, so a chunked upload cannot
    get past the limit either.

    Args:
        app: The wrapped ASGI app.
        max_body_bytes: Largest accepted body.
        is_draining: Returns True once shutdown began; POST requests then get 503 + ``Retry-After``.
    """

    def __init__(self, app: Any, max_body_bytes: int, is_draining: Any = None) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.is_draining = is_draining or (lambda: False)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["method"] not in _BODY_METHODS:
            await self.app(scope, receive, send)
            return
        if self.is_draining():
            await _answer(
                send,
                503,
                "The server is shutting down; send this request to another server.",
                [(b"retry-after", b"1")],
            )
            return
        limit = self.max_body_bytes
        for name, value in scope.get("headers", ()):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    await _answer(send, 400, "The Content-Length header is not an integer.")
                    return
                if declared > limit:
                    await _answer(
                        send,
                        413,
                        f"The request body has {declared} bytes, over --max-body-bytes={limit}; "
                        "split the request.",
                    )
                    return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                await _answer(
                    send, 413, f"The request body is over --max-body-bytes={limit} bytes; split the request."
                )
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        sent = False

        async def replay() -> dict[str, Any]:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


__all__ = ["LimitsMiddleware", "ServerLimits"]
