"""Segment attention: exact attention over packed, prefix-shared token runs, with no dense ``total^2`` mask.

A packed forward holds one row of tokens made of *segments* (the nodes of
:mod:`rlhf_rewards.engine.prefix_cache`). A segment's queries attend to the keys of its ancestor segments
(its shared prefix, all visible) and causally to its own keys. The cost is the sum over segments of
``queries x (prefix + own keys)``, not ``total^2`` as with the block-causal mask transformers builds for
packed ``position_ids`` on SDPA.

A segment's attention is split into parts whose results are merged exactly through their log-sum-exp:

- **Own part**: every segment attends causally to its own keys. Segments are grouped into a few
  *buckets* of similar sizes, once per forward; each bucket runs as one batched attention call on a small
  padded batch gathered with ``index_select`` (a lone segment uses plain slices). Padding only touches
  attention, never the projections or MLPs, and a layer costs a handful of kernel calls whatever the
  number of requests: on a busy 2-core CPU every parallel kernel call can cost a scheduler time slice,
  and on GPUs a launch, so the call count matters as much as the FLOPs.
- **Ancestor parts**: for every node with descendants, all the queries below it (contiguous in the
  packed row, since a subtree is laid out right after its root) attend, unmasked, to that node's keys in
  one call on slices of the row. A GRPO prompt's keys are therefore read in place by its completions,
  never copied per completion, and no padding or mask is spent on the shared part.

The partial results are combined with ``out = sum_i exp(lse_i - lse) * out_i``, ``lse = logaddexp_i(lse_i)``,
which is the softmax over the union of the keys (exact up to float rounding).

On CUDA in float16/bfloat16 the own parts instead run as one FlashAttention varlen call over the whole row
(:mod:`~rlhf_rewards.engine.varlen_attention`); the ancestor parts and the merge are the same.

With ``SegmentPlan(deterministic=True)`` none of the above runs: every query goes through the one blocked
kernel of :mod:`~rlhf_rewards.engine.deterministic` (fixed key blocks anchored at position 0 of each
sequence, one order of summation whether a prefix is shared or not), on CUDA too.

It plugs into transformers' ``AttentionInterface`` under :data:`ATTN_IMPLEMENTATION`. While a
:class:`SegmentPlan` is active (a context variable, so other threads are unaffected) the model's attention
modules call :func:`segment_attention_forward`; without one it defers to transformers' SDPA, masks
included, so a model left in this mode still computes exactly what SDPA does.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from rlhf_rewards.engine import varlen_attention
from rlhf_rewards.engine.deterministic import BlockedLayout, Workspace

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
    lse: bool = False  # the segment has ancestors: its log-sum-exp is needed for the merge

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
    lse: bool = False


@dataclass(eq=False)
class _ExtBucket:
    """Queries of several segments attending, unmasked, to their cached (external) keys, as one padded call.

    Each layer gathers the items' keys (``k_index``, rows of the layer's cached pieces concatenated in address
    order) in one call into a buffer kept for the forward, or reads a lone piece in place (``piece``): a few
    large copies, not one per piece, as every kernel call can cost a time slice on a busy CPU. Padded key
    slots are masked, padded query slots land in the trash row.
    """

    batch: int
    q_len: int
    k_len: int
    q_index: torch.Tensor  # [batch * q_len] packed rows
    dst: torch.Tensor  # [batch * q_len] rows of the output (pads -> the trash row)
    k_index: torch.Tensor | None  # [batch * k_len] rows of the concatenated pieces
    mask: torch.Tensor | None  # [batch, 1, q_len, k_len] bool (True: visible), or None
    piece: int | None = None  # the address of the one piece read in place
    buffers: tuple[torch.Tensor, torch.Tensor] | None = None


@dataclass(eq=False)
class _Cross:
    """Queries of a node's descendants attending (unmasked) to the node's own keys."""

    k_range: tuple[int, int]
    q_range: tuple[int, int] | None  # contiguous query rows, or
    q_index: torch.Tensor | None  # their packed rows


@dataclass(eq=False)
class ExternalKV:
    """Keys and values a forward reads from outside its packed row (cross-call cached prefixes,
    :mod:`~rlhf_rewards.engine.kv_cache`), and the capture of the row's own keys and values for the cache.

    Args:
        pieces: By address (``total + 1 + offset``: after the row and its trash/zero row), one cached run's
            keys and values ``[layers, 2, kv_heads, n, head_dim]``; a segment's ``prefix`` names it by its
            address range.
        capture: Called once per attention layer with ``(layer index, keys, values)``, both
            ``[kv_heads, total, head_dim]`` (rotated keys), before attention runs.
    """

    pieces: dict[int, torch.Tensor] = field(default_factory=dict)
    capture: Callable[[int, torch.Tensor, torch.Tensor], None] | None = None
    _cat: torch.Tensor | None = None

    @property
    def rows(self) -> int:
        return sum(int(kv.shape[3]) for kv in self.pieces.values())

    def concatenated(self, layer: int) -> torch.Tensor:
        """``[2, kv_heads, rows, head_dim]``: every piece's keys and values of ``layer``, in address order, in a
        buffer kept for the forward (written again by every layer)."""
        parts = [self.pieces[a][layer] for a in sorted(self.pieces)]
        if self._cat is None:
            shape = (2, parts[0].shape[1], self.rows, parts[0].shape[3])
            self._cat = parts[0].new_empty(shape)
        return torch.cat(parts, dim=2, out=self._cat) if len(parts) > 1 else parts[0]

    def kv(self, layer: int, start: int, end: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values ``[1, kv_heads, end - start, head_dim]`` of the piece at address ``start``."""
        piece = self.pieces[start]
        if piece.shape[3] != end - start:
            raise RuntimeError(
                f"external key range {start}:{end} does not match its piece ({piece.shape[3]} rows)"
            )
        return piece[layer, 0].unsqueeze(0), piece[layer, 1].unsqueeze(0)


