"""Helpers shared by the scoring routes."""

from __future__ import annotations

from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse

from rlhf_rewards.outputs import PoolingRequestOutput
from rlhf_rewards.pooling.params import PoolingParams
from rlhf_rewards.server.errors import APIError
from rlhf_rewards.server.service import ServingEngine


def engine_of(request: Request) -> ServingEngine:
    """The app's :class:`ServingEngine`."""
    return request.app.state.engine


def make_params(**fields: Any) -> PoolingParams:
    """``PoolingParams`` from request fields; a bad value is a 400 naming the field."""
    try:
        return PoolingParams(**fields)
    except ValueError as exc:
        message = str(exc).replace("pooler_config.", "")
        param = next((name for name in fields if name in message), None)
        raise APIError(400, message, param=param) from None


def usage(outputs: list[PoolingRequestOutput]) -> dict[str, int]:
    """vLLM's ``usage`` block."""
    n = sum(len(o.prompt_token_ids) for o in outputs)
    return {"prompt_tokens": n, "total_tokens": n, "completion_tokens": 0}


def json_response(content: dict[str, Any]) -> JSONResponse:
    """A JSON response; NaN/inf can never be encoded (they are reported as item errors instead)."""
    return _StrictJSONResponse(content)


class _StrictJSONResponse(JSONResponse):
    def render(self, content: Any) -> bytes:
        import json

        return json.dumps(content, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode("utf-8")
