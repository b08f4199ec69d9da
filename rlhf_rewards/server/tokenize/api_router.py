"""``POST /tokenize`` and ``POST /detokenize``'s routes (vLLM's)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response

from rlhf_rewards.server.base.api_utils import served_model
from rlhf_rewards.server.base.protocol import ERROR_RESPONSES
from rlhf_rewards.server.tokenize.protocol import (
    DetokenizeRequest,
    DetokenizeResponse,
    TokenizeRequest,
    TokenizeResponse,
)
from rlhf_rewards.server.tokenize.serving import create_detokenize, create_tokenize

router = APIRouter(tags=["models"])


@router.post("/tokenize", response_model=TokenizeResponse, responses=ERROR_RESPONSES)
async def tokenize(body: TokenizeRequest, request: Request) -> Response:
    """Token ids of a ``prompt``, or of ``messages`` rendered with the chat template (vLLM's ``/tokenize``)."""
    return await create_tokenize(served_model(request), body)


@router.post("/detokenize", response_model=DetokenizeResponse, responses=ERROR_RESPONSES)
async def detokenize(body: DetokenizeRequest, request: Request) -> Response:
    """The text of token ids (vLLM's ``/detokenize``: special tokens kept, ids outside the vocabulary decode
    to nothing)."""
    return await create_detokenize(served_model(request), body)


__all__ = ["router"]