def _layer_index(module: nn.Module) -> int:
    layer = getattr(module, "layer_idx", None)
    if layer is None:
        raise SegmentAttentionUnsupported("cached keys and values need attention modules with a layer_idx")
    return int(layer)


@dataclass(eq=False)
class SegmentPlan:
    """The segments of one packed forward, and which layer (if any) only needs some query rows."""

    segments: list[Segment]
    total: int
    prune_layer: int | None = None
    calls: int = 0
    #: Batch-invariant attention (:mod:`~rlhf_rewards.engine.deterministic`) instead of buckets and merges.
    deterministic: bool = False
    _buckets: dict[bool, tuple[list[_Bucket], list[_Cross], list[_ExtBucket]]] = field(default_factory=dict)
    _masks: dict = field(default_factory=dict)
    _varlen: varlen_attention.VarlenLayout | None = None
    _blocked: dict = field(default_factory=dict)
    #: Scratch buffers of the deterministic kernel (:class:`~rlhf_rewards.engine.deterministic.Workspace`),
    #: usually the engine's; one is made for the plan when none is given.
    workspace: Workspace | None = None
    #: Cached keys/values read from outside the row, and the capture of the row's own (:class:`ExternalKV`).
    external: ExternalKV | None = None

    def blocked_layout(self, pruned: bool, device: torch.device) -> BlockedLayout:
        """The deterministic kernel's tiles for a (pruned or full) layer; built once."""
        if pruned not in self._blocked:
            if self.workspace is None:
                self.workspace = Workspace()  # one set of scratch buffers for the full and pruned layers
            self._blocked[pruned] = BlockedLayout(
                self.segments,
                self.total,
                pruned,
                device,
                workspace=self.workspace,
                external_rows=self.external.rows if self.external else 0,
            )
        return self._blocked[pruned]

    def varlen_layout(self, device: torch.device) -> varlen_attention.VarlenLayout:
        """The varlen kernel's arguments for this row (CUDA path); built once."""
        if self._varlen is None:
            cross_rows: dict[tuple[int, int], list[int]] = {}
            for seg in self.segments:  # every query row: the varlen path never prunes
                for key_range in seg.prefix:
                    cross_rows.setdefault(key_range, []).extend(range(seg.start, seg.end))
            self._varlen = varlen_attention.VarlenLayout(
                self.segments, self.total, _crosses(cross_rows, device), device
            )
        return self._varlen

    def buckets(
        self, pruned: bool, device: torch.device
    ) -> tuple[list[_Bucket], list[_Cross], list[_ExtBucket]]:
        """The attention calls of a (pruned or full) layer: own-part buckets, ancestor parts in the row, and
        cached-ancestor parts; built once."""
        if pruned not in self._buckets:
            self._buckets[pruned] = _make_buckets(self.segments, self.total, pruned, device)
        return self._buckets[pruned]


