"""``POST /classify``: vLLM's classification API, as verl's reward loop calls it.

verl sends ``{"model", "input": text, "use_activation": false}`` and reads ``data[-1]["probs"][-1]``.
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from rlhf_rewards.outputs import PoolingRequestOutput
from rlhf_rewards.server.protocol import (
    ERROR_RESPONSES,
    ClassificationData,
    ClassificationResponse,
    ClassifyRequest,
)
from rlhf_rewards.server.routes.common import engine_of, json_response, make_params, response_id, usage

router = APIRouter(tags=["scoring"])


@router.post("/classify", response_model=ClassificationResponse, responses=ERROR_RESPONSES)
async def classify(body: ClassifyRequest, request: Request) -> JSONResponse:
    """Class probabilities per prompt (raw logits with ``use_activation: false``) and the argmax label."""
    engine = engine_of(request)
    name, lora = engine.resolve_model(body.model)
    params = make_params(body, truncate_prompt_tokens=body.truncate_prompt_tokens)
    items = await engine.prepare(body, "classify", params, lora)
    outputs = await engine.score("classify", items)
    id2label = getattr(engine.llm.model.config, "id2label", None) or {}
    return json_response(ClassificationResponse(
        id=response_id("classify", body.request_id, request),
        model=name,
        data=[_item(i, out, id2label) for i, out in enumerate(outputs)],
        usage=usage(outputs),
    ))


def _item(index: int, out: PoolingRequestOutput, id2label: dict[int, str]) -> ClassificationData:
    probs = out.outputs.data.reshape(-1)
    if out.error is not None:
        return ClassificationData(index=index, label=None, probs=None, num_classes=int(probs.numel()),
                                  error=out.error)
    values = probs.tolist()
    best = max(range(len(values)), key=values.__getitem__)
    return ClassificationData(index=index, label=id2label.get(best), probs=values, num_classes=len(values))
