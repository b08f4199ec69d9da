"""``GET /health`` (no API key), ``GET/POST /ping`` (SageMaker's, as vLLM) and ``GET /metrics`` (Prometheus)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response

from rlhf_rewards.server.protocol import ERROR_RESPONSES
from rlhf_rewards.server.routes.common import engine_of

router = APIRouter(tags=["operations"])


_HEALTH_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"description": "The server takes requests (empty body, as vLLM's).", "content": {}},
    503: {
        "description": "Draining for shutdown (with Retry-After), or the batching loop stopped (empty body).",
        "content": {},
    },
}


@router.get("/health", response_class=Response, responses=_HEALTH_RESPONSES)
async def health(request: Request) -> Response:
    """200 when the server takes requests; 503 while it drains for shutdown (``Retry-After``) or if its batching
    loop stopped. The body is empty, as vLLM's; ``/v1/model_info`` describes the model."""
    engine = engine_of(request)
    if engine.draining:
        return Response(status_code=503, headers={"Retry-After": "1"})
    if not engine.batcher.alive:
        return Response(status_code=503)
    return Response(status_code=200)


@router.get("/ping", response_class=Response, responses=_HEALTH_RESPONSES)
async def ping_get(request: Request) -> Response:
    """SageMaker's health check (vLLM's ``/ping``): the answer of ``/health``."""
    return await health(request)


@router.post("/ping", response_class=Response, responses=_HEALTH_RESPONSES)
async def ping_post(request: Request) -> Response:
    """``POST /ping`` (vLLM's SageMaker route): the answer of ``/health``."""
    return await health(request)


@router.get(
    "/metrics",
    response_class=Response,
    responses={
        200: {
            "description": "Prometheus text exposition format.",
            "content": {"text/plain": {"schema": {"type": "string"}}},
        },
        401: ERROR_RESPONSES[401],
    },
)
async def metrics(request: Request) -> Response:
    """Prometheus metrics: requests, prompts, tokens, queue depth, batch sizes and latency histograms."""
    body, content_type = engine_of(request).metrics.render()
    return Response(body, media_type=content_type)