def _make_buckets(
    segments: list[Segment],
    total: int,
    pruned: bool,
    device: torch.device,
) -> tuple[list[_Bucket], list[_Cross], list[_ExtBucket]]:
    causal: dict[bool, list[_Item]] = {False: [], True: []}  # every query: SDPA's causal mode
    masked: dict[bool, list[_Item]] = {False: [], True: []}  # some queries (pruned layer): explicit mask
    cross_rows: dict[tuple[int, int], list[int]] = {}
    ext_rows: dict[tuple[tuple[int, int], ...], list[int]] = {}
    for seg in segments:
        has_prefix = bool(seg.prefix)
        if pruned and seg.rows is not None:
            if seg.rows.numel() == 0:
                continue
            offsets = [int(x) for x in seg.rows.tolist()]
            q_rows = [seg.start + o for o in offsets]
            masked[has_prefix].append(
                _Item(q_rows, offsets, list(range(seg.start, seg.start + offsets[-1] + 1)), lse=has_prefix)
            )
        else:
            q_rows = list(range(seg.start, seg.end))
            causal[has_prefix].append(_Item(q_rows, list(range(seg.length)), q_rows, lse=has_prefix))
        ext = tuple(r for r in seg.prefix if r[0] > total)
        if ext:
            ext_rows.setdefault(ext, []).extend(q_rows)
        for key_range in seg.prefix:
            if key_range[0] <= total:
                cross_rows.setdefault(key_range, []).extend(q_rows)
    buckets = []
    for items, is_causal in ((causal, True), (masked, False)):
        for lse in (False, True):
            for group in _group(items[lse]):
                buckets.append(_bucket(group, is_causal, total, device, lse))
    return buckets, _crosses(cross_rows, device), _ext_buckets(ext_rows, total, device)


def _ext_buckets(
    ext_rows: dict[tuple[tuple[int, int], ...], list[int]], total: int, device: torch.device
) -> list[_ExtBucket]:
    offsets: dict[int, int] = {}
    for ranges in ext_rows:
        for s, e in ranges:
            offsets[s] = e - s
    off = 0
    for address in sorted(offsets):  # concatenation order: by address
        offsets[address], off = off, off + offsets[address]
    """Cached-ancestor parts: one item per distinct run of cached pieces (the queries of every segment reading
    it), grouped into padded calls by size like the own parts. Sequences with different cache hits (a batch
    of repeated texts) then cost a few calls per layer, not one per sequence."""
    items, ranges_of = [], {}
    for ranges, rows in ext_rows.items():
        item = _Item(sorted(set(rows)), [], list(range(sum(e - s for s, e in ranges))), lse=True)
        items.append(item)
        ranges_of[id(item)] = ranges
    out = []
    as_tensor = lambda x: torch.from_numpy(x.reshape(-1)).to(device)  # noqa: E731
    for group in _group(items):
        batch, q_len, k_len = (
            len(group),
            max(len(it.q_rows) for it in group),
            max(len(it.k_rows) for it in group),
        )
        q_index = np.zeros((batch, q_len), dtype=np.int64)
        dst = np.full((batch, q_len), total, dtype=np.int64)  # padding queries land in the trash row
        for b, it in enumerate(group):
            q_index[b, : len(it.q_rows)] = it.q_rows
            dst[b, : len(it.q_rows)] = it.q_rows
        ranges = ranges_of[id(group[0])]
        if batch == 1 and len(ranges) == 1:  # one piece: read in place
            out.append(
                _ExtBucket(
                    1, q_len, k_len, as_tensor(q_index), as_tensor(dst), None, None, piece=ranges[0][0]
                )
            )
            continue
        k_index = np.zeros((batch, k_len), dtype=np.int64)
        mask = np.zeros((batch, 1, q_len, k_len), dtype=bool)
        for b, it in enumerate(group):
            rows = np.concatenate([np.arange(offsets[s], offsets[s] + e - s) for s, e in ranges_of[id(it)]])
            k_index[b, : rows.size] = rows
            mask[b, 0, :, : rows.size] = True
        out.append(
            _ExtBucket(
                batch,
                q_len,
                k_len,
                as_tensor(q_index),
                as_tensor(dst),
                as_tensor(k_index),
                torch.from_numpy(mask).to(device),
            )
        )
    return out


