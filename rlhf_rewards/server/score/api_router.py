"""``POST /score`` and ``/rerank``'s routes, under each path vLLM serves them on (``/v1/score``; Jina's
``/v1/rerank`` and Cohere's ``/v2/rerank``)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response

from rlhf_rewards.server.base.api_utils import offered_only, served_model
from rlhf_rewards.server.base.protocol import NOT_OFFERED_RESPONSES
from rlhf_rewards.server.score.protocol import RerankRequest, RerankResponse, ScoreRequest, ScoreResponse
from rlhf_rewards.server.score.serving import check_offered, create_rerank, create_score

router = APIRouter(tags=["scoring"])


async def score(body: ScoreRequest, request: Request) -> Response:
    """One score per (query, document) pair, 1:1, 1:N or N:N (vLLM's Score API)."""
    return await create_score(served_model(request), body, request)


async def rerank(body: RerankRequest, request: Request) -> Response:
    """Documents ordered by relevance to the query, best first (Jina's and Cohere's rerank API, as vLLM)."""
    return await create_rerank(served_model(request), body, request)


# Each path under its own name and description, so that the OpenAPI document tells them apart.
for _path, _endpoint, _model, _name, _description in (
    ("/score", score, ScoreResponse, "score", None),
    ("/v1/score", score, ScoreResponse, "score_v1", "``/score`` (vLLM's older path)."),
    ("/rerank", rerank, RerankResponse, "rerank", None),
    ("/v1/rerank", rerank, RerankResponse, "rerank_v1", "``/rerank`` (Jina's path)."),
    ("/v2/rerank", rerank, RerankResponse, "rerank_v2", "``/rerank`` (Cohere's path)."),
):
    router.add_api_route(
        _path,
        _endpoint,
        methods=["POST"],
        name=_name,
        description=_description,
        response_model=_model,
        responses=NOT_OFFERED_RESPONSES,
        dependencies=[offered_only(check_offered)],
    )

__all__ = ["rerank", "router", "score"]
