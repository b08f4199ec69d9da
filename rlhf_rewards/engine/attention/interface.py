"""Segment attention behind transformers' attention interface: the backend dispatch and the registration.

It plugs into transformers' ``AttentionInterface`` under :data:`ATTN_IMPLEMENTATION`. While a
:class:`~rlhf_rewards.engine.attention.plan.SegmentPlan` is active the model's attention modules call
:func:`segment_attention_forward`, which picks one backend per call:

- **Blocked** (``SegmentPlan(deterministic=True)``, :mod:`~rlhf_rewards.engine.attention.blocked`): every
  query goes through one batch-invariant kernel (fixed key blocks anchored at position 0 of each sequence,
  one order of summation whether a prefix is shared or not), on CUDA too.
- **Varlen** (CUDA, float16/bfloat16, :mod:`~rlhf_rewards.engine.attention.varlen`): the own parts as one
  FlashAttention varlen call over the whole row; the ancestor parts and the merge as on the bucket path.
- **Buckets** (everything else, :mod:`~rlhf_rewards.engine.attention.buckets`).

Without an active plan it defers to transformers' SDPA, masks included, so a model left in this mode still
computes exactly what SDPA does.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

from rlhf_rewards.engine.attention import varlen
from rlhf_rewards.engine.attention.blocked import blocked_attention, deterministic_layout
from rlhf_rewards.engine.attention.buckets import bucketed_attention
from rlhf_rewards.engine.attention.plan import (
    SegmentAttentionUnsupported,
    SegmentPlan,
    active_plan,
    current_plan,
    layer_index,
)

ATTN_IMPLEMENTATION = "rlhf_rewards_segments"


def segment_attention_forward(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """transformers attention-interface function: ``query [1, H, T, d]``, ``key/value [1, Hkv, T, d]``.

    Returns ``[1, T, H, d]``. In the plan's pruned layer only the rows the poolers need are computed
    (the others are zero).
    """
    plan = current_plan()
    if plan is None:
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
        )
    for name in ("sliding_window", "softcap", "s_aux"):
        if kwargs.get(name) is not None:
            raise SegmentAttentionUnsupported(f"segment attention does not implement `{name}`")
    total = plan.total
    if query.shape[0] != 1 or query.shape[2] != total or key.shape[2] != total:
        raise SegmentAttentionUnsupported(
            f"unexpected attention shapes {tuple(query.shape)} / {tuple(key.shape)} for a packed row of {total}"
        )
    if plan.deterministic:
        return blocked_attention(deterministic_layout(module, query.device), query, key, value, scaling), None
    plan.calls += 1
    ext = plan.external
    layer = layer_index(module) if ext is not None else -1
    if ext is not None and ext.capture is not None:
        ext.capture(layer, key[0], value[0])

    def keys_of(ks: int, ke: int) -> tuple[torch.Tensor, torch.Tensor]:
        if ks > total:
            assert ext is not None
            return ext.kv(layer, ks, ke)
        return key[:, :, ks:ke], value[:, :, ks:ke]

    if varlen.applies(query):
        return varlen.forward(
            varlen.plan_layout(plan, query.device), query, key, value, scaling, keys_of=keys_of
        ), None
    return bucketed_attention(plan, plan.pruned(module), query, key, value, scaling, keys_of, layer), None


def _segment_mask(*args, **kwargs):
    """Mask-interface entry: no mask while a plan is active, SDPA's mask otherwise."""
    if current_plan() is not None:
        return None
    from transformers.masking_utils import sdpa_mask

    return sdpa_mask(*args, **kwargs)


_registered = False


def register() -> str:
    """Register the attention and mask functions with transformers (idempotent); returns the name."""
    global _registered
    if not _registered:
        from transformers import AttentionInterface
        from transformers.masking_utils import AttentionMaskInterface

        AttentionInterface.register(ATTN_IMPLEMENTATION, segment_attention_forward)
        AttentionMaskInterface.register(ATTN_IMPLEMENTATION, _segment_mask)
        _registered = True
    return ATTN_IMPLEMENTATION


def _configs(model: nn.Module) -> list:
    cached = getattr(model, "_rlhf_rewards_attn_configs", None)
    if cached is None:
        found = {}
        for module in model.modules():
            config = getattr(module, "config", None)
            if config is not None and hasattr(config, "_attn_implementation_internal"):
                found[id(config)] = config
        cached = list(found.values())
        object.__setattr__(model, "_rlhf_rewards_attn_configs", cached)
    return cached


@contextlib.contextmanager
def segment_attention(model: nn.Module, plan: SegmentPlan) -> Iterator[SegmentPlan]:
    """Route ``model``'s attention through ``plan`` for the duration of the block.

    Every config object reachable from ``model`` gets ``_attn_implementation`` set to
    :data:`ATTN_IMPLEMENTATION` and restored afterwards.
    """
    name = register()
    saved = [(c, c.__dict__.get("_attn_implementation_internal")) for c in _configs(model)]
    for c, _ in saved:
        c.__dict__["_attn_implementation_internal"] = name
    try:
        with active_plan(plan):
            yield plan
    finally:
        for c, value in saved:
            c.__dict__["_attn_implementation_internal"] = value


__all__ = ["ATTN_IMPLEMENTATION", "register", "segment_attention", "segment_attention_forward"]
