"""Batch-invariant kernels: a text's numbers do not depend on what else is in its forward.

``LLM(..., deterministic=True)`` makes every score of a text bit-identical whatever its batch, order,
neighbours, shared prefixes, micro-batch boundaries, token budget and LoRA neighbours. Floating-point
results differ between runs only when the *kernels* differ: a matrix multiply picks another code path for
another row count (on this project's CPU a row multiplied alone differs from the same row among 7 or more),
and attention over a shared prefix merged by log-sum-exp sums in another order than attention over the
whole sequence. So in this mode every kernel sees shapes that depend on the text alone:

- **Row tiles.** Every row-wise op (embedding, norms, q/k/v/o projections, q/k norms, RoPE, MLP, LoRA
  deltas, final norm, head) runs on tiles of exactly :data:`ROW_TILE` rows (:data:`HEAD_TILE` for heads),
  the last tile padded with zero rows. A row's result is then the same at any position in any tile
  (``tests/engine/test_deterministic.py`` checks this for every position, several tile sizes, fp32 and bf16,
  1 and 2 threads).
- **RoPE table.** cos/sin are computed once per block of :data:`ROPE_BLOCK` positions (a fixed shape) and
  gathered by position, so a position's angles never depend on the other positions of the call.
- **Blocked attention.** Queries are grouped in tiles of :data:`KEY_BLOCK` sequence positions, aligned to
  position 0 of their sequence; the tile at block ``b`` attends to the keys at sequence positions
  ``[0, (b + 1) * KEY_BLOCK)`` of its own sequence, gathered from wherever they sit in the packed row (a
  shared prefix's keys are read from the prefix's rows), under a fixed mask that hides the keys after each
  query. The call is PyTorch's CPU flash kernel, whose work is split per ``(batch item, head, query chunk)``
  and whose loop over keys runs in blocks anchored at key 0: the sum a query sees is a function of its
  position and its own keys only, whether its prefix is shared or not, and whatever the batch of tiles.
  Masked keys contribute exact zeros, so what sits in masked slots (another text, zero padding) is never
  read into a result. Tiles with the same ``b`` run as one batched call.

Only the Llama/Qwen2/Qwen3/Mistral decoder loop (:mod:`~rlhf_rewards.engine.decoder`) is driven this way;
other architectures run one sequence per forward (see :class:`~rlhf_rewards.engine.runner.ModelRunner`).
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

#: Rows of every row-wise kernel call of the decoder loop (the last tile is zero-padded).
ROW_TILE = 1024
#: Rows of every head call (heads see few rows: one per sequence for sequence pooling).
HEAD_TILE = 64
#: Keys per attention block; also the query positions per attention tile.
KEY_BLOCK = 64
#: Positions per block of the RoPE table.
ROPE_BLOCK = 256
#: Most gathered key rows per batched attention call (bounds the transient copy of keys/values).
MAX_CALL_KEYS = 32768


# ---------------------------------------------------------------------- row tiles
def tiles(total: int, tile: int = ROW_TILE) -> list[tuple[int, int]]:
    """``[start, end)`` row ranges of ``tile`` rows covering ``total`` (the last may be short: pad it)."""
    return [(s, min(s + tile, total)) for s in range(0, total, tile)]


def tile_rows(x: torch.Tensor, start: int, end: int, tile: int = ROW_TILE, dim: int = 1) -> torch.Tensor:
    """Rows ``[start, end)`` of ``x`` along ``dim``, zero-padded to exactly ``tile`` rows."""
    part = x.narrow(dim, start, end - start)
    if end - start == tile:
        return part
    shape = list(x.shape)
    shape[dim] = tile
    out = x.new_zeros(shape)
    out.narrow(dim, 0, end - start).copy_(part)
    return out


def tiled_rows(fn, x: torch.Tensor, tile: int = ROW_TILE, dim: int = 0) -> torch.Tensor:
    """``fn`` applied to ``x`` in fixed tiles of ``tile`` rows along ``dim``; the same as ``fn(x)`` for row-wise ``fn``."""
    total = x.shape[dim]
    if total == 0:
        return fn(x)
    parts = [fn(tile_rows(x, s, e, tile, dim)).narrow(dim, 0, e - s) for s, e in tiles(total, tile)]
    return torch.cat(parts, dim=dim) if len(parts) > 1 else parts[0]


# ---------------------------------------------------------------------- RoPE
_ROPE_TABLES: weakref.WeakKeyDictionary[nn.Module, dict] = weakref.WeakKeyDictionary()
#: ``rope_type`` values whose frequencies change with the longest sequence of a call (batch dependent).
DYNAMIC_ROPE_TYPES = ("dynamic", "longrope")


def rope_is_static(rotary_emb: nn.Module) -> bool:
    """Whether the rotary embedding's angles depend on the position alone (not on the call's longest sequence)."""
    return getattr(rotary_emb, "rope_type", "default") not in DYNAMIC_ROPE_TYPES


def rope_lookup(rotary_emb: nn.Module, like: torch.Tensor, position_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``rotary_emb(like, position_ids)`` for one packed row, with each position's cos/sin from a fixed table.

    The table is built in blocks of :data:`ROPE_BLOCK` positions by the module itself (so the values are the
    model's own, to rounding), and a block never changes once built.
    """
    store = _ROPE_TABLES.setdefault(rotary_emb, {})
    key = (like.dtype, like.device)
    cos_t, sin_t = store.get(key, (None, None))
    have = 0 if cos_t is None else cos_t.shape[0]
    need = int(position_ids.max()) + 1 if position_ids.numel() else 0
    if need > have:
        blocks_cos, blocks_sin = ([cos_t], [sin_t]) if cos_t is not None else ([], [])
        for start in range(have, need, ROPE_BLOCK):
            pos = torch.arange(start, start + ROPE_BLOCK, device=like.device).unsqueeze(0)
            dummy = like.new_zeros((1, ROPE_BLOCK, 1))
            c, s = rotary_emb(dummy, pos)
            blocks_cos.append(c[0])
            blocks_sin.append(s[0])
        cos_t, sin_t = torch.cat(blocks_cos), torch.cat(blocks_sin)
        store[key] = (cos_t, sin_t)
    flat = position_ids.reshape(-1)
    return cos_t.index_select(0, flat).unsqueeze(0), sin_t.index_select(0, flat).unsqueeze(0)


