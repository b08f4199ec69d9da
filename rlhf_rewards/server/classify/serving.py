"""``POST /classify``: vLLM's classification API, as verl's reward loop calls it.

verl sends ``{"model", "input": text, "use_activation": false}`` and reads ``data[-1]["probs"][-1]``.
A token reward model (``Qwen2ForRewardModel``, ``InternLM2ForRewardModel``: ``token_classify`` only) answers
with its scores at the last token, the reward ``/get_reward`` gives; vLLM does not serve this route for such
models (``{"detail": "Not Found"}``), nor does this server for other models without ``classify`` (process
reward models, embedding models) or for token reward models under ``--strict-vllm-compat``.
"""

from __future__ import annotations

from fastapi import Request
from fastapi.responses import Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from rlhf_rewards.outputs import PoolingRequestOutput
from rlhf_rewards.server.base.api_utils import json_response, make_params, response_id, usage
from rlhf_rewards.server.base.preprocess import prepare
from rlhf_rewards.server.base.serving import ServedModel
from rlhf_rewards.server.classify.protocol import ClassificationData, ClassificationResponse, ClassifyRequest
from rlhf_rewards.server.errors import APIError


def serves_classify(served: ServedModel) -> bool:
    """Whether ``/classify`` is served: models with vLLM's ``classify`` task (sequence classifiers), and token
    reward models (their last token's scores; an extension, off under ``--strict-vllm-compat``)."""
    if "classify" in served.vllm_tasks:
        return True
    return served.info.kind == "token" and not served.strict


def check_offered(served: ServedModel) -> None:
    """404 ``{"detail": "Not Found"}`` when the model has no ``/classify`` (vLLM registers the route only for
    models with the ``classify`` task); vLLM's 501 when the model has the task but serves another
    (``--pooler-config '{"task": "token_classify"}'``: vLLM then has no handler for it)."""
    if not serves_classify(served):
        raise StarletteHTTPException(404)
    if "classify" in served.vllm_tasks and served.default_task != "classify":
        raise APIError(501, "The model does not support Classification API")


async def create_classify(served: ServedModel, body: ClassifyRequest, request: Request) -> Response:
    """Class probabilities per prompt (raw logits with ``use_activation: false``) and the argmax label."""
    name, lora = served.resolve_model(body.model, param=None)
    params = make_params(body, truncate_prompt_tokens=body.truncate_prompt_tokens)
    # A token reward model has no `classify` task: its reward is the last token's row of token_classify.
    last_token = served.info.kind == "token" and "classify" not in served.info.tasks
    task = "token_classify" if last_token else "classify"
    items = await prepare(served, body, task, params, lora)
    outputs = await served.score(task, items)
    id2label = getattr(served.llm.model.config, "id2label", None) or {}
    return json_response(
        ClassificationResponse(
            id=response_id("classify", body.request_id, request),
            model=name,
            data=[_item(i, out, id2label, last_token) for i, out in enumerate(outputs)],
            usage=usage(outputs),
        )
    )


def _item(
    index: int, out: PoolingRequestOutput, id2label: dict[int, str], last_token: bool = False
) -> ClassificationData:
    data = out.outputs.data
    probs = (
        (data[-1] if data.dim() > 1 else data[-1:]).reshape(-1)
        if last_token and data.numel()
        else data.reshape(-1)
    )
    if out.error is not None:
        return ClassificationData(
            index=index, label=None, probs=None, num_classes=int(probs.numel()), error=out.error
        )
    values = probs.tolist()
    best = max(range(len(values)), key=values.__getitem__)
    return ClassificationData(index=index, label=id2label.get(best), probs=values, num_classes=len(values))


__all__ = ["check_offered", "create_classify", "serves_classify"]
