"""``POST /generative_scoring``'s route (causal LMs only: see
:func:`~rlhf_rewards.server.generative_scoring.serving.check_offered`)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response

from rlhf_rewards.server.base.api_utils import offered_only, served_model
from rlhf_rewards.server.base.protocol import NOT_OFFERED_RESPONSES
from rlhf_rewards.server.generative_scoring.protocol import (
    GenerativeScoringRequest,
    GenerativeScoringResponse,
)
from rlhf_rewards.server.generative_scoring.serving import check_offered, create_generative_scoring

router = APIRouter(tags=["scoring"])


@router.post(
    "/generative_scoring",
    response_model=GenerativeScoringResponse,
    responses=NOT_OFFERED_RESPONSES,
    dependencies=[offered_only(check_offered)],
)
async def generative_scoring(body: GenerativeScoringRequest, request: Request) -> Response:
    """Probability of ``label_token_ids[0]`` as the next token after each ``query + item``."""
    return await create_generative_scoring(served_model(request), body, request)


__all__ = ["router"]