def _crosses(cross_rows: dict[tuple[int, int], list[int]], device: torch.device) -> list[_Cross]:
    """One ancestor part per shared key range, its query rows as a slice where they are contiguous."""
    crosses = []
    for key_range, rows in cross_rows.items():
        rows.sort()
        if rows[-1] - rows[0] + 1 == len(rows):
            crosses.append(_Cross(key_range, (rows[0], rows[-1] + 1), None))
        else:
            crosses.append(_Cross(key_range, None, torch.tensor(rows, dtype=torch.long, device=device)))
    return crosses


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


def _bucket(items: list[_Item], is_causal: bool, total: int, device: torch.device, lse: bool) -> _Bucket:
    batch = len(items)
    q_len = max(len(it.q_rows) for it in items)
    k_len = max(len(it.k_rows) for it in items)
    if is_causal and batch == 1:
        s = items[0].q_rows[0]
        return _Bucket(1, q_len, k_len, None, None, None, None, contiguous=(s, s + q_len), lse=lse)
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
        batch,
        q_len,
        k_len,
        as_tensor(q_index),
        as_tensor(k_index),
        as_tensor(dst),
        torch.from_numpy(mask).to(device) if mask is not None else None,
        lse=lse,
    )


def _additive(mask: torch.Tensor, dtype: torch.dtype, cache: dict) -> torch.Tensor:
    """The boolean mask as an additive float mask (SDPA would convert it on every call otherwise)."""
    key = (id(mask), dtype)
    if key not in cache:
        cache[key] = torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill_(
            ~mask, float("-inf")
        )
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


def _sdpa_lse(query, key, value, *, mask, is_causal, scale):
    """Attention output ``[B, H, L, d]`` and its float32 log-sum-exp ``[B, H, L]`` (grouped keys allowed).

    CPU uses the flash kernel behind ``scaled_dot_product_attention``, which returns the log-sum-exp;
    other devices compute it with plain matmuls (only the shared-prefix parts take this path).
    """
    if query.device.type == "cpu":
        return torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
            query, key, value, 0.0, is_causal, attn_mask=mask, scale=scale
        )
    return _sdpa_lse_math(query, key, value, mask=mask, is_causal=is_causal, scale=scale)


def _sdpa_lse_math(query, key, value, *, mask, is_causal, scale):
    """:func:`_sdpa_lse` with plain matmuls in float32, for devices without a log-sum-exp kernel here."""
    groups = query.shape[1] // key.shape[1]
    if groups > 1:
        key, value = key.repeat_interleave(groups, dim=1), value.repeat_interleave(groups, dim=1)
    scores = torch.matmul(query.float(), key.float().transpose(-1, -2)) * (scale or query.shape[-1] ** -0.5)
    if is_causal:
        scores = scores.masked_fill(
            torch.ones(scores.shape[-2:], dtype=torch.bool, device=scores.device).triu(1), float("-inf")
        )
    if mask is not None:
        scores = scores + mask.float()
    lse = torch.logsumexp(scores, dim=-1)
    out = torch.matmul(torch.exp(scores - lse.unsqueeze(-1)), value.float()).to(query.dtype)
    return out, lse


