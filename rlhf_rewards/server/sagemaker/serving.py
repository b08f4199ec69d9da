"""``POST /invocations`` (SageMaker's): one route that dispatches on the body, as vLLM does.

The candidates are tried in vLLM's order and the first request schema the body fits is served by its family:
embeddings (embedding models), classify (classifiers), rerank and score (models with the scoring API), then
pooling. A body no candidate accepts is a 400 naming them.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

import pydantic
from fastapi import Request
from fastapi.responses import Response

from rlhf_rewards.server.base.protocol import log_ignored_fields
from rlhf_rewards.server.base.serving import ServedModel
from rlhf_rewards.server.classify.protocol import ClassifyRequest
from rlhf_rewards.server.classify.serving import create_classify
from rlhf_rewards.server.embed.protocol import EmbeddingRequest
from rlhf_rewards.server.embed.serving import create_embedding
from rlhf_rewards.server.errors import APIError, describe_validation_errors
from rlhf_rewards.server.pooling.protocol import PoolingRequest
from rlhf_rewards.server.pooling.serving import create_pooling
from rlhf_rewards.server.score.protocol import RerankRequest, ScoreRequest
from rlhf_rewards.server.score.serving import create_rerank, create_score, scoring_kind

Candidate = tuple[type[pydantic.BaseModel], Callable[[ServedModel, Any, Request], Awaitable[Response]]]


def candidates(served: ServedModel) -> list[Candidate]:
    """The (request schema, serving) pairs the served model offers, in vLLM's order."""
    task = served.default_task
    found: list[Candidate] = []
    if task == "embed":
        found.append((EmbeddingRequest, create_embedding))
    if task == "classify":
        found.append((ClassifyRequest, create_classify))
    if scoring_kind(served) is not None:
        found += [(RerankRequest, create_rerank), (ScoreRequest, create_score)]
    found.append((PoolingRequest, create_pooling))
    return found


async def create_invocation(served: ServedModel, body: Any, request: Request) -> Response:
    """Serve the body with the first candidate whose request schema it fits (vLLM's SageMaker dispatch)."""
    if not isinstance(body, dict):
        raise APIError(400, "The request body must be a JSON object.")
    tried = candidates(served)
    last: pydantic.ValidationError | None = None
    for schema, serve in tried:
        try:
            parsed = schema.model_validate(body, context={"quiet": True})  # only the chosen schema logs
        except pydantic.ValidationError as exc:
            last = exc
            continue
        log_ignored_fields(schema, body)
        return await serve(served, parsed, request)
    names = [schema.__name__ for schema, _ in tried]
    detail = ""
    if last is not None:
        detail, _ = describe_validation_errors(
            json.loads(last.json(include_url=False, include_context=False)), "application/json"
        )
        detail = f" As /pooling: {detail}"
    raise APIError(400, f"Cannot find suitable handler for request. Expected one of: {names}.{detail}")


__all__ = ["candidates", "create_invocation"]
