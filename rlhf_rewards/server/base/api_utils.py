"""Helpers every route family shares: the served model of a request, request params, response ids, usage, and
the strict JSON encoder."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Mapping
from typing import Any

from fastapi import Depends, Request
from fastapi.responses import JSONResponse

from rlhf_rewards.contract import params_from_fields
from rlhf_rewards.errors import RequestError
from rlhf_rewards.outputs import PoolingRequestOutput
from rlhf_rewards.pooling.params import PoolingParams
from rlhf_rewards.server.base.protocol import ResponseModel, UsageInfo
from rlhf_rewards.server.base.serving import ServedModel
from rlhf_rewards.server.errors import APIError


def served_model(request: Request) -> ServedModel:
    """The app's :class:`~rlhf_rewards.server.base.serving.ServedModel`."""
    return request.app.state.served


def offered_only(check: Callable[[ServedModel], None]) -> Any:
    """A route dependency that runs ``check`` (a family's "does the served model offer this route") before the
    body is read, as vLLM, which does not register a route the model does not offer: a client probing the
    route gets the check's ``{"detail": "Not Found"}`` whatever the body."""

    def dependency(request: Request) -> None:
        check(served_model(request))

    return Depends(dependency)


def make_params(
    source: Mapping[str, Any] | object, *, truncate_prompt_tokens: int | None = None
) -> PoolingParams:
    """``PoolingParams`` from a request's pooling fields (a request model or a mapping; see
    :func:`~rlhf_rewards.contract.params_from_fields`); a bad value is a 400 on the field it names."""
    try:
        return params_from_fields(source, truncate_prompt_tokens=truncate_prompt_tokens)
    except RequestError as exc:
        # vLLM names no param for a truncation to nothing (its "The decoder prompt cannot be empty").
        param = None if exc.field == "truncate_prompt_tokens" else exc.param
        raise APIError.from_request_error(exc, param=param) from None
    except ValueError as exc:
        raise APIError(400, str(exc)) from None


def response_id(prefix: str, request_id: str | None, request: Request | None = None) -> str:
    """``<prefix>-<id>`` as vLLM builds it: the ``X-Request-Id`` header, else the body's ``request_id``, else a
    random hex id."""
    header = request.headers.get("x-request-id") if request is not None else None
    return f"{prefix}-{(header[:256] if header else None) or request_id or uuid.uuid4().hex}"


def usage(outputs: list[PoolingRequestOutput]) -> UsageInfo:
    """vLLM's ``usage`` block."""
    n = sum(len(o.prompt_token_ids) for o in outputs)
    return UsageInfo(prompt_tokens=n, total_tokens=n)


def json_response(
    model: ResponseModel, status_code: int = 200, headers: dict[str, str] | None = None
) -> JSONResponse:
    """``model`` as a JSON response; NaN/inf can never be encoded (they are reported as item errors instead)."""
    return _StrictJSONResponse(model.model_dump(mode="json"), status_code=status_code, headers=headers)


class _StrictJSONResponse(JSONResponse):
    def render(self, content: Any) -> bytes:
        # pydantic's JSON mode keeps NaN/inf as floats; allow_nan=False turns them into a server error
        # rather than the invalid JSON tokens ``NaN``/``Infinity``.
        return json.dumps(content, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode("utf-8")


__all__ = ["json_response", "make_params", "offered_only", "response_id", "served_model", "usage"]
