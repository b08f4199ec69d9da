"""The system routes: ``GET /health`` (no API key), ``GET/POST /ping`` (SageMaker's, as vLLM), ``GET /metrics``
(Prometheus), ``GET /v1/models``, ``GET /v1/model_info`` (this server's) and ``GET /version`` (vLLM's)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response

from rlhf_rewards.server.base.api_utils import served_model
from rlhf_rewards.server.base.protocol import ERROR_RESPONSES
from rlhf_rewards.server.system import serving
from rlhf_rewards.server.system.protocol import ModelInfoResponse, ModelList, VersionResponse

router = APIRouter()
_AUTH_ERROR = {401: ERROR_RESPONSES[401]}
_HEALTH_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"description": "The server takes requests (empty body, as vLLM's).", "content": {}},
    503: {
        "description": "Draining for shutdown (with Retry-After), or the batching loop stopped (empty body).",
        "content": {},
    },
}


@router.get("/v1/models", response_model=ModelList, responses=_AUTH_ERROR, tags=["models"])
async def list_models(request: Request) -> Response:
    """One card per served model name (``--served-model-name`` aliases, the first is the one reported) and
    one per LoRA module (``--lora-modules``), as vLLM lists them. ``root`` is the model as the server was
    started with it; a LoRA card's ``root`` is its name (adapter paths never leave the server)."""
    return serving.model_list(served_model(request))


@router.get("/v1/model_info", response_model=ModelInfoResponse, responses=_AUTH_ERROR, tags=["models"])
async def model_info(request: Request) -> Response:
    """``ModelInfo.to_dict()`` of the served model (what ``RemoteWorker.model_info()`` returns), plus the
    server's request limits under ``server_limits``."""
    return serving.model_info(served_model(request))


@router.get("/version", response_model=VersionResponse, responses=_AUTH_ERROR, tags=["models"])
async def version() -> Response:
    """This server's version (vLLM's route and shape; the number is rlhf-rewards', not a vLLM release)."""
    return serving.version()


@router.get("/health", response_class=Response, responses=_HEALTH_RESPONSES, tags=["operations"])
async def health(request: Request) -> Response:
    """200 when the server takes requests; 503 while it drains for shutdown (``Retry-After``) or if its batching
    loop stopped. The body is empty, as vLLM's; ``/v1/model_info`` describes the model."""
    return serving.health(served_model(request))


@router.get("/ping", response_class=Response, responses=_HEALTH_RESPONSES, tags=["operations"])
async def ping_get(request: Request) -> Response:
    """SageMaker's health check (vLLM's ``/ping``): the answer of ``/health``."""
    return serving.health(served_model(request))


@router.post("/ping", response_class=Response, responses=_HEALTH_RESPONSES, tags=["operations"])
async def ping_post(request: Request) -> Response:
    """``POST /ping`` (vLLM's SageMaker route): the answer of ``/health``."""
    return serving.health(served_model(request))


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
    tags=["operations"],
)
async def metrics(request: Request) -> Response:
    """Prometheus metrics: requests, prompts, tokens, queue depth, batch sizes and latency histograms."""
    body, content_type = served_model(request).metrics.render()
    return Response(body, media_type=content_type)


__all__ = ["router"]
