"""``POST /pooling``: vLLM's pooling API (completion form ``input`` and chat form ``messages``)."""

from __future__ import annotations

import base64
import sys
import time
import uuid

import torch
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from rlhf_rewards.outputs import PoolingRequestOutput
from rlhf_rewards.server.protocol import ERROR_RESPONSES, PoolingRequest, PoolingResponse
from rlhf_rewards.server.routes.common import engine_of, json_response, make_params, usage

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
    params = make_params(truncate_prompt_tokens=body.truncate_prompt_tokens, use_activation=body.use_activation,
                         dimensions=body.dimensions, normalize=body.normalize, step_tag_id=body.step_tag_id,
                         returned_token_ids=body.returned_token_ids)
    items = await engine.prepare(body, task, params, lora)
    outputs = await engine.score(task, items)
    data = [_item(i, out, body) for i, out in enumerate(outputs)]
    return json_response({
        "id": f"pool-{body.request_id or uuid.uuid4().hex}",
        "object": "list",
        "created": int(time.time()),
        "model": name,
        "data": data,
        "usage": usage(outputs),
    })


def _item(index: int, out: PoolingRequestOutput, body: PoolingRequest) -> dict:
    tensor = out.outputs.data
    item: dict = {"index": index, "object": "pooling"}
    if out.error is not None:
        item["data"] = None
        item["error"] = out.error
    elif body.encoding_format == "base64":
        item["data"] = encode_base64(tensor, body.embed_dtype, body.endianness)
    else:
        item["data"] = tensor.tolist()
    if body.return_details:
        item["prompt_token_ids"] = out.prompt_token_ids
        item["shape"] = list(tensor.shape)
    return item


def encode_base64(tensor: torch.Tensor, dtype: str, endianness: str) -> str:
    """The flattened tensor's bytes in ``dtype`` and byte order, base64-encoded (vLLM's ``base64`` format)."""
    flat = tensor.detach().to("cpu", _DTYPES[dtype]).contiguous().reshape(-1)
    array = (flat.view(torch.int16) if dtype == "bfloat16" else flat).numpy()
    if endianness != "native" and endianness != sys.byteorder:
        array = array.byteswap()
    return base64.b64encode(array.tobytes()).decode("ascii")