def _merge(acc: torch.Tensor, acc_lse: torch.Tensor, out: torch.Tensor, lse: torch.Tensor) -> None:
    """Fold a partial result (``out [n, H, d]``, ``lse [n, H]``) into the running one, in place."""
    new = torch.logaddexp(acc_lse, lse)
    acc.mul_(torch.exp(acc_lse - new).unsqueeze(-1)).add_(out * torch.exp(lse - new).unsqueeze(-1))
    acc_lse.copy_(new)


def deterministic_layout(module: nn.Module, device: torch.device) -> BlockedLayout:
    """The active deterministic plan's :class:`~rlhf_rewards.engine.deterministic.BlockedLayout` for ``module``'s
    layer (pruned or not), counted as one attention call of the forward. The direct decoder loop writes its
    queries, keys and values straight into it."""
    plan = _ACTIVE_PLAN.get()
    if plan is None or not plan.deterministic:
        raise SegmentAttentionUnsupported(
            "deterministic attention needs an active SegmentPlan(deterministic=True)"
        )
    plan.calls += 1
    pruned = plan.prune_layer is not None and getattr(module, "layer_idx", None) == plan.prune_layer
    layout = plan.blocked_layout(pruned, device)
    ext = plan.external
    if ext is not None:
        layer = _layer_index(module)
        for address, piece in ext.pieces.items():
            layout.write_external(address, piece[layer, 0].transpose(0, 1), piece[layer, 1].transpose(0, 1))
        if ext.capture is not None:
            capture = ext.capture
            layout.capture = lambda k, v: capture(layer, k, v)
    return layout


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
        from rlhf_rewards.engine.deterministic import blocked_attention

        return blocked_attention(deterministic_layout(module, query.device), query, key, value, scaling), None
    plan.calls += 1
    ext = plan.external
    layer = _layer_index(module) if ext is not None else -1
    if ext is not None and ext.capture is not None:
        ext.capture(layer, key[0], value[0])

    def keys_of(ks: int, ke: int) -> tuple[torch.Tensor, torch.Tensor]:
        if ks > total:
            assert ext is not None
            return ext.kv(layer, ks, ke)
        return key[:, :, ks:ke], value[:, :, ks:ke]

    if varlen_attention.applies(query):
        return varlen_attention.forward(
            plan.varlen_layout(query.device), query, key, value, scaling, _merge, keys_of=keys_of
        ), None
    heads, kv_heads, head_dim = query.shape[1], key.shape[1], value.shape[-1]
    groups = heads // kv_heads
    pruned = plan.prune_layer is not None and getattr(module, "layer_idx", None) == plan.prune_layer
    buckets, crosses, ext_buckets = plan.buckets(pruned, query.device)
    # Token-major views: [T, heads, d]. Rows of a merged result accumulate in float32.
    q_t, k_t, v_t = query[0].transpose(0, 1), key[0].transpose(0, 1), value[0].transpose(0, 1)
    merged = bool(crosses or ext_buckets)
    acc_dtype = torch.float32 if merged else query.dtype
    out = (
        query.new_zeros((total + 1, heads, head_dim), dtype=acc_dtype)
        if pruned
        else query.new_empty((total + 1, heads, head_dim), dtype=acc_dtype)
    )  # +1: trash row for padding
    out_lse = query.new_zeros((total + 1, heads), dtype=torch.float32) if merged else None
    for b in buckets:
        mask = _additive(b.mask, query.dtype, plan._masks) if b.mask is not None else None
        if b.contiguous is not None:
            s, e = b.contiguous
            q, k, v = query[:, :, s:e], key[:, :, s:e], value[:, :, s:e]
        else:
            q = q_t.index_select(0, b.q_index).view(b.batch, b.q_len, heads, head_dim).transpose(1, 2)
            k = k_t.index_select(0, b.k_index).view(b.batch, b.k_len, kv_heads, head_dim).transpose(1, 2)
            v = v_t.index_select(0, b.k_index).view(b.batch, b.k_len, kv_heads, head_dim).transpose(1, 2)
        if b.lse:
            res, lse = _sdpa_lse(q, k, v, mask=mask, is_causal=b.mask is None, scale=scaling)
        else:
            res = _sdpa(q, k, v, mask=mask, is_causal=b.mask is None, scale=scaling, groups=groups)
        if b.contiguous is not None:
            out[s:e] = res[0].transpose(0, 1)
            if b.lse:
                out_lse[s:e] = lse[0].transpose(0, 1)
            continue
        out.index_copy_(
            0, b.dst, res.transpose(1, 2).reshape(b.batch * b.q_len, heads, head_dim).to(acc_dtype)
        )
        if b.lse:
            out_lse.index_copy_(0, b.dst, lse.transpose(1, 2).reshape(b.batch * b.q_len, heads))
    for c in crosses:
        k, v = keys_of(*c.k_range)
        if c.q_range is not None:
            qs, qe = c.q_range
            res, lse = _sdpa_lse(query[:, :, qs:qe], k, v, mask=None, is_causal=False, scale=scaling)
            _merge(out[qs:qe], out_lse[qs:qe], res[0].transpose(0, 1), lse[0].transpose(0, 1))
        else:
            q = q_t.index_select(0, c.q_index).transpose(0, 1).unsqueeze(0)
            res, lse = _sdpa_lse(q, k, v, mask=None, is_causal=False, scale=scaling)
            acc, acc_lse = out.index_select(0, c.q_index), out_lse.index_select(0, c.q_index)
            _merge(acc, acc_lse, res[0].transpose(0, 1), lse[0].transpose(0, 1))
            out.index_copy_(0, c.q_index, acc)
            out_lse.index_copy_(0, c.q_index, acc_lse)
    if ext_buckets:
        assert ext is not None
        _attend_cached(ext, layer, ext_buckets, q_t, out, out_lse, scaling, plan._masks)
    return out[:total].to(query.dtype).unsqueeze(0), None


