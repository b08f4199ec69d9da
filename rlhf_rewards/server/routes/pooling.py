"""``POST /pooling``: vLLM's pooling API (completion form ``input`` and chat form ``messages``)."""

from __future__ import annotations

import base64
import sys

import torch
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from rlhf_rewards.outputs import PoolingRequestOutput
from rlhf_rewards.server.protocol import ERROR_RESPONSES, PoolingRequest, PoolingResponse, PoolingResponseData
from rlhf_rewards.server.routes.common import engine_of, json_response, make_params, response_id, usage

router = APIRouter(tags=["scoring"])

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


@router.post("/pooling", response_model=PoolingResponse, responses=ERROR_RESPONSES)
async def pooling(body: PoolingRequest, request: Request) -> JSONResponse:
    """Pool prompts with a task (default: the model's reward task) and return the raw pooled data.

    ``data`` per item is ``[num_labels]`` for classify, ``[n_rows, k]`` for token_classify,
    ``[hidden]`` for embed and ``[n_tokens, hidden]`` for token_embed; with ``encoding_format="base64"``
    it is the flattened array's bytes (``embed_dtype``, ``endianness``) in base64.
    """
    engine = engine_of(request)
    name, lora = engine.resolve_model(body.model)
    task = body.task or engine.info.default_task
    params = make_params(body, truncate_prompt_tokens=body.truncate_prompt_tokens)
    items = await engine.prepare(body, task, params, lora)
    outputs = await engine.score(task, items)
    return json_response(PoolingResponse(
        id=response_id("pool", body.request_id),
        model=name,
        data=[_item(i, out, body) for i, out in enumerate(outputs)],
        usage=usage(outputs),
    ))


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
    return PoolingResponseData(index=index, data=data, error=out.error,
                               prompt_token_ids=out.prompt_token_ids if details else None,
                               shape=list(tensor.shape) if details else None)


def encode_base64(tensor: torch.Tensor, dtype: str, endianness: str) -> str:
    """The flattened tensor's bytes in ``dtype`` and byte order, base64-encoded (vLLM's ``base64`` format)."""
    flat = tensor.detach().to("cpu", _DTYPES[dtype]).contiguous().reshape(-1)
    array = (flat.view(torch.int16) if dtype == "bfloat16" else flat).numpy()
    if endianness != "native" and endianness != sys.byteorder:
        array = array.byteswap()
    return base64.b64encode(array.tobytes()).decode("ascii")
