"""The embedding routes: ``POST /v1/embeddings`` and ``POST /v2/embed`` (Cohere's)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response

from rlhf_rewards.server.base.api_utils import offered_only, served_model
from rlhf_rewards.server.base.encoding import BYTES_CONTENT
from rlhf_rewards.server.base.protocol import NOT_OFFERED_RESPONSES
from rlhf_rewards.server.embed.protocol import (
    CohereEmbedRequest,
    CohereEmbedResponse,
    EmbeddingRequest,
    EmbeddingResponse,
)
from rlhf_rewards.server.embed.serving import (
    check_cohere_offered,
    check_embeddings_offered,
    create_cohere_embed,
    create_embedding,
)

router = APIRouter(tags=["scoring"])


@router.post(
    "/v1/embeddings",
    response_model=EmbeddingResponse,
    responses={**NOT_OFFERED_RESPONSES, **BYTES_CONTENT},
    dependencies=[offered_only(check_embeddings_offered)],
)
async def embeddings(body: EmbeddingRequest, request: Request) -> Response:
    """Embeddings of an embedding model; the raw reward vector of a reward model (SGLang's answer)."""
    return await create_embedding(served_model(request), body, request)


@router.post(
    "/v2/embed",
    response_model=CohereEmbedResponse,
    responses=NOT_OFFERED_RESPONSES,
    dependencies=[offered_only(check_cohere_offered)],
)
async def cohere_embed(body: CohereEmbedRequest, request: Request) -> Response:
    """Cohere's embed API on an embedding model (``{"detail": "Not Found"}`` on other models, as vLLM)."""
    return await create_cohere_embed(served_model(request), body, request)


__all__ = ["router"]
