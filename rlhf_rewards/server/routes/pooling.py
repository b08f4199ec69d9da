"""``POST /pooling``: vLLM's pooling API (completion form ``input`` and chat form ``messages``)."""

from __future__ import annotations

import time

from fastapi import APIRouter, Request
from fastapi.responses import Response

from rlhf_rewards.outputs import PoolingRequestOutput
from rlhf_rewards.server.errors import APIError
from rlhf_rewards.server.protocol import ERROR_RESPONSES, PoolingRequest, PoolingResponse, PoolingResponseData
from rlhf_rewards.server.routes.common import engine_of, json_response, make_params, response_id, usage
from rlhf_rewards.server.routes.encoding import BYTES_CONTENT, bytes_response, encode_base64
from rlhf_rewards.server.service import ServingEngine

router = APIRouter(tags=["scoring"])


@router.post("/pooling", response_model=PoolingResponse, responses={**ERROR_RESPONSES, **BYTES_CONTENT})
async def pooling(body: PoolingRequest, request: Request) -> Response:
    """Pool prompts with a task (default: the model's reward task) and return the raw pooled data.

    ``data`` per item is ``[num_labels]`` for classify, ``[n_rows, k]`` for token_classify,
    ``[hidden]`` for embed and ``[n_tokens, hidden]`` for token_embed; with ``encoding_format="base64"``
    it is the flattened array's bytes (``embed_dtype``, ``endianness``) in base64, and with ``bytes`` /
    ``bytes_only`` the answer is the binary body (vLLM's).
    """
    engine = engine_of(request)
    name, lora = engine.resolve_model(body.model, param=None)
    if engine.strict:
        _strict_checks(engine, body)
    if body.normalize is not None and (body.task or engine.default_task) not in ("embed", "token_embed"):
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
            "of the model's tasks " + str(list(engine.llm.supported_tasks)) + ".",
            param="task",
        )
    task = body.task or engine.default_task
    params = make_params(body, truncate_prompt_tokens=body.truncate_prompt_tokens)
    items = await engine.prepare(body, task, params, lora)
    outputs = await engine.score(task, items)
    rid = response_id("pooling", body.request_id, request)
    if body.encoding_format in ("bytes", "bytes_only"):
        return bytes_response(
            outputs,
            [o.outputs.data for o in outputs],
            response_id=rid,
            created=int(time.time()),
            model=name,
            usage=usage(outputs),
            encoding_format=body.encoding_format,
            embed_dtype=body.embed_dtype,
            endianness=body.endianness,
        )
    return json_response(
        PoolingResponse(
            id=rid,
            model=name,
            data=[_item(i, out, body) for i, out in enumerate(outputs)],
            usage=usage(outputs),
        )
    )


def _strict_checks(engine: ServingEngine, body: PoolingRequest) -> None:
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
        engine.check_vllm_task(body.task)
    body.step_tag_id = body.returned_token_ids = None
    body.return_details = False


def _item(index: int, out: PoolingRequestOutput, body: PoolingRequest) -> PoolingResponseData:
    tensor = out.outputs.data
    data: list | str | None
    if out.error is not None:
        data = None
    elif body.encoding_format == "base64":
        data = encode_base64(tensor, body.embed_dtype, body.endianness)
    else:
        data = tensor.tolist()
    details = body.return_details
    return PoolingResponseData(
        index=index,
        data=data,
        error=out.error,
        prompt_token_ids=out.prompt_token_ids if details else None,
        shape=list(tensor.shape) if details else None,
    )


__all__ = ["encode_base64", "router"]
