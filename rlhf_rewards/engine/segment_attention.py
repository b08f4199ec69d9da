"""Segment attention: exact attention over packed, prefix-shared token runs, with no dense ``total^2`` mask.

A packed forward holds one row of tokens made of *segments* (the nodes of
:mod:`rlhf_rewards.engine.prefix_cache`). A segment's queries attend to the keys of its ancestor segments
(its shared prefix, all visible) and causally to its own keys. The cost is the sum over segments of
``queries x (prefix + own keys)``, not ``total^2`` as with the block-causal mask transformers builds for
packed ``position_ids`` on SDPA.

Segments are grouped into a few *buckets* of similar sizes, once per forward. Each bucket runs as one
batched ``scaled_dot_product_attention`` call: its queries and keys are gathered (``index_select``) into a
small padded batch, and results are scattered back. Padding only touches attention (a small share of the
FLOPs), never the projections or MLPs, and a layer costs a handful of kernel calls whatever the number of
requests: on a busy 2-core CPU every parallel kernel call can cost a scheduler time slice, and on GPUs a
launch, so the call count matters as much as the FLOPs. Segments without a prefix use SDPA's causal mode
(right padding needs no mask there); the others get a boolean mask.

It plugs into transformers' ``AttentionInterface`` under :data:`ATTN_IMPLEMENTATION`. While a
:class:`SegmentPlan` is active (a context variable, so other threads are unaffected) the model's attention
modules call :func:`segment_attention_forward`; without one it defers to transformers' SDPA, masks
included, so a model left in this mode still computes exactly what SDPA does.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

ATTN_IMPLEMENTATION = "rlhf_rewards_segments"

_ACTIVE_PLAN: ContextVar[SegmentPlan | None] = ContextVar("rlhf_rewards_segment_plan", default=None)

#: A bucket's padded attention work may exceed the sum of its members' work by this factor.
BUCKET_SLACK = 1.3
#: Most gathered key rows per bucket (bounds the transient copy of keys/values).
BUCKET_MAX_KEYS = 32768


def _torch_at_least(major: int, minor: int) -> bool:
    parts = torch.__version__.split("+")[0].split(".")
    try:
        return (int(parts[0]), int(parts[1])) >= (major, minor)
    except (ValueError, IndexError):
        return False


#: ``scaled_dot_product_attention(..., enable_gqa=True)`` (torch >= 2.5) reads grouped keys without copying.
_SDPA_HAS_GQA = _torch_at_least(2, 5)


class SegmentAttentionUnsupported(RuntimeError):
    """The model asked for an attention feature segment attention does not implement (sliding window...)."""


@dataclass(eq=False)
class Segment:
    """One run of queries and the key ranges it reads (packed coordinates of the single row).

    Args:
        start: First packed position of the segment's own tokens.
        end: One past its last.
        prefix: Packed ``(start, end)`` ranges of its ancestors, in sequence order (fully visible).
        rows: For a pruned layer, the offsets (within the segment) of the only queries needed, ascending;
            ``None`` means all of them, an empty tensor none.
    """

    start: int
    end: int
    prefix: list[tuple[int, int]] = field(default_factory=list)
    rows: torch.Tensor | None = None

    @property
    def length(self) -> int:
        return self.end - self.start

    @property
    def prefix_length(self) -> int:
        return sum(e - s for s, e in self.prefix)


@dataclass(eq=False)
class _Item:
    q_rows: list[int]  # packed rows of the queries
    q_pos: list[int]  # each query's index among the item's keys (it sees keys 0..q_pos)
    k_rows: list[int]  # packed rows of the keys, in sequence order

    @property
    def work(self) -> int:
        return len(self.q_rows) * len(self.k_rows)


@dataclass(eq=False)
class _Bucket:
    batch: int
    q_len: int
    k_len: int
    q_index: torch.Tensor | None  # [batch * q_len], or None with q_slice
    k_index: torch.Tensor | None
    dst: torch.Tensor | None  # [batch * q_len] rows of the output (pads -> the trash row)
    mask: torch.Tensor | None  # [batch, 1, q_len, k_len] bool, or None: causal
    contiguous: tuple[int, int] | None = None  # one segment, no prefix: plain slices


@dataclass(eq=False)
class SegmentPlan:
    """The segments of one packed forward, and which layer (if any) only needs some query rows."""

    segments: list[Segment]
    total: int
    prune_layer: int | None = None
    calls: int = 0
    _buckets: dict[bool, list[_Bucket]] = field(default_factory=dict)
    _masks: dict = field(default_factory=dict)

    def buckets(self, pruned: bool, device: torch.device) -> list[_Bucket]:
        """The batched attention calls of a (pruned or full) layer; built once per forward."""
        if pruned not in self._buckets:
            self._buckets[pruned] = _make_buckets(self.segments, self.total, pruned, device)
        return self._buckets[pruned]


def _key_rows(seg: Segment, own_end: int) -> list[int]:
    rows: list[int] = []
    for s, e in seg.prefix:
        rows.extend(range(s, e))
    rows.extend(range(seg.start, own_end))
    return rows


def _make_buckets(segments: list[Segment], total: int, pruned: bool, device: torch.device) -> list[_Bucket]:
    causal: list[_Item] = []  # no prefix, every query: SDPA's causal mode
    masked: list[_Item] = []
    for seg in segments:
        p = seg.prefix_length
        if pruned and seg.rows is not None:
            if seg.rows.numel() == 0:
                continue
            offsets = [int(x) for x in seg.rows.tolist()]
            k_rows = _key_rows(seg, seg.start + offsets[-1] + 1)
            masked.append(_Item([seg.start + o for o in offsets], [p + o for o in offsets], k_rows))
        else:
            item = _Item(list(range(seg.start, seg.end)), list(range(p, p + seg.length)), _key_rows(seg, seg.end))
            (masked if seg.prefix else causal).append(item)
    buckets = []
    for items, is_causal in ((causal, True), (masked, False)):
        for group in _group(items):
            buckets.append(_bucket(group, is_causal, total, device))
    return buckets


def _group(items: list[_Item]) -> list[list[_Item]]:
    """Greedy grouping by key length so each group's padded work stays within ``BUCKET_SLACK``."""
    groups: list[list[_Item]] = []
    current: list[_Item] = []
    work = q_max = k_max = 0
    for item in sorted(items, key=lambda it: (len(it.k_rows), len(it.q_rows))):
        nq, nk = max(q_max, len(item.q_rows)), max(k_max, len(item.k_rows))
        n = len(current) + 1
        if current and (n * nq * nk > BUCKET_SLACK * (work + item.work) or n * nk > BUCKET_MAX_KEYS):
            groups.append(current)
            current, work, nq, nk = [], 0, len(item.q_rows), len(item.k_rows)
        current.append(item)
        work += item.work
        q_max, k_max = nq, nk
    if current:
        groups.append(current)
    return groups


