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
- **Blocked attention.** Every query goes through one batch-invariant kernel whose sums depend on the
  query's position and its own keys alone (:mod:`~rlhf_rewards.engine.attention.blocked`).
- **Tiled heads.** The head runs on tiles of :data:`HEAD_TILE` rows (:func:`tiled_score`).

Only the Llama/Qwen2/Qwen3/Mistral decoder loop (:mod:`~rlhf_rewards.engine.decoder`) is driven this way;
other architectures run one sequence per forward (see :class:`~rlhf_rewards.engine.runner.ModelRunner`).
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

#: Rows of every row-wise kernel call of the decoder loop (the last tile is zero-padded). 512 rows multiply
#: as fast as 1024 on this CPU (186 vs 182 GFLOP/s on 512x1536) and halve the padding of last tiles.
ROW_TILE = 512
#: Rows of every head call (heads see few rows: one per sequence for sequence pooling).
HEAD_TILE = 64
#: Positions per block of the RoPE table.
ROPE_BLOCK = 256


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


def rope_lookup(
    rotary_emb: nn.Module, like: torch.Tensor, position_ids: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
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


# ---------------------------------------------------------------------- heads
def tiled_score(
    score: Callable[..., torch.Tensor], states: torch.Tensor, columns: tuple[int, ...] | None, **kwargs: Any
) -> torch.Tensor:
    """``score(states, columns, **kwargs)`` on fixed tiles of :data:`HEAD_TILE` rows (padding rows take the
    tile's first adapter)."""
    if states.shape[0] == 0:
        return score(states, columns, **kwargs)
    names = kwargs.get("adapter_names")
    parts = []
    for s, e in tiles(states.shape[0], HEAD_TILE):
        extra = dict(kwargs)
        if names is not None:
            extra["adapter_names"] = list(names[s:e]) + [names[s]] * (HEAD_TILE - (e - s))
        parts.append(score(tile_rows(states, s, e, HEAD_TILE, dim=0), columns, **extra)[: e - s])
    return torch.cat(parts) if len(parts) > 1 else parts[0]


__all__ = [
    "DYNAMIC_ROPE_TYPES",
    "HEAD_TILE",
    "ROPE_BLOCK",
    "ROW_TILE",
    "rope_is_static",
    "rope_lookup",
    "tile_rows",
    "tiled_rows",
    "tiled_score",
    "tiles",
]
