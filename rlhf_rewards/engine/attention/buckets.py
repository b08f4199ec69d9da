"""The bucket backend of segment attention: exact attention over a packed row with no dense ``total^2`` mask.

The cost is the sum over segments of ``queries x (prefix + own keys)``, not ``total^2`` as with the
block-causal mask transformers builds for packed ``position_ids`` on SDPA. A segment's attention is split
into parts merged through their log-sum-exp (:mod:`~rlhf_rewards.engine.attention.kernels`):

- **Own part**: every segment attends causally to its own keys. Up to :data:`LONE_ITEMS` segments run
  one call each on plain slices of the row; more are grouped into a few *buckets* of similar sizes, once
  per forward, each bucket one batched attention call on a small padded batch gathered with
  ``index_select``. Padding only touches attention, never the projections or MLPs, and a layer costs a handful of kernel calls whatever the
  number of requests: on a busy CPU with few cores every parallel kernel call can cost a time slice,
  and on GPUs a launch, so the call count matters as much as the FLOPs.
- **Ancestor parts**: for every node with descendants, all the queries below it (contiguous in the
  packed row, since a subtree is laid out right after its root) attend, unmasked, to that node's keys in
  one call on slices of the row. A GRPO prompt's keys are therefore read in place by its completions,
  never copied per completion, and no padding or mask is spent on the shared part.
- **Cached-ancestor parts**: queries reading keys and values kept across calls
  (:class:`~rlhf_rewards.engine.attention.plan.ExternalKV`): alone (their pieces concatenated, unmasked) or
  grouped into padded calls like the own parts.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from rlhf_rewards.engine.attention.kernels import merge, merge_rows, sdpa, sdpa_lse
from rlhf_rewards.engine.attention.plan import ExternalKV, Segment, SegmentPlan

#: A bucket's padded attention work may exceed the sum of its members' work by this factor.
BUCKET_SLACK = 1.3
#: Most gathered key rows per bucket (bounds the transient copy of keys/values).
BUCKET_MAX_KEYS = 32768

#: Up to this many segments of a kind (own parts, distinct cached prefixes) in a forward are attended one call
#: each on plain slices, unpadded (a server's batch of per-sample requests): no gathered copies, no masks, no
#: padding. More are grouped into padded calls, where fewer kernel calls win.
LONE_ITEMS = 8

#: ``keys_of(start, end)``: the keys and values ``[1, kv_heads, n, d]`` of an ancestor range.
KeysOf = Callable[[int, int], tuple[torch.Tensor, torch.Tensor]]


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
    q_index: torch.Tensor | None  # [batch * q_len], or None with span
    k_index: torch.Tensor | None
    dst: torch.Tensor | None  # [batch * q_len] rows of the output (pads -> the trash row)
    mask: torch.Tensor | None  # [batch, 1, q_len, k_len] bool, or None: causal (or all visible with ``span``)
    #: One item on plain slices, no gathers: ``(q_start, q_end, k_start, k_end)``, causal (a segment's own
    #: part) or, with ``causal`` False, one query seeing every key (the pruned layer's last-token row).
    span: tuple[int, int, int, int] | None = None
    causal: bool = True
    lse: bool = False


@dataclass(eq=False)
class _ExtBucket:
    """Queries of several segments attending, unmasked, to their cached (external) keys, as one padded call.

    Each layer gathers the items' keys (``k_index``, rows of the layer's cached pieces concatenated in address
    order) in one call into a buffer kept for the forward: a few large copies, not one per piece, as every
    kernel call can cost a time slice on a busy CPU. Padded key slots are masked, padded query slots land in
    the trash row. A lone item (``pieces``) reads its pieces unpadded and unmasked
    (:meth:`~rlhf_rewards.engine.attention.plan.ExternalKV.joined`; a hit is usually two or more pieces:
    prompts share a template's head), its contiguous queries as a slice (``q_slice``, no index tensors).
    """

    batch: int
    q_len: int
    k_len: int
    q_index: torch.Tensor | None  # [batch * q_len] packed rows, or None with q_slice
    dst: (
        torch.Tensor | None
    )  # [batch * q_len] rows of the output (pads -> the trash row), or None with q_slice
    k_index: torch.Tensor | None  # [batch * k_len] rows of the concatenated pieces
    mask: torch.Tensor | None  # [batch, 1, q_len, k_len] bool (True: visible), or None
    pieces: tuple[tuple[int, int], ...] | None = None  # a lone item's pieces (address ranges), no padding
    buffers: tuple[torch.Tensor, torch.Tensor] | None = None  # the gathered keys and values
    q_slice: tuple[int, int] | None = None  # one segment's contiguous query rows: sliced and merged in place


@dataclass(eq=False)
class Cross:
    """Queries of a node's descendants attending (unmasked) to the node's own keys."""

    k_range: tuple[int, int]
    q_range: tuple[int, int] | None  # contiguous query rows, or
    q_index: torch.Tensor | None  # their packed rows


@dataclass(eq=False)
class Buckets:
    """The attention calls of a (pruned or full) layer: own-part buckets, ancestor parts in the row, and
    cached-ancestor parts."""

    own: list[_Bucket]
    crosses: list[Cross]
    cached: list[_ExtBucket]


def plan_buckets(plan: SegmentPlan, pruned: bool, device: torch.device) -> Buckets:
    """The plan's :class:`Buckets` for a (pruned or full) layer; built once per forward."""
    return plan.layout(("buckets", pruned), lambda: _make_buckets(plan.segments, plan.total, pruned, device))


def _make_buckets(segments: list[Segment], total: int, pruned: bool, device: torch.device) -> Buckets:
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
            for group in _groups(items[lse]):
                buckets.append(_bucket(group, is_causal, total, device, lse))
    return Buckets(buckets, crosses(cross_rows, device), _ext_buckets(ext_rows, total, device))


def _as_tensor(x: np.ndarray, device: torch.device) -> torch.Tensor:
    return torch.from_numpy(x.reshape(-1)).to(device)


def _ext_buckets(
    ext_rows: dict[tuple[tuple[int, int], ...], list[int]], total: int, device: torch.device
) -> list[_ExtBucket]:
    """Cached-ancestor parts: one item per distinct run of cached pieces (the queries of every segment reading
    it), grouped into padded calls by size like the own parts. Sequences with different cache hits (a batch
    of repeated texts) then cost a few calls per layer, not one per sequence."""
    offsets: dict[int, int] = {}
    for ranges in ext_rows:
        for s, e in ranges:
            offsets[s] = e - s
    off = 0
    for address in sorted(offsets):  # concatenation order: by address
        offsets[address], off = off, off + offsets[address]
    items, ranges_of = [], {}
    for ranges, rows in ext_rows.items():
        item = _Item(sorted(set(rows)), [], list(range(sum(e - s for s, e in ranges))), lse=True)
        items.append(item)
        ranges_of[id(item)] = ranges
    out = []
    for group in _groups(items):
        batch, q_len, k_len = (
            len(group),
            max(len(it.q_rows) for it in group),
            max(len(it.k_rows) for it in group),
        )
        rows = group[0].q_rows
        pieces = ranges_of[id(group[0])] if batch == 1 else None  # one item: its pieces as they are, unmasked
        q_slice = None
        if pieces is not None and rows[-1] - rows[0] + 1 == len(rows):
            q_slice = (rows[0], rows[-1] + 1)  # contiguous queries: a slice, no index tensors
        q_index = dst = None
        if q_slice is None:
            q_rows = np.zeros((batch, q_len), dtype=np.int64)
            dst_rows = np.full((batch, q_len), total, dtype=np.int64)  # padding queries land in the trash row
            for b, it in enumerate(group):
                q_rows[b, : len(it.q_rows)] = it.q_rows
                dst_rows[b, : len(it.q_rows)] = it.q_rows
            q_index, dst = _as_tensor(q_rows, device), _as_tensor(dst_rows, device)
        if pieces is not None:
            out.append(_ExtBucket(1, q_len, k_len, q_index, dst, None, None, pieces=pieces, q_slice=q_slice))
            continue
        k_index = np.zeros((batch, k_len), dtype=np.int64)
        mask = np.zeros((batch, 1, q_len, k_len), dtype=bool)
        for b, it in enumerate(group):
            keys = np.concatenate([np.arange(offsets[s], offsets[s] + e - s) for s, e in ranges_of[id(it)]])
            k_index[b, : keys.size] = keys
            mask[b, 0, :, : keys.size] = True
        out.append(
            _ExtBucket(
                batch,
                q_len,
                k_len,
                q_index,
                dst,
                _as_tensor(k_index, device),
                torch.from_numpy(mask).to(device),
            )
        )
    return out


def crosses(cross_rows: dict[tuple[int, int], list[int]], device: torch.device) -> list[Cross]:
    """One ancestor part per shared key range, its query rows as a slice where they are contiguous."""
    parts = []
    for key_range, rows in cross_rows.items():
        rows.sort()
        if rows[-1] - rows[0] + 1 == len(rows):
            parts.append(Cross(key_range, (rows[0], rows[-1] + 1), None))
        else:
            parts.append(Cross(key_range, None, torch.tensor(rows, dtype=torch.long, device=device)))
    return parts


def _groups(items: list[_Item]) -> list[list[_Item]]:
    """Each item alone when there are at most :data:`LONE_ITEMS`, else :func:`_group`."""
    return [[it] for it in items] if len(items) <= LONE_ITEMS else _group(items)


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
    if batch == 1:
        it = items[0]
        if is_causal:
            s = it.q_rows[0]
            return _Bucket(
                1, q_len, k_len, None, None, None, None, span=(s, s + q_len, s, s + q_len), lse=lse
            )
        if q_len == 1 and it.q_pos[0] == k_len - 1:  # the query sees its segment's keys up to itself
            q, k = it.q_rows[0], it.k_rows[0]
            return _Bucket(
                1, 1, k_len, None, None, None, None, span=(q, q + 1, k, k + k_len), causal=False, lse=lse
            )
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
    return _Bucket(
        batch,
        q_len,
        k_len,
        _as_tensor(q_index, device),
        _as_tensor(k_index, device),
        _as_tensor(dst, device),
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


def bucketed_attention(
    plan: SegmentPlan,
    pruned: bool,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    scaling: float | None,
    keys_of: KeysOf,
    layer: int,
) -> torch.Tensor:
    """Attention of a packed row through the plan's buckets: ``query [1, H, T, d]``, ``key/value
    [1, Hkv, T, d]`` -> ``[1, T, H, d]``. In a pruned layer only the segments' ``rows`` are computed (the
    others are zero). ``layer`` indexes the cached pieces of ``plan.external``."""
    total = plan.total
    heads, kv_heads, head_dim = query.shape[1], key.shape[1], value.shape[-1]
    groups = heads // kv_heads
    calls = plan_buckets(plan, pruned, query.device)
    # Token-major views: [T, heads, d]. Rows of a merged result accumulate in float32.
    q_t, k_t, v_t = query[0].transpose(0, 1), key[0].transpose(0, 1), value[0].transpose(0, 1)
    merged = bool(calls.crosses or calls.cached)
    acc_dtype = torch.float32 if merged else query.dtype
    out = (
        query.new_zeros((total + 1, heads, head_dim), dtype=acc_dtype)
        if pruned
        else query.new_empty((total + 1, heads, head_dim), dtype=acc_dtype)
    )  # +1: trash row for padding
    out_lse = query.new_zeros((total + 1, heads), dtype=torch.float32) if merged else None
    for b in calls.own:
        mask = _additive(b.mask, query.dtype, plan.masks) if b.mask is not None else None
        if b.span is not None:
            s, e, ks, ke = b.span
            q, k, v = query[:, :, s:e], key[:, :, ks:ke], value[:, :, ks:ke]
        else:
            q = q_t.index_select(0, b.q_index).view(b.batch, b.q_len, heads, head_dim).transpose(1, 2)
            k = k_t.index_select(0, b.k_index).view(b.batch, b.k_len, kv_heads, head_dim).transpose(1, 2)
            v = v_t.index_select(0, b.k_index).view(b.batch, b.k_len, kv_heads, head_dim).transpose(1, 2)
        is_causal = b.mask is None and b.causal
        if b.lse:
            res, lse = sdpa_lse(q, k, v, mask=mask, is_causal=is_causal, scale=scaling)
        else:
            res = sdpa(q, k, v, mask=mask, is_causal=is_causal, scale=scaling, groups=groups)
        if b.span is not None:
            out[s:e] = res[0].transpose(0, 1)
            if b.lse:
                out_lse[s:e] = lse[0].transpose(0, 1)
            continue
        out.index_copy_(
            0, b.dst, res.transpose(1, 2).reshape(b.batch * b.q_len, heads, head_dim).to(acc_dtype)
        )
        if b.lse:
            out_lse.index_copy_(0, b.dst, lse.transpose(1, 2).reshape(b.batch * b.q_len, heads))
    for c in calls.crosses:
        k, v = keys_of(*c.k_range)
        if c.q_range is not None:
            qs, qe = c.q_range
            res, lse = sdpa_lse(query[:, :, qs:qe], k, v, mask=None, is_causal=False, scale=scaling)
            merge(out[qs:qe], out_lse[qs:qe], res[0].transpose(0, 1), lse[0].transpose(0, 1))
        else:
            q = q_t.index_select(0, c.q_index).transpose(0, 1).unsqueeze(0)
            res, lse = sdpa_lse(q, k, v, mask=None, is_causal=False, scale=scaling)
            merge_rows(out, out_lse, c.q_index, res[0].transpose(0, 1), lse[0].transpose(0, 1))
    if calls.cached:
        assert plan.external is not None
        _attend_cached(plan.external, layer, calls.cached, q_t, out, out_lse, scaling, plan.masks)
    return out[:total].to(query.dtype).unsqueeze(0)


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
        if b.pieces is not None:
            joined = ext.joined(layer, b.pieces)
            k, v = joined[0].unsqueeze(0), joined[1].unsqueeze(0)
        if b.q_slice is not None:  # one text's queries (a text per call): no gathers
            s, e = b.q_slice
            res, lse = sdpa_lse(
                q_t[s:e].transpose(0, 1).unsqueeze(0), k, v, mask=None, is_causal=False, scale=scaling
            )
            merge(out[s:e], out_lse[s:e], res[0].transpose(0, 1), lse[0].transpose(0, 1))
            continue
        q = q_t.index_select(0, b.q_index).view(b.batch, b.q_len, heads, head_dim).transpose(1, 2)
        if b.pieces is not None:
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
        res, lse = sdpa_lse(q, k, v, mask=mask, is_causal=False, scale=scaling)
        res = res.transpose(1, 2).reshape(b.batch * b.q_len, heads, head_dim).to(out.dtype)
        lse = lse.transpose(1, 2).reshape(b.batch * b.q_len, heads)
        merge_rows(out, out_lse, b.dst, res, lse)


__all__ = [
    "BUCKET_MAX_KEYS",
    "BUCKET_SLACK",
    "Buckets",
    "Cross",
    "bucketed_attention",
    "crosses",
    "plan_buckets",
]