def _bucket(items: list[_Item], is_causal: bool, total: int, device: torch.device) -> _Bucket:
    batch = len(items)
    q_len = max(len(it.q_rows) for it in items)
    k_len = max(len(it.k_rows) for it in items)
    if is_causal and batch == 1:
        s = items[0].q_rows[0]
        return _Bucket(1, q_len, k_len, None, None, None, None, contiguous=(s, s + q_len))
    # Index and mask building runs in numpy: single-threaded, no parallel-region overhead per item.
    q_index = np.zeros((batch, q_len), dtype=np.int64)
    dst = np.full((batch, q_len), total, dtype=np.int64)  # padding queries land in the trash row
    k_index = np.zeros((batch, k_len), dtype=np.int64)
    mask = None if is_causal else np.zeros((batch, 1, q_len, k_len), dtype=bool)
    cols = np.arange(k_len)
    for b, it in enumerate(items):
        nq, nk = len(it.q_rows), len(it.k_rows)
        q_index[b, :nq] = it.q_rows
        dst[b, :nq] = it.q_rows
        k_index[b, :nk] = it.k_rows
        if mask is not None:
            mask[b, 0, :nq, :nk] = cols[None, :nk] <= np.asarray(it.q_pos)[:, None]
            mask[b, 0, nq:, 0] = True  # padding queries see one key (no all-masked rows)
    as_tensor = lambda x: torch.from_numpy(x.reshape(-1)).to(device)  # noqa: E731
    return _Bucket(
        batch, q_len, k_len, as_tensor(q_index), as_tensor(k_index), as_tensor(dst),
        torch.from_numpy(mask).to(device) if mask is not None else None,
    )


