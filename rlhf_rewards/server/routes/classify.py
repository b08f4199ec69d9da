"""``POST /classify``: vLLM's classification API, as verl's reward loop calls it.

verl sends ``{"model", "input": text, "use_activation": false}`` and reads ``data[-1]["probs"][-1]``.
"""

from __future__ import annotations

import time
import uuid

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from rlhf_rewards.server.protocol import ERROR_RESPONSES, ClassificationResponse, ClassifyRequest
from rlhf_rewards.server.routes.common import engine_of, json_response, make_params, usage

router = APIRouter(tags=["scoring"])


@router.post("/classify", response_model=ClassificationResponse, responses=ERROR_RESPONSES)
async def classify(body: ClassifyRequest, request: Request) -> JSONResponse:
    """Class probabilities per prompt (raw logits with ``use_activation: false``) and the argmax label."""
    engine = engine_of(request)
    name, lora = engine.resolve_model(body.model)
    params = make_params(truncate_prompt_tokens=body.truncate_prompt_tokens, use_activation=body.use_activation)
    items = await engine.prepare(body, "classify", params, lora)
    outputs = await engine.score("classify", items)
    id2label = getattr(engine.llm.model.config, "id2label", None) or {}
    data = []
    for i, out in enumerate(outputs):
        probs = out.outputs.data.reshape(-1)
        if out.error is not None:
            data.append({"index": i, "label": None, "probs": None, "num_classes": int(probs.numel()),
                         "error": out.error})
            continue
        values = probs.tolist()
        best = max(range(len(values)), key=values.__getitem__)
        data.append({"index": i, "label": id2label.get(best), "probs": values, "num_classes": len(values)})
    return json_response({
        "id": f"classify-{body.request_id or uuid.uuid4().hex}",
        "object": "list",
        "created": int(time.time()),
        "model": name,
        "data": data,
        "usage": usage(outputs),
    })
