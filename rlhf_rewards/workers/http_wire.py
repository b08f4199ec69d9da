"""What a ``rlhf-rewards serve`` answer means to the HTTP client (:class:`~rlhf_rewards.workers.remote.RemoteWorker`).

:func:`classify_status` (retry, busy, too large, fatal), :func:`parse_retry_after`, :func:`error_message`
(vLLM's, older servers' and FastAPI's error bodies), :func:`client_error` (the request's own fault, rebuilt
from the server's ``RequestError`` header when it sends one), :func:`answer_items` and :func:`pooling_output`
(the items of an answer, one as the engine's output), and :func:`normalize_url`.
"""

from __future__ import annotations

import email.utils
import json
import time
from typing import Any

import torch

from rlhf_rewards.errors import ERROR_HEADER, RequestError
from rlhf_rewards.outputs import PoolingOutput, PoolingRequestOutput


class RemoteWorkerError(RuntimeError):
    """A request could not be served by any URL within the retry budget (or got an unexpected answer)."""


class TooLarge(Exception):
    """413: the request must be split."""


#: Statuses worth sending again (elsewhere): the server, not the request, is at fault or busy.
RETRY_STATUSES = frozenset({408, 500, 502, 503, 504, 429})
#: Statuses that mean "busy, come back later" (honour ``Retry-After``), not "broken".
BUSY_STATUSES = frozenset({429, 503})


def classify_status(status: int) -> str:
    """``"ok"``, ``"busy"`` (429/503), ``"retry"`` (other transient 5xx/408), ``"too_large"`` (413) or ``"fatal"``."""
    if 200 <= status < 300:
        return "ok"
    if status in BUSY_STATUSES:
        return "busy"
    if status in RETRY_STATUSES:
        return "retry"
    if status == 413:
        return "too_large"
    return "fatal"


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds from a ``Retry-After`` header (delta-seconds or an HTTP date); ``None`` if absent or malformed."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def pooling_output(request_id: str, item: dict[str, Any]) -> PoolingRequestOutput:
    """One ``data`` item of a ``/pooling`` answer as the engine's output (NaN data when it has an error)."""
    shape = tuple(item.get("shape") or ())
    error = item.get("error")
    if error is not None or item.get("data") is None:
        tensor = torch.full(shape or (1,), float("nan"))  # never a usable number, as in LLM.encode
        error = error or "the server returned no data for this item"
    else:
        tensor = torch.tensor(item["data"], dtype=torch.float32)
        if shape:
            tensor = tensor.reshape(shape)
    return PoolingRequestOutput(
        request_id=request_id,
        outputs=PoolingOutput(data=tensor),
        prompt_token_ids=list(item.get("prompt_token_ids") or []),
        error=error,
    )


def normalize_url(url: str) -> str:
    """``url`` stripped of white space and a trailing slash, ``http://`` when it names no scheme."""
    if not isinstance(url, str) or not url.strip():
        raise ValueError(f"Each URL must be a non-empty string, got {url!r}.")
    url = url.strip().rstrip("/")
    if "://" not in url:
        url = "http://" + url
    if not url.startswith(("http://", "https://")):
        raise ValueError(f"URL {url!r} must use http:// or https://.")
    return url


def error_message(response: Any) -> str:
    """The message of an error answer, whichever of the usual body shapes it has."""
    try:
        body = response.json()
    except ValueError:
        return (response.text or "")[:500] or f"HTTP {response.status_code}"
    # vLLM's shape {"error": {"message", ...}}; the flat {"message"} of older servers; FastAPI's {"detail"}.
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict) and isinstance(error.get("message"), str):
        return error["message"]
    for key in ("message", "detail"):
        if isinstance(body, dict) and isinstance(body.get(key), str):
            return body[key]
    return str(body)[:500]


def client_error(response: Any, message: str, url: str) -> Exception:
    """The error of a 4xx that is the request's fault (never retried)."""
    status = response.status_code
    if status in (401, 403):
        return PermissionError(f"{url}: {message}")
    structured = response.headers.get(ERROR_HEADER)
    if structured:
        try:
            return RequestError.from_dict(json.loads(structured))
        except (ValueError, KeyError, TypeError):
            pass  # a malformed header: fall back to the message
    if status in (400, 404, 422):
        return ValueError(message)  # the request's fault, like the engine's ValueError
    return RemoteWorkerError(f"{url} answered HTTP {status}: {message}")


def answer_items(answer: dict[str, Any], count: int, unit: str, kind: str = "") -> list[dict[str, Any]]:
    """The ``data`` items of an answer to a request of ``count`` prompts or items: exactly one per entry."""
    data = answer.get("data")
    if not isinstance(data, list) or len(data) != count:
        raise RemoteWorkerError(
            f"The server answered {len(data) if isinstance(data, list) else 'no'} items "
            f"for a {kind}request of {count} {unit}."
        )
    return data


__all__ = [
    "BUSY_STATUSES",
    "RETRY_STATUSES",
    "RemoteWorkerError",
    "TooLarge",
    "answer_items",
    "client_error",
    "classify_status",
    "error_message",
    "normalize_url",
    "parse_retry_after",
    "pooling_output",
]
