"""Segment attention on CUDA through flash-attention's variable-length kernel.

On CUDA in float16/bfloat16, :func:`~rlhf_rewards.engine.attention.interface.segment_attention_forward`
hands a packed row to :func:`forward` instead of the padded buckets (:mod:`~rlhf_rewards.engine.attention.buckets`):

- **Own parts**: every segment attends causally to its own keys in *one* call of
  ``torch.nn.attention.varlen.varlen_attn`` (PyTorch's FlashAttention varlen kernel), with the segments'
  boundaries as ``cu_seqlens``. No padding, no gathers, one launch per layer whatever the number of requests.
- **Shared prefixes**: for each node with descendants, the queries below it attend, unmasked, to the node's
  keys in one more call, and the parts are merged through their log-sum-exp (``return_aux=AuxRequest(lse=True)``),
  as on the bucket path. A GRPO prompt's keys are read in place by every completion of its group.
- The pruned last layer computes every query row (the kept ones are exact; the rest are never read): on a
  GPU one varlen call over all rows is cheaper than gathering the few kept rows into buckets.

CPU and float32 keep the bucket path (the FlashAttention kernel is CUDA-only and half precision only).
``RLHF_REWARDS_VARLEN=0`` turns this path off. ``tests/engine/test_varlen_attention.py`` checks the
bookkeeping on CPU with a reference kernel written out with matmuls, and the kernel itself when CUDA is
present.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable
from functools import lru_cache
from typing import Any

import torch

from rlhf_rewards.engine.attention.buckets import Cross, crosses
from rlhf_rewards.engine.attention.kernels import merge, merge_rows
from rlhf_rewards.engine.attention.plan import Segment, SegmentPlan

#: Dtypes the FlashAttention varlen kernel accepts.
VARLEN_DTYPES = (torch.float16, torch.bfloat16)
#: Largest head size the kernel supports.
VARLEN_MAX_HEAD_DIM = 256

_CAUSAL = (-1, 0)
_FULL = (-1, -1)


def _torch_kernel() -> Callable[..., Any] | None:
    try:
        from torch.nn.attention.varlen import varlen_attn
    except ImportError:  # torch < 2.10
        return None
    # torch 2.10's kernel has only ``is_causal`` (no ``window_size``/``scale``): keep the bucket path there.
    if not {"return_aux", "scale", "window_size"} <= set(inspect.signature(varlen_attn).parameters):
        return None
    return varlen_attn


@lru_cache(maxsize=8)
def _takes_enable_gqa(kernel: Callable[..., Any]) -> bool:
    """Whether ``kernel`` has ``enable_gqa`` (torch 2.11's ``varlen_attn`` does not; 2.13's does)."""
    try:
        return "enable_gqa" in inspect.signature(kernel).parameters
    except (TypeError, ValueError):  # no introspectable signature: assume the current API
        return True


def _lse_request() -> Any:
    from torch.nn.attention.varlen import AuxRequest

    return AuxRequest(lse=True)


@lru_cache(maxsize=16)
def _lse_heads_major(kernel: Callable[..., Any], device: torch.device, dtype: torch.dtype) -> bool:
    """Whether ``kernel`` returns the log-sum-exp as ``[heads, tokens]`` (FlashAttention's own layout, and
    the shape of torch's fake kernel) rather than ``[tokens, heads]`` (what ``varlen_attn``'s docstring says).
    Probed once per kernel, device and dtype on a tiny non-square input."""
    tokens, heads = 3, 2
    x = torch.zeros(tokens, heads, 64, device=device, dtype=dtype)
    cu = torch.tensor([0, tokens], dtype=torch.int32, device=device)
    _, lse = kernel(x, x, x, cu, cu, tokens, tokens, return_aux=_lse_request(), window_size=_FULL)
    if tuple(lse.shape) in ((heads, tokens), (tokens, heads)):
        return tuple(lse.shape) == (heads, tokens)
    raise RuntimeError(
        f"varlen kernel returned a log-sum-exp of shape {tuple(lse.shape)} for {tokens} tokens "
        f"x {heads} heads; expected [heads, tokens] or [tokens, heads]"
    )


#: The kernel in use; tests swap in a reference implementation with the same signature.
KERNEL: Callable[..., Any] | None = _torch_kernel()
#: Devices on which :func:`applies` may choose this path (tests add ``"cpu"``).
DEVICE_TYPES: set[str] = {"cuda"}
#: Dtypes on which :func:`applies` may choose this path (tests add ``torch.float32``).
DTYPES: set[torch.dtype] = set(VARLEN_DTYPES)


def applies(query: torch.Tensor) -> bool:
    """Whether this packed attention call goes through the varlen kernel."""
    if KERNEL is None or os.environ.get("RLHF_REWARDS_VARLEN", "1") == "0":
        return False
    return (
        query.device.type in DEVICE_TYPES and query.dtype in DTYPES and query.shape[-1] <= VARLEN_MAX_HEAD_DIM
    )


def _cu_seqlens(lengths: list[int], device: torch.device) -> torch.Tensor:
    cu = torch.zeros(len(lengths) + 1, dtype=torch.int32)
    cu[1:] = torch.tensor(lengths, dtype=torch.int32).cumsum(0)
    return cu.to(device)


class VarlenLayout:
    """The kernel arguments of one packed row, built once per forward and reused by every layer.

    Args:
        segments: The plan's segments; they tile the packed row in order (``packing.py`` lays them out so).
        total: Tokens in the row.
        crosses: The plan's ancestor parts (``k_range``, and ``q_range`` or ``q_index``) over every query row.
        device: Where the index tensors live.
    """

    def __init__(
        self, segments: list[Segment], total: int, crosses: list[Cross], device: torch.device
    ) -> None:
        starts = [seg.start for seg in segments]
        ends = [seg.end for seg in segments]
        if (
            not segments
            or starts[0] != 0
            or ends[-1] != total
            or any(s != e for s, e in zip(starts[1:], ends[:-1], strict=True))
        ):
            raise ValueError("varlen attention needs segments that tile the packed row in order")
        lengths = [e - s for s, e in zip(starts, ends, strict=True)]
        self.cu = _cu_seqlens(lengths, device)
        self.max_len = max(lengths)
        self.crosses = crosses


def _call(q, k, v, cu_q, cu_k, max_q, max_k, *, window, lse, scale, gqa):
    kwargs: dict[str, Any] = {"window_size": window, "scale": scale}
    if gqa and _takes_enable_gqa(KERNEL):
        kwargs["enable_gqa"] = True
    elif gqa:  # a kernel without enable_gqa: give every query head its own copy of its key/value head
        groups = q.shape[1] // k.shape[1]
        k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
    if lse:
        out, lse_t = KERNEL(q, k, v, cu_q, cu_k, max_q, max_k, return_aux=_lse_request(), **kwargs)
        if _lse_heads_major(KERNEL, q.device, q.dtype):  # the merge works on token-major [T, heads]
            lse_t = lse_t.transpose(0, 1).contiguous()
        return out, lse_t.float()
    return KERNEL(q, k, v, cu_q, cu_k, max_q, max_k, **kwargs), None


def forward(
    layout: VarlenLayout,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    scale: float | None,
    keys_of: Callable[[int, int], tuple[torch.Tensor, torch.Tensor]] | None = None,
) -> torch.Tensor:
    """Attention of a packed row: ``query [1, H, T, d]``, ``key/value [1, Hkv, T, d]`` -> ``[1, T, H, d]``.

    Partial results are merged through their log-sum-exp (:func:`~rlhf_rewards.engine.attention.kernels.merge`).
    ``keys_of(start, end)`` gives the keys and values ``[1, kv_heads, n, d]`` of an ancestor range outside the
    row (cross-call cached prefixes).
    """
    gqa = query.shape[1] != key.shape[1]
    # The kernel takes token-major [T, heads, d] tensors with a unit last stride.
    q = query[0].transpose(0, 1).contiguous()
    k = key[0].transpose(0, 1).contiguous()
    v = value[0].transpose(0, 1).contiguous()
    shared = bool(layout.crosses)
    out, lse = _call(
        q,
        k,
        v,
        layout.cu,
        layout.cu,
        layout.max_len,
        layout.max_len,
        window=_CAUSAL,
        lse=shared,
        scale=scale,
        gqa=gqa,
    )
    if not shared:
        return out.unsqueeze(0)
    acc = out.float()
    for c in layout.crosses:
        (ks, ke), q_range, q_index = c.k_range, c.q_range, c.q_index
        q_part = q[q_range[0] : q_range[1]] if q_range is not None else q.index_select(0, q_index)
        n, m = q_part.shape[0], ke - ks
        cu_q = torch.tensor([0, n], dtype=torch.int32, device=q.device)
        cu_k = torch.tensor([0, m], dtype=torch.int32, device=q.device)
        if ks < k.shape[0]:
            k_part, v_part = k[ks:ke], v[ks:ke]
        else:
            assert keys_of is not None, "an ancestor range outside the row needs keys_of"
            k_part, v_part = (t[0].transpose(0, 1).contiguous() for t in keys_of(ks, ke))
        part, part_lse = _call(
            q_part, k_part, v_part, cu_q, cu_k, n, m, window=_FULL, lse=True, scale=scale, gqa=gqa
        )
        if q_range is not None:
            merge(acc[q_range[0] : q_range[1]], lse[q_range[0] : q_range[1]], part.float(), part_lse)
        else:
            merge_rows(acc, lse, q_index, part.float(), part_lse)
    return acc.to(query.dtype).unsqueeze(0)


def plan_layout(plan: SegmentPlan, device: torch.device) -> VarlenLayout:
    """The kernel arguments of the plan's row; built once per forward."""

    def build() -> VarlenLayout:
        cross_rows: dict[tuple[int, int], list[int]] = {}
        for seg in plan.segments:  # every query row: the varlen path never prunes
            for key_range in seg.prefix:
                cross_rows.setdefault(key_range, []).extend(range(seg.start, seg.end))
        return VarlenLayout(plan.segments, plan.total, crosses(cross_rows, device), device)

    return plan.layout("varlen", build)


__all__ = [
    "DEVICE_TYPES",
    "DTYPES",
    "KERNEL",
    "VARLEN_DTYPES",
    "VarlenLayout",
    "applies",
    "forward",
    "plan_layout",
]
