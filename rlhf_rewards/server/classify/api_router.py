"""``POST /classify``'s route (served only where the model offers it: see
:func:`~rlhf_rewards.server.classify.serving.check_offered`)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response

from rlhf_rewards.server.base.api_utils import offered_only, served_model
from rlhf_rewards.server.base.protocol import NOT_OFFERED_RESPONSES, ErrorResponse
from rlhf_rewards.server.classify.protocol import ClassificationResponse, ClassifyRequest
from rlhf_rewards.server.classify.serving import check_offered, create_classify

router = APIRouter(tags=["scoring"])


@router.post(
    "/classify",
    response_model=ClassificationResponse,
    responses={
        **NOT_OFFERED_RESPONSES,
        501: {
            "model": ErrorResponse,
            "description": "The model has the `classify` task but serves another "
            "(`--pooler-config` `task`), as vLLM.",
        },
    },
    dependencies=[offered_only(check_offered)],
)
async def classify(body: ClassifyRequest, request: Request) -> Response:
    """Class probabilities per prompt (raw logits with ``use_activation: false``) and the argmax label."""
    return await create_classify(served_model(request), body, request)


__all__ = ["router"]
