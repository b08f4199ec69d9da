"""Helpers of vLLM's online pooling tests, for the ports in this package.

- :class:`RemoteOpenAIServer`: vLLM's test server handle (``url_for``), here an ``rlhf-rewards serve`` app run
  by uvicorn on 127.0.0.1 in this process (:class:`~tests.support.server.InProcessServer`: the CLI's
  own argument parsing and app).
- ``check_embeddings_close`` (vLLM's ``tests/models/utils.py``), and the binary-format helpers vLLM 0.33's
  tests import (``vllm/utils/serial_utils.py``: ``EMBED_DTYPES``, ``ENDIANNESS``, ``binary2tensor``;
  ``vllm/entrypoints/pooling/utils.py``: ``MetadataItem``, ``build_metadata_items``, ``decode_pooling_output``),
  written from vLLM 0.33.0's source so the decoding side is vLLM's, not this server's.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from tests.support.server import InProcessServer

#: The chat template of vLLM's reward tests (``--chat-template``).
DUMMY_CHAT_TEMPLATE = (
    """{% for message in messages %}{{message['role'] + ': ' + message['content'] + '\\n'}}{% endfor %}"""  # noqa: E501
)


class RemoteOpenAIServer(InProcessServer):
    """``rlhf-rewards serve MODEL *args`` on 127.0.0.1, with vLLM's ``url_for``. The model is served under
    ``served_name`` (vLLM's tests call it by the hub id; these ports use the tiny stand-in's)."""

    def __init__(self, model: str | Path, args: Sequence[str], served_name: str) -> None:
        super().__init__(model, "--served-model-name", served_name, *args)

    def url_for(self, *parts: str) -> str:
        """vLLM's ``RemoteOpenAIServer.url_for``."""
        return self.url + "/" + "/".join(p.strip("/") for p in parts)


def check_embeddings_close(
    *,
    embeddings_0_lst: Sequence[list[float]],
    embeddings_1_lst: Sequence[list[float]],
    name_0: str,
    name_1: str,
    tol: float = 1e-3,
) -> None:
    """vLLM's ``check_embeddings_close``: cosine similarity of each pair at least ``1 - tol``."""
    assert len(embeddings_0_lst) == len(embeddings_1_lst)
    for prompt_idx, (embeddings_0, embeddings_1) in enumerate(
        zip(embeddings_0_lst, embeddings_1_lst, strict=True)
    ):
        assert len(embeddings_0) == len(embeddings_1), (
            f"Length mismatch: {len(embeddings_0)} vs. {len(embeddings_1)}"
        )
        sim = F.cosine_similarity(torch.tensor(embeddings_0), torch.tensor(embeddings_1), dim=0)
        fail_msg = f"Test{prompt_idx}:\nCosine similarity: \t{sim}\n{name_0}:\t{embeddings_0[:16]!r}\n{name_1}:\t{embeddings_1[:16]!r}"
        assert bool((sim >= 1 - tol).all()), fail_msg


@dataclass(frozen=True)
class _DTypeInfo:
    torch_dtype: torch.dtype
    torch_view_dtype: torch.dtype
    numpy_view_dtype: object

    @property
    def nbytes(self) -> int:
        return self.torch_dtype.itemsize


EMBED_DTYPES = {
    "float32": _DTypeInfo(torch.float32, torch.float32, np.float32),
    "float16": _DTypeInfo(torch.float16, torch.float16, np.float16),
    "bfloat16": _DTypeInfo(torch.bfloat16, torch.float16, np.float16),
    "fp8_e4m3": _DTypeInfo(torch.float8_e4m3fn, torch.uint8, np.uint8),
    "fp8_e5m2": _DTypeInfo(torch.float8_e5m2, torch.uint8, np.uint8),
}
ENDIANNESS = ("native", "big", "little")


def binary2tensor(binary: bytes, shape: tuple[int, ...], embed_dtype: str, endianness: str) -> torch.Tensor:
    """vLLM's ``binary2tensor``."""
    info = EMBED_DTYPES[embed_dtype]
    np_array = np.frombuffer(binary, dtype=info.numpy_view_dtype).reshape(shape)
    if endianness != "native" and endianness != sys.byteorder:
        np_array = np_array.byteswap()
    return torch.from_numpy(np_array.copy()).view(info.torch_dtype)  # a copy: frombuffer arrays are read-only


@dataclass
class MetadataItem:
    """vLLM's ``MetadataItem`` (one item of the ``metadata`` header)."""

    index: int
    embed_dtype: str
    endianness: str
    start: int
    end: int
    shape: tuple[int, ...]


def build_metadata_items(
    embed_dtype: str, endianness: str, shape: tuple[int, ...], n_request: int
) -> list[MetadataItem]:
    """vLLM's ``build_metadata_items`` (for ``bytes_only``, whose answer has no metadata)."""
    n_bytes = EMBED_DTYPES[embed_dtype].nbytes
    size = math.prod(shape)
    return [
        MetadataItem(
            index=i,
            embed_dtype=embed_dtype,
            endianness=endianness,
            start=i * size * n_bytes,
            end=(i + 1) * size * n_bytes,
            shape=shape,
        )
        for i in range(n_request)
    ]


def decode_pooling_output(items: list[MetadataItem], body: bytes) -> list[torch.Tensor]:
    """vLLM's ``decode_pooling_output``."""
    return [
        binary2tensor(body[item.start : item.end], tuple(item.shape), item.embed_dtype, item.endianness)
        for item in sorted(items, key=lambda x: x.index)
    ]
