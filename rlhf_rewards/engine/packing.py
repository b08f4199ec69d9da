"""Padding-free packing: prefix trees laid out in one row per forward, within a token budget.

Every node of a prefix tree (:mod:`rlhf_rewards.engine.prefix_tree`) becomes a segment of the packed row,
parents before children; ``position_ids`` restart for every sequence (a node starts at its depth in the
sequence). A request's tokens are the concatenation of the nodes on its root path, so any position a
pooler asks for, inside a shared prefix or not, maps to exactly one packed row.

Scheduling: a tree is one unit of work. A tree over the budget is cut into chunks at request boundaries,
each chunk re-running the ancestors its requests need; units are then bin-packed (first fit decreasing)
into forwards of at most ``budget`` tokens, so a call of any size runs in bounded memory. A single
sequence longer than the budget still runs, alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from rlhf_rewards.engine.attention.plan import ExternalKV, Segment, SegmentPlan, Workspace
from rlhf_rewards.engine.prefix_tree import PrefixForest, PrefixNode


@dataclass
class WorkUnit:
    """Nodes (parents first) run together, and the sequences whose results come from them."""

    nodes: list[PrefixNode]
    sequences: list[int]

    @property
    def num_tokens(self) -> int:
        """Tokens the unit runs."""
        return sum(len(n.tokens) for n in self.nodes)


@dataclass
class PackedForward:
    """One packed row: inputs, attention segments, and where each sequence's tokens landed.

    Args:
        input_ids: ``[1, T]``.
        position_ids: ``[1, T]``.
        segments: One per node, in packed order.
        sequences: Indices of the sequences completed by this forward.
        row_maps: For each of ``sequences``, the packed row of each of its tokens (``[n_tokens]``) from
            position ``row_offsets[i]`` on (the positions before it are cached keys and values).
        nodes: The tree node of each segment.
        row_offsets: For each of ``sequences``, its first position in the row (its cache hit's length).
        external: Cached keys and values the segments read, by address (``num_tokens + 1 + offset``):
            ``[layers, 2, kv_heads, n, head_dim]`` each (:class:`~rlhf_rewards.engine.kv_cache.Piece`).
    """

    input_ids: torch.Tensor
    position_ids: torch.Tensor
    segments: list[Segment]
    sequences: list[int]
    row_maps: list[torch.Tensor]
    nodes: list[PrefixNode] = field(default_factory=list)
    row_offsets: list[int] = field(default_factory=list)
    external: dict[int, torch.Tensor] = field(default_factory=dict)
    #: Called with each layer's keys and values for the cross-call cache (``ExternalKV.capture``), or ``None``.
    capture: Any = None

    @property
    def num_tokens(self) -> int:
        """Tokens in the row."""
        return int(self.input_ids.shape[1])

    @property
    def external_rows(self) -> int:
        """Cached key rows the row reads from outside it."""
        return sum(int(kv.shape[3]) for kv in self.external.values())

    def plan(
        self,
        needed_rows: torch.Tensor | None = None,
        prune_layer: int | None = None,
        deterministic: bool = False,
        workspace: Workspace | None = None,
        external: ExternalKV | None = None,
    ) -> SegmentPlan:
        """The attention plan; with ``needed_rows`` (sorted packed rows), layer ``prune_layer`` computes only those.

        ``deterministic`` selects the batch-invariant blocked attention (:mod:`~rlhf_rewards.engine.attention.blocked`),
        whose scratch buffers are ``workspace``'s when one is given.
        """
        if needed_rows is not None:
            for seg in self.segments:
                lo = int(torch.searchsorted(needed_rows, seg.start))
                hi = int(torch.searchsorted(needed_rows, seg.end))
                seg.rows = needed_rows[lo:hi] - seg.start
        else:
            for seg in self.segments:
                seg.rows = None
        return SegmentPlan(
            segments=self.segments,
            total=self.num_tokens,
            prune_layer=prune_layer,
            deterministic=deterministic,
            workspace=workspace,
            external=external,
        )


def work_units(forest: PrefixForest, budget: int) -> list[WorkUnit]:
    """Split the forest into units of at most ``budget`` tokens where possible (see module docs)."""
    units: list[WorkUnit] = []
    for root in forest.roots:
        nodes = root.subtree()
        total = sum(len(n.tokens) for n in nodes)
        if total <= budget:
            units.append(WorkUnit(nodes=nodes, sequences=[i for n in nodes for i in n.ends]))
            continue
        # Cut at request boundaries, depth first, re-running the ancestors each chunk needs.
        current: list[PrefixNode] = []
        members: set[int] = set()
        sequences: list[int] = []
        tokens = 0
        for node in nodes:
            if not node.ends:
                continue
            path = node.path()
            extra = sum(len(n.tokens) for n in path if id(n) not in members)
            if current and tokens + extra > budget:
                units.append(WorkUnit(nodes=current, sequences=sequences))
                current, members, sequences, tokens = [], set(), [], 0
                extra = sum(len(n.tokens) for n in path)
            for n in path:
                if id(n) not in members:
                    members.add(id(n))
                    current.append(n)
            sequences.extend(node.ends)
            tokens += extra
        if current:
            units.append(WorkUnit(nodes=current, sequences=sequences))
    return units


def bin_pack(units: Sequence[WorkUnit], budget: int) -> list[list[WorkUnit]]:
    """First-fit decreasing: group units into forwards of at most ``budget`` tokens (an oversized unit alone)."""
    order = sorted(units, key=lambda u: -u.num_tokens)
    bins: list[list[WorkUnit]] = []
    loads: list[int] = []
    for unit in order:
        size = unit.num_tokens
        for b, load in enumerate(loads):
            if load + size <= budget:
                bins[b].append(unit)
                loads[b] += size
                break
        else:
            bins.append([unit])
            loads.append(size)
    return bins


def build_packed_forward(
    units: Sequence[WorkUnit], forest: PrefixForest, device: torch.device
) -> PackedForward:
    """Lay ``units`` out in one row and describe its segments.

    A root with a cross-call cache hit (``PrefixNode.cached``) reads the hit's keys and values as its first
    ancestors; they live outside the row, at addresses ``num_tokens + 1 + offset`` (one per cached piece).
    """
    ids: list[int] = []
    positions: list[torch.Tensor] = []
    segments: list[Segment] = []
    nodes: list[PrefixNode] = []
    sequences: list[int] = []
    row_maps: list[torch.Tensor] = []
    row_offsets: list[int] = []
    pieces: dict[tuple[int, int], tuple[int, torch.Tensor]] = {}  # piece -> (offset, kv)
    ext_of: list[list[tuple[int, int]]] = []  # per segment: (offset, length) of its cached ancestors
    ext_rows = 0
    for unit in units:
        local: dict[int, int] = {}  # node -> packed start, within this unit
        for node in unit.nodes:
            start = len(ids)
            local[id(node)] = start
            ids.extend(node.tokens)
            positions.append(torch.arange(node.start, node.end, dtype=torch.long))
            chain = []
            parent = node.parent
            root = node
            while parent is not None:
                chain.append((local[id(parent)], local[id(parent)] + len(parent.tokens)))
                root = parent
                parent = parent.parent
            ext = []
            if root.cached is not None:
                for piece in root.cached.pieces:
                    if piece.key not in pieces:
                        pieces[piece.key] = (ext_rows, piece.kv)
                        ext_rows += piece.length
                    ext.append((pieces[piece.key][0], piece.length))
            ext_of.append(ext)
            segments.append(Segment(start=start, end=len(ids), prefix=chain[::-1]))
            nodes.append(node)
        for i in unit.sequences:
            sequences.append(i)
            path = forest.end_node[i].path()
            row_offsets.append(path[0].start)
            row_maps.append(
                torch.cat([torch.arange(local[id(n)], local[id(n)] + len(n.tokens)) for n in path])
            )
    base = len(ids) + 1  # external addresses follow the row and its zero/trash row
    for seg, ext in zip(segments, ext_of, strict=True):
        if ext:
            seg.prefix = [(base + off, base + off + n) for off, n in ext] + seg.prefix
    return PackedForward(
        input_ids=torch.tensor([ids], dtype=torch.long, device=device),
        position_ids=torch.cat(positions).unsqueeze(0).to(device),
        segments=segments,
        sequences=sequences,
        row_maps=row_maps,
        nodes=nodes,
        row_offsets=row_offsets,
        external={base + off: kv for off, kv in pieces.values()},
    )


__all__ = ["PackedForward", "WorkUnit", "bin_pack", "build_packed_forward", "work_units"]
