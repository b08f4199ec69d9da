"""The attention plan of one packed forward: its segments, the layer that is pruned, and the active plan.

A packed forward holds one row of tokens made of *segments* (the nodes of
:mod:`~rlhf_rewards.engine.prefix_tree`). A segment's queries attend to the keys of its ancestor segments
(its shared prefix, all visible) and causally to its own keys. A :class:`SegmentPlan` describes that row once
per forward; the backends (:mod:`~rlhf_rewards.engine.attention.buckets`,
:mod:`~rlhf_rewards.engine.attention.varlen`, :mod:`~rlhf_rewards.engine.attention.blocked`) build their
layouts from it, once, and every layer reuses them. While a plan is active (:func:`active_plan`, a context
variable, so other threads are unaffected) the model's attention modules route through it
(:mod:`~rlhf_rewards.engine.attention.interface`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Hashable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np
import torch
from torch import nn

_T = TypeVar("_T")


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
        """Own tokens of the segment."""
        return self.end - self.start

    @property
    def prefix_length(self) -> int:
        """Ancestor tokens the segment reads."""
        return sum(e - s for s, e in self.prefix)


class Workspace:
    """Scratch buffers of the blocked attention, kept from layer to layer and forward to forward.

    Every layer of a forward gathers the same rows, and on the CPU a fresh large allocation is paid in
    first-touch page faults, which can cost several times the gather itself. A :class:`~rlhf_rewards.engine.runner.ModelRunner` owns one, so its
    buffers only ever grow to the largest forward's needs and are freed with the engine. Not thread-safe:
    one forward at a time (the engine's lock).
    """

    def __init__(self) -> None:
        self._flat: dict[str, torch.Tensor] = {}

    def get(
        self, name: str, shape: tuple[int, ...], like: torch.Tensor, zero_new: bool = False
    ) -> torch.Tensor:
        """A ``shape`` view of the buffer ``name`` (grown if too small; zeroed when grown if ``zero_new``).

        The contents are whatever the buffer last held.
        """
        numel = int(np.prod(shape))
        flat = self._flat.get(name)
        if flat is None or flat.numel() < numel or flat.dtype != like.dtype or flat.device != like.device:
            self._flat.pop(name, None)  # free the old buffer before the new one is allocated
            flat = self._flat[name] = like.new_zeros(numel) if zero_new else like.new_empty(numel)
        return flat[:numel].view(shape)


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
    _buffers: dict[tuple[tuple[int, int], ...], torch.Tensor] = field(default_factory=dict)

    @property
    def rows(self) -> int:
        """Cached key rows held outside the packed row."""
        return sum(int(kv.shape[3]) for kv in self.pieces.values())

    def concatenated(self, layer: int) -> torch.Tensor:
        """``[2, kv_heads, rows, head_dim]``: every piece's keys and values of ``layer``, in address order
        (see :meth:`joined`)."""
        return self.joined(layer, tuple((a, a + int(self.pieces[a].shape[3])) for a in sorted(self.pieces)))

    def _piece(self, layer: int, start: int, end: int) -> torch.Tensor:
        piece = self.pieces[start]
        if piece.shape[3] != end - start:
            raise RuntimeError(
                f"external key range {start}:{end} does not match its piece ({piece.shape[3]} rows)"
            )
        return piece[layer]

    def kv(self, layer: int, start: int, end: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values ``[1, kv_heads, end - start, head_dim]`` of the piece at address ``start``."""
        piece = self._piece(layer, start, end)
        return piece[0].unsqueeze(0), piece[1].unsqueeze(0)

    def joined(self, layer: int, ranges: tuple[tuple[int, int], ...]) -> torch.Tensor:
        """``[2, kv_heads, rows, head_dim]``: the keys and values of ``layer`` of the pieces at ``ranges``
        (address ranges), in that order. One piece is read in place; several are concatenated into a buffer
        kept for the forward per ``ranges`` (written again by every layer)."""
        parts = [self._piece(layer, s, e) for s, e in ranges]
        if len(parts) == 1:
            return parts[0]
        out = self._buffers.get(ranges)
        if out is None:
            rows = sum(e - s for s, e in ranges)
            out = self._buffers[ranges] = parts[0].new_empty((2, parts[0].shape[1], rows, parts[0].shape[3]))
        return torch.cat(parts, dim=2, out=out)


@dataclass(eq=False)
class SegmentPlan:
    """The segments of one packed forward, and which layer (if any) only needs some query rows."""

    segments: list[Segment]
    total: int
    prune_layer: int | None = None
    #: Attention calls made under this plan (the runner checks one per attention layer).
    calls: int = 0
    #: Batch-invariant attention (:mod:`~rlhf_rewards.engine.attention.blocked`) instead of buckets and merges.
    deterministic: bool = False
    #: Scratch buffers of the blocked attention, usually the engine's; one is made for the plan when none is given.
    workspace: Workspace | None = None
    #: Cached keys/values read from outside the row, and the capture of the row's own (:class:`ExternalKV`).
    external: ExternalKV | None = None
    #: Additive float masks of the boolean masks the plan's layouts hold, by ``(id(mask), dtype)``.
    masks: dict[tuple[int, torch.dtype], torch.Tensor] = field(default_factory=dict)
    _layouts: dict[Hashable, Any] = field(default_factory=dict)

    def pruned(self, module: nn.Module) -> bool:
        """Whether ``module``'s layer is the pruned one (it computes only the segments' ``rows``)."""
        return self.prune_layer is not None and getattr(module, "layer_idx", None) == self.prune_layer

    def layout(self, key: Hashable, build: Callable[[], _T]) -> _T:
        """The backend layout ``key`` of this row, built once; every layer of the forward reuses it."""
        if key not in self._layouts:
            self._layouts[key] = build()
        return self._layouts[key]


def layer_index(module: nn.Module) -> int:
    """``module``'s layer (cached keys and values are stored per layer)."""
    layer = getattr(module, "layer_idx", None)
    if layer is None:
        raise SegmentAttentionUnsupported("cached keys and values need attention modules with a layer_idx")
    return int(layer)


_ACTIVE_PLAN: ContextVar[SegmentPlan | None] = ContextVar("rlhf_rewards_segment_plan", default=None)


def current_plan() -> SegmentPlan | None:
    """The plan attention calls in this context use, if any."""
    return _ACTIVE_PLAN.get()


@contextlib.contextmanager
def active_plan(plan: SegmentPlan) -> Iterator[SegmentPlan]:
    """Make ``plan`` the one attention calls in this context use."""
    token = _ACTIVE_PLAN.set(plan)
    try:
        yield plan
    finally:
        _ACTIVE_PLAN.reset(token)


__all__ = [
    "ExternalKV",
    "Segment",
    "SegmentAttentionUnsupported",
    "SegmentPlan",
    "Workspace",
    "active_plan",
    "current_plan",
    "layer_index",
]
