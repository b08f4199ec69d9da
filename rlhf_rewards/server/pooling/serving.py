"""``POST /pooling``: vLLM's pooling API (completion form ``input`` and chat form ``messages``)."""

from __future__ import annotations

from fastapi import Request
from fastapi.responses import Response

from rlhf_rewards.outputs import PoolingRequestOutput
from rlhf_rewards.server.base.api_utils import json_response, make_params, response_id, usage
from rlhf_rewards.server.base.encoding import bytes_response, encode_item
from rlhf_rewards.server.base.preprocess import prepare
from rlhf_rewards.server.base.serving import ServedModel
from rlhf_rewards.server.errors import APIError
from rlhf_rewards.server.pooling.protocol import PoolingRequest, PoolingResponse, PoolingResponseData


async def create_pooling(served: ServedModel, body: PoolingRequest, request: Request) -> Response:
    """Pool prompts with a task (default: the model's reward task) and answer the raw pooled data."""
    name, lora = served.resolve_model(body.model, param=None)
    if served.strict:
        _strict_checks(served, body)
    if body.normalize is not None and (body.task or served.default_task) not in ("embed", "token_embed"):
        # vLLM refuses `normalize` always; it is an extension here only where it applies (embed tasks).
        raise APIError(
            400,
            "Parameter `normalize` was removed; use `use_activation` instead. (`normalize` is "
            "served here only on the embed tasks.)",
            param="normalize",
        )
    if body.task == "plugin":
        raise APIError(
            400,
            "No IOProcessor plugin installed. This server has no IO processor plugins: choose one "
            "of the model's tasks " + str(list(served.llm.supported_tasks)) + ".",
            param="task",
        )
    task = body.task or served.default_task
    params = make_params(body, truncate_prompt_tokens=body.truncate_prompt_tokens)
    items = await prepare(served, body, task, params, lora)
    outputs = await served.score(task, items)
    rid = response_id("pooling", body.request_id, request)
    if body.encoding_format in ("bytes", "bytes_only"):
        return bytes_response(outputs, [o.outputs.data for o in outputs], body, response_id=rid, model=name)
    return json_response(
        PoolingResponse(
            id=rid,
            model=name,
            data=[_item(i, out, body) for i, out in enumerate(outputs)],
            usage=usage(outputs),
        )
    )


def _strict_checks(served: ServedModel, body: PoolingRequest) -> None:
    """``--strict-vllm-compat``: vLLM 0.32's answer to what this route extends (its checks, in its order);
    fields vLLM's schema does not have (``step_tag_id``, ``returned_token_ids``, ``return_details``) are
    ignored, as vLLM ignores unknown fields."""
    if body.normalize is not None:
        raise APIError(
            400,
            "Parameter `normalize` was removed; use `use_activation` instead. (parameter=normalize)",
            param="normalize",
        )
    if body.dimensions is not None:
        raise APIError(
            400, "dimensions is currently not supported (parameter=dimensions)", param="dimensions"
        )
    if body.task not in (None, "plugin"):
        served.check_vllm_task(body.task)
    body.step_tag_id = body.returned_token_ids = None
    body.return_details = False


def _item(index: int, out: PoolingRequestOutput, body: PoolingRequest) -> PoolingResponseData:
    tensor = out.outputs.data
    details = body.return_details
    return PoolingResponseData(
        index=index,
        data=None if out.error is not None else encode_item(tensor, body),
        error=out.error,
        prompt_token_ids=out.prompt_token_ids if details else None,
        shape=list(tensor.shape) if details else None,
    )


__all__ = ["create_pooling"]
