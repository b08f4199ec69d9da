"""vLLM's ``encoding_format`` for pooled tensors: ``float`` (JSON numbers), ``base64`` (one item's bytes) and the
binary ``bytes`` / ``bytes_only`` bodies (every item's bytes back to back; ``bytes`` describes them in the
``metadata`` header: index, dtype, byte order, ``start``/``end`` offsets and shape, as vLLM's
``decode_pooling_output`` reads them).
"""

from __future__ import annotations

import base64
import json
import sys
import time
from typing import Any

import torch
from fastapi.responses import Response

from rlhf_rewards.outputs import PoolingRequestOutput
from rlhf_rewards.server.base.api_utils import usage
from rlhf_rewards.server.base.protocol import EncodingRequest
from rlhf_rewards.server.errors import APIError

#: ``embed_dtype`` -> (dtype the values are cast to, dtype their bytes are viewed as) (vLLM's ``EMBED_DTYPES``).
EMBED_DTYPES: dict[str, tuple[torch.dtype, torch.dtype]] = {
    "float32": (torch.float32, torch.float32),
    "float16": (torch.float16, torch.float16),
    "bfloat16": (torch.bfloat16, torch.int16),
    "fp8_e4m3": (torch.float8_e4m3fn, torch.uint8),
    "fp8_e5m2": (torch.float8_e5m2, torch.uint8),
}
#: Extra 200 content of the routes that can answer in bytes (for the OpenAPI document).
BYTES_CONTENT: dict[int | str, dict[str, Any]] = {
    200: {
        "content": {"application/octet-stream": {"schema": {"type": "string"}}},
        "description": "JSON, or with `encoding_format` `bytes`/`bytes_only` the binary body (item offsets "
        "in the `metadata` header for `bytes`).",
    },
}


def tensor_bytes(tensor: torch.Tensor, embed_dtype: str, endianness: str) -> bytes:
    """The flattened tensor in ``embed_dtype`` and byte order ``endianness`` (vLLM's ``tensor2binary``)."""
    cast, view = EMBED_DTYPES[embed_dtype]
    array = tensor.detach().to("cpu").to(cast).contiguous().reshape(-1).view(view).numpy()
    if endianness != "native" and endianness != sys.byteorder:
        array = array.byteswap()
    return array.tobytes()


def encode_base64(tensor: torch.Tensor, embed_dtype: str, endianness: str) -> str:
    """``tensor_bytes`` in base64 (vLLM's ``base64`` format)."""
    return base64.b64encode(tensor_bytes(tensor, embed_dtype, endianness)).decode("ascii")


def encode_item(tensor: torch.Tensor, request: EncodingRequest) -> list[Any] | str:
    """One item's data in a JSON answer: base64 of its bytes with ``encoding_format="base64"``, else numbers."""
    if request.encoding_format == "base64":
        return encode_base64(tensor, request.embed_dtype, request.endianness)
    return tensor.tolist()


def bytes_response(
    outputs: list[PoolingRequestOutput],
    tensors: list[torch.Tensor],
    request: EncodingRequest,
    *,
    response_id: str,
    model: str,
) -> Response:
    """vLLM's binary answer. An item without a result (NaN/inf) has no bytes (``start == end``) and its
    ``error`` in the metadata; ``bytes_only`` has no metadata to carry that, so such a request is a 422."""
    encoding_format, embed_dtype, endianness = (
        request.encoding_format,
        request.embed_dtype,
        request.endianness,
    )
    failed = [i for i, out in enumerate(outputs) if out.error is not None]
    if failed and encoding_format == "bytes_only":
        raise APIError(
            422,
            f"Items {failed[:10]} have no result ({outputs[failed[0]].error}); `bytes_only` cannot "
            "carry per-item errors: use encoding_format `bytes` or `float`.",
            param="encoding_format",
        )
    chunks: list[bytes] = []
    items: list[dict[str, Any]] = []
    offset = 0
    for i, (out, tensor) in enumerate(zip(outputs, tensors, strict=True)):
        data = b"" if out.error is not None else tensor_bytes(tensor, embed_dtype, endianness)
        item: dict[str, Any] = {
            "index": i,
            "embed_dtype": embed_dtype,
            "endianness": endianness,
            "start": offset,
            "end": offset + len(data),
            "shape": list(tensor.shape),
        }
        if out.error is not None:
            item["error"] = out.error
        items.append(item)
        chunks.append(data)
        offset += len(data)
    headers = None
    if encoding_format == "bytes":
        counts = usage(outputs)
        headers = {
            "metadata": json.dumps(
                {
                    "id": response_id,
                    "created": int(time.time()),
                    "model": model,
                    "data": items,
                    "usage": {"prompt_tokens": counts.prompt_tokens, "total_tokens": counts.total_tokens},
                }
            )
        }
    return Response(b"".join(chunks), media_type="application/octet-stream", headers=headers)


__all__ = ["BYTES_CONTENT", "EMBED_DTYPES", "bytes_response", "encode_base64", "encode_item", "tensor_bytes"]
