"""``POST /invocations``' route (SageMaker's, dispatching on the body as vLLM does)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Body, Request
from fastapi.responses import Response

from rlhf_rewards.server.base.api_utils import served_model
from rlhf_rewards.server.base.protocol import ERROR_RESPONSES
from rlhf_rewards.server.sagemaker.serving import create_invocation

router = APIRouter(tags=["scoring"])


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
    return await create_invocation(served_model(request), body, request)


__all__ = ["router"]