# ---------------------------------------------------------------------- blocked attention
@dataclass(eq=False)
class _Call:
    block: int  # b: the tiles attend to keys [0, (b + 1) * KEY_BLOCK) of their sequences
    tiles: int
    q_index: torch.Tensor  # [tiles * KEY_BLOCK] packed query rows (``total``: an empty slot)
    k_index: torch.Tensor  # [tiles * (b + 1) * KEY_BLOCK] packed key rows (``total``: past the sequence)


class BlockedLayout:
    """The batched attention calls of one packed row (built once per forward, reused by every layer).

    Args:
        segments: The plan's segments (:class:`~rlhf_rewards.engine.segment_attention.Segment`).
        total: Rows in the packed row.
        pruned: Use each segment's ``rows`` (the only queries a pruned layer needs).
        device: Where the index tensors live.
    """

    def __init__(self, segments: list, total: int, pruned: bool, device: torch.device) -> None:
        block = KEY_BLOCK
        by_block: dict[int, list[tuple[np.ndarray, np.ndarray]]] = {}
        for seg in segments:
            if pruned and seg.rows is not None:
                offsets = seg.rows.cpu().numpy().astype(np.int64)
                if offsets.size == 0:
                    continue
            else:
                offsets = np.arange(seg.length, dtype=np.int64)
            context = np.concatenate(
                [np.arange(s, e, dtype=np.int64) for s, e in seg.prefix] + [np.arange(seg.start, seg.end, dtype=np.int64)]
            )
            prefix = seg.prefix_length
            positions = prefix + offsets
            for b in np.unique(positions // block).tolist():
                q_rows = np.full(block, total, dtype=np.int64)
                here = positions[(positions >= b * block) & (positions < (b + 1) * block)]
                q_rows[here - b * block] = seg.start + (here - prefix)
                keys = np.arange((b + 1) * block)
                k_rows = np.where(keys < context.size, context[np.minimum(keys, context.size - 1)], total)
                by_block.setdefault(b, []).append((q_rows, k_rows))
        self.calls: list[_Call] = []
        for b in sorted(by_block):
            items = by_block[b]
            per_call = max(1, MAX_CALL_KEYS // ((b + 1) * block))
            for i in range(0, len(items), per_call):
                chunk = items[i : i + per_call]
                self.calls.append(
                    _Call(
                        b,
                        len(chunk),
                        torch.from_numpy(np.concatenate([q for q, _ in chunk])).to(device),
                        torch.from_numpy(np.concatenate([k for _, k in chunk])).to(device),
                    )
                )
        self.total = total
        self._masks: dict[tuple[int, torch.dtype], torch.Tensor] = {}

    def mask(self, b: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        """Additive ``[1, 1, KEY_BLOCK, (b + 1) * KEY_BLOCK]`` mask: slot ``i`` sees keys ``<= b * KEY_BLOCK + i``."""
        key = (b, dtype)
        if key not in self._masks:
            self._masks[key] = causal_block_mask(b, dtype, device)
        return self._masks[key]


def causal_block_mask(b: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """The mask of a query tile at block ``b`` (see :meth:`BlockedLayout.mask`)."""
    slot = torch.arange(KEY_BLOCK, device=device).unsqueeze(1)
    keys = torch.arange((b + 1) * KEY_BLOCK, device=device).unsqueeze(0)
    mask = torch.zeros((KEY_BLOCK, (b + 1) * KEY_BLOCK), dtype=dtype, device=device)
    return mask.masked_fill_(keys > b * KEY_BLOCK + slot, float("-inf")).view(1, 1, KEY_BLOCK, -1)


def _kernel(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor, scale: float | None) -> torch.Tensor:
    """Masked attention whose per-query result depends only on that query, its keys and its mask row."""
    if q.device.type == "cpu":
        return torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(q, k, v, 0.0, False, attn_mask=mask, scale=scale)[0]
    # On CUDA: memory-efficient attention, one thread block per (item, head, query tile) and a fixed loop over
    # key tiles; pinned so the backend choice cannot change with the batch.
    from torch.nn.attention import SDPBackend, sdpa_kernel

    with sdpa_kernel(SDPBackend.EFFICIENT_ATTENTION):
        return torch.nn.functional.scaled_dot_product_attention(
            q, k, v, attn_mask=mask.expand(q.shape[0], q.shape[1], -1, -1), scale=scale,
            enable_gqa=q.shape[1] != k.shape[1],
        )


def blocked_attention(
    layout: BlockedLayout, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, scale: float | None
) -> torch.Tensor:
    """Attention of a packed row: ``query [1, H, T, d]``, ``key/value [1, Hkv, T, d]`` -> ``[1, T, H, d]``.

    Rows no query tile covers (the rows a pruned layer skips) are zero.
    """
    total = layout.total
    heads, kv_heads, head_dim = query.shape[1], key.shape[1], query.shape[-1]
    block = KEY_BLOCK
    # Token-major copies with one zero row appended: index ``total`` is an empty query slot or a missing key.
    q_t = torch.cat([query[0].transpose(0, 1), query.new_zeros((1, heads, head_dim))])
    k_t = torch.cat([key[0].transpose(0, 1), key.new_zeros((1, kv_heads, head_dim))])
    v_t = torch.cat([value[0].transpose(0, 1), value.new_zeros((1, kv_heads, head_dim))])
    out = query.new_zeros((total + 1, heads, head_dim))  # +1: the trash row of empty slots
    for call in layout.calls:
        n, keys = call.tiles, (call.block + 1) * block
        q = q_t.index_select(0, call.q_index).view(n, block, heads, head_dim).transpose(1, 2)
        k = k_t.index_select(0, call.k_index).view(n, keys, kv_heads, head_dim).transpose(1, 2)
        v = v_t.index_select(0, call.k_index).view(n, keys, kv_heads, head_dim).transpose(1, 2)
        res = _kernel(q, k, v, layout.mask(call.block, query.dtype, query.device), scale)
        out.index_copy_(0, call.q_index, res.transpose(1, 2).reshape(n * block, heads, head_dim))
    return out[:total].unsqueeze(0)


__all__ = [
    "DYNAMIC_ROPE_TYPES",
    "HEAD_TILE",
    "KEY_BLOCK",
    "MAX_CALL_KEYS",
    "ROPE_BLOCK",
    "ROW_TILE",
    "BlockedLayout",
    "blocked_attention",
    "causal_block_mask",
    "rope_is_static",
    "rope_lookup",
    "tile_rows",
    "tiled_rows",
    "tiles",
]
