"""``POST /pooling``'s route."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response

from rlhf_rewards.server.base.api_utils import served_model
from rlhf_rewards.server.base.encoding import BYTES_CONTENT
from rlhf_rewards.server.base.protocol import ERROR_RESPONSES
from rlhf_rewards.server.pooling.protocol import PoolingRequest, PoolingResponse
from rlhf_rewards.server.pooling.serving import create_pooling

router = APIRouter(tags=["scoring"])


@router.post("/pooling", response_model=PoolingResponse, responses={**ERROR_RESPONSES, **BYTES_CONTENT})
async def pooling(body: PoolingRequest, request: Request) -> Response:
    """Pool prompts with a task (default: the model's reward task) and return the raw pooled data.

    ``data`` per item is ``[num_labels]`` for classify, ``[n_rows, k]`` for token_classify,
    ``[hidden]`` for embed and ``[n_tokens, hidden]`` for token_embed; with ``encoding_format="base64"``
    it is the flattened array's bytes (``embed_dtype``, ``endianness``) in base64, and with ``bytes`` /
    ``bytes_only`` the answer is the binary body (vLLM's).
    """
    return await create_pooling(served_model(request), body, request)


__all__ = ["router"]
