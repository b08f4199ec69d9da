"""``POST /get_reward``'s route (OpenRLHF's remote reward model API)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response

from rlhf_rewards.server.base.api_utils import served_model
from rlhf_rewards.server.base.protocol import ERROR_RESPONSES
from rlhf_rewards.server.reward.protocol import GetRewardRequest, GetRewardResponse
from rlhf_rewards.server.reward.serving import create_get_reward, options_of

router = APIRouter(tags=["scoring"])


@router.post("/get_reward", response_model=GetRewardResponse, responses=ERROR_RESPONSES)
async def get_reward(body: GetRewardRequest, request: Request) -> Response:
    """One reward per query (``rewards`` and ``scores`` are equal); ``null`` with a reason in ``errors``."""
    return await create_get_reward(served_model(request), body, options_of(request))


__all__ = ["router"]
