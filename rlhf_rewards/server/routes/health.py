"""``GET /health`` (no API key), ``GET/POST /ping`` (SageMaker's, as vLLM) and ``GET /metrics`` (Prometheus)."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse

from rlhf_rewards.server.protocol import ERROR_RESPONSES, HealthResponse
from rlhf_rewards.server.routes.common import engine_of, json_response

router = APIRouter(tags=["operations"])


@router.get("/health", response_model=HealthResponse,
            responses={503: {"model": HealthResponse, "description": "Draining for shutdown (with Retry-After), "
                                                                      "or the batching loop stopped."}})
async def health(request: Request) -> JSONResponse:
    """200 when the server takes requests; 503 while it drains for shutdown or if its batching loop stopped."""
    engine = engine_of(request)
    if engine.draining:
        return json_response(HealthResponse(status="draining"), status_code=503, headers={"Retry-After": "1"})
    if not engine.batcher.alive:
        return json_response(HealthResponse(status="engine stopped"), status_code=503)
    return json_response(HealthResponse(status="ok", model=engine.model_name,
                                        queue_depth=engine.batcher.pending_prompts))


@router.get("/ping", response_model=HealthResponse,
            responses={503: {"model": HealthResponse, "description": "Draining, or the batching loop stopped."}})
async def ping_get(request: Request) -> JSONResponse:
    """SageMaker's health check (vLLM's ``/ping``): the answer of ``/health``."""
    return await health(request)


@router.post("/ping", response_model=HealthResponse,
             responses={503: {"model": HealthResponse, "description": "Draining, or the batching loop stopped."}})
async def ping_post(request: Request) -> JSONResponse:
    """``POST /ping`` (vLLM's SageMaker route): the answer of ``/health``."""
    return await health(request)


@router.get("/metrics", response_class=Response, responses={
    200: {"description": "Prometheus text exposition format.", "content": {"text/plain": {"schema": {"type": "string"}}}},
    401: ERROR_RESPONSES[401],
})
async def metrics(request: Request) -> Response:
    """Prometheus metrics: requests, prompts, tokens, queue depth, batch sizes and latency histograms."""
    body, content_type = engine_of(request).metrics.render()
    return Response(body, media_type=content_type)