def _additive(mask: torch.Tensor, dtype: torch.dtype, cache: dict) -> torch.Tensor:
    """The boolean mask as an additive float mask (SDPA would convert it on every call otherwise)."""
    key = (id(mask), dtype)
    if key not in cache:
        cache[key] = torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill_(~mask, float("-inf"))
    return cache[key]


@contextlib.contextmanager
def active_plan(plan: SegmentPlan) -> Iterator[SegmentPlan]:
    """Make ``plan`` the one attention calls in this context use."""
    token = _ACTIVE_PLAN.set(plan)
    try:
        yield plan
    finally:
        _ACTIVE_PLAN.reset(token)


def _sdpa(query, key, value, *, mask, is_causal, scale, groups):
    if groups > 1:
        if _SDPA_HAS_GQA:
            return F.scaled_dot_product_attention(
                query, key, value, attn_mask=mask, is_causal=is_causal, scale=scale, enable_gqa=True
            )
        key = key.repeat_interleave(groups, dim=1)
        value = value.repeat_interleave(groups, dim=1)
    return F.scaled_dot_product_attention(query, key, value, attn_mask=mask, is_causal=is_causal, scale=scale)


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
    plan = _ACTIVE_PLAN.get()
    if plan is None:
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs)
    for name in ("sliding_window", "softcap", "s_aux"):
        if kwargs.get(name) is not None:
            raise SegmentAttentionUnsupported(f"segment attention does not implement `{name}`")
    total = plan.total
    if query.shape[0] != 1 or query.shape[2] != total or key.shape[2] != total:
        raise SegmentAttentionUnsupported(
            f"unexpected attention shapes {tuple(query.shape)} / {tuple(key.shape)} for a packed row of {total}"
        )
    plan.calls += 1
    heads, kv_heads, head_dim = query.shape[1], key.shape[1], value.shape[-1]
    groups = heads // kv_heads
    pruned = plan.prune_layer is not None and getattr(module, "layer_idx", None) == plan.prune_layer
    buckets = plan.buckets(pruned, query.device)
    # Token-major views: [T, heads, d].
    q_t, k_t, v_t = query[0].transpose(0, 1), key[0].transpose(0, 1), value[0].transpose(0, 1)
    out = (query.new_zeros if pruned else query.new_empty)((total + 1, heads, head_dim))  # +1: trash row
    for b in buckets:
        if b.contiguous is not None:
            s, e = b.contiguous
            res = _sdpa(query[:, :, s:e], key[:, :, s:e], value[:, :, s:e], mask=None, is_causal=True,
                        scale=scaling, groups=groups)
            out[s:e] = res[0].transpose(0, 1)
            continue
        q = q_t.index_select(0, b.q_index).view(b.batch, b.q_len, heads, head_dim).transpose(1, 2)
        k = k_t.index_select(0, b.k_index).view(b.batch, b.k_len, kv_heads, head_dim).transpose(1, 2)
        v = v_t.index_select(0, b.k_index).view(b.batch, b.k_len, kv_heads, head_dim).transpose(1, 2)
        mask = _additive(b.mask, query.dtype, plan._masks) if b.mask is not None else None
        res = _sdpa(q, k, v, mask=mask, is_causal=b.mask is None, scale=scaling, groups=groups)
        out.index_copy_(0, b.dst, res.transpose(1, 2).reshape(b.batch * b.q_len, heads, head_dim))
    return out[:total].unsqueeze(0), None


def _segment_mask(*args, **kwargs):
    """Mask-interface entry: no mask while a plan is active, SDPA's mask otherwise."""
    if _ACTIVE_PLAN.get() is not None:
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


__all__ = [
    "ATTN_IMPLEMENTATION",
    "Segment",
    "SegmentAttentionUnsupported",
    "SegmentPlan",
    "active_plan",
    "register",
    "segment_attention",
    "segment_attention_forward",
]
