"""``POST /invocations`` (SageMaker's): one route that dispatches on the body, as vLLM does.

The candidates are tried in vLLM's order and the first request schema the body fits is served by its route:
embeddings (embedding models), classify (classifiers), rerank and score (models with the scoring API), then
pooling. A body no candidate accepts is a 400 naming them.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

import pydantic
from fastapi import APIRouter, Body, Request
from fastapi.responses import Response

from rlhf_rewards.server.errors import APIError, describe_validation_errors
from rlhf_rewards.server.protocol import (
    ERROR_RESPONSES,
    ClassifyRequest,
    EmbeddingRequest,
    PoolingRequest,
    RerankRequest,
    ScoreRequest,
    log_ignored_fields,
)
from rlhf_rewards.server.routes import classify, embeddings, pooling, score
from rlhf_rewards.server.routes.common import engine_of

router = APIRouter(tags=["scoring"])
Candidate = tuple[type[pydantic.BaseModel], Callable[[Any, Request], Awaitable[Response]]]


def candidates(request: Request) -> list[Candidate]:
    """The (request schema, route) pairs the served model offers, in vLLM's order."""
    engine = engine_of(request)
    task = engine.default_task
    found: list[Candidate] = []
    if task == "embed":
        found.append((EmbeddingRequest, embeddings.embeddings))
    if task == "classify":
        found.append((ClassifyRequest, classify.classify))
    if score.scoring_mode(engine) is not None:
        found += [(RerankRequest, score.rerank), (ScoreRequest, score.score)]
    found.append((PoolingRequest, pooling.pooling))
    return found


@router.post(
    "/invocations",
    responses={
        **ERROR_RESPONSES,
        200: {
            "description": "The answer of the route the body was dispatched to (/v1/embeddings, /classify, "
            "/rerank, /score or /pooling).",
            "content": {
                "application/json": {"schema": {"type": "object"}},
                "application/octet-stream": {"schema": {"type": "string"}},
            },
        },
    },
)
async def invocations(
    request: Request, body: Any = Body(default=None, description="A body of one of the dispatched routes.")
) -> Response:
    """Serve the body with the first route whose request schema it fits (vLLM's SageMaker dispatch)."""
    if not isinstance(body, dict):
        raise APIError(400, "The request body must be a JSON object.")
    tried = candidates(request)
    last: pydantic.ValidationError | None = None
    for schema, route in tried:
        try:
            parsed = schema.model_validate(body, context={"quiet": True})  # only the chosen schema logs
        except pydantic.ValidationError as exc:
            last = exc
            continue
        log_ignored_fields(schema, body)
        return await route(parsed, request)
    names = [schema.__name__ for schema, _ in tried]
    detail = ""
    if last is not None:
        detail, _ = describe_validation_errors(
            json.loads(last.json(include_url=False, include_context=False)), "application/json"
        )
        detail = f" As /pooling: {detail}"
    raise APIError(400, f"Cannot find suitable handler for request. Expected one of: {names}.{detail}")


__all__ = ["candidates", "router"]