def _attend_cached(
    ext: ExternalKV,
    layer: int,
    ext_buckets: list[_ExtBucket],
    q_t: torch.Tensor,
    out: torch.Tensor,
    out_lse: torch.Tensor,
    scaling: float | None,
    masks: dict,
) -> None:
    """The cached-ancestor parts of a layer, merged into ``out``/``out_lse`` (see :func:`_ext_buckets`)."""
    heads, head_dim = q_t.shape[1], q_t.shape[2]
    cat = None
    for b in ext_buckets:
        q = q_t.index_select(0, b.q_index).view(b.batch, b.q_len, heads, head_dim).transpose(1, 2)
        if b.piece is not None:
            k, v = ext.kv(layer, b.piece, b.piece + b.k_len)
            mask = None
        else:
            if cat is None:
                cat = ext.concatenated(layer)
            kv_heads = cat.shape[1]
            if b.buffers is None:
                shape = (kv_heads, b.batch * b.k_len, head_dim)
                b.buffers = (cat.new_empty(shape), cat.new_empty(shape))
            k = torch.index_select(cat[0], 1, b.k_index, out=b.buffers[0])
            v = torch.index_select(cat[1], 1, b.k_index, out=b.buffers[1])
            k = k.view(kv_heads, b.batch, b.k_len, head_dim).transpose(0, 1)
            v = v.view(kv_heads, b.batch, b.k_len, head_dim).transpose(0, 1)
            mask = _additive(b.mask, q.dtype, masks)
        res, lse = _sdpa_lse(q, k, v, mask=mask, is_causal=False, scale=scaling)
        res = res.transpose(1, 2).reshape(b.batch * b.q_len, heads, head_dim).to(out.dtype)
        lse = lse.transpose(1, 2).reshape(b.batch * b.q_len, heads)
        acc, acc_lse = out.index_select(0, b.dst), out_lse.index_select(0, b.dst)
        _merge(acc, acc_lse, res, lse)
        out.index_copy_(0, b.dst, acc)
        out_lse.index_copy_(0, b.dst, acc_lse)


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
    "ExternalKV",
    "Segment",
    "SegmentAttentionUnsupported",
    "SegmentPlan",
    "active_plan",
    "register",
    "segment_attention",
    "segment_attention_forward",
]
