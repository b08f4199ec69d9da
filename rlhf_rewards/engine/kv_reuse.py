"""How one call uses the cross-call prefix cache (:mod:`~rlhf_rewards.engine.kv_cache`) on the packed path.

Each request first looks up its longest cached prefix (per adapter and ``cache_salt``, ending before the first
position its pooler reads); requests with the same hit share one tree over their remaining tokens, whose roots
read the hit's keys and values as ancestors outside the row (:func:`cached_forest`). Every forward's new
nodes are copied into the cache as they are computed (:class:`KVCapture`).
"""

from __future__ import annotations

from collections.abc import Hashable

import torch

from rlhf_rewards.engine.kv_cache import CacheHit, CacheSession
from rlhf_rewards.engine.packing import PackedForward
from rlhf_rewards.engine.prefix_tree import PrefixForest, PrefixNode, build_prefix_forest
from rlhf_rewards.engine.request import EngineRequest
from rlhf_rewards.pooling.head import pooled_positions


def cached_forest(session: CacheSession, group: list[EngineRequest], min_shared: int) -> PrefixForest:
    """The prefix forest of one adapter's requests, each starting after its cross-call cache hit.

    A hit ends before the first position the request's pooler reads (and before its last token), so
    every position an output comes from is computed. Requests with the same hit (and namespace: adapter
    and ``cache_salt``) share one tree over their remaining tokens; the tree's roots read the hit's keys
    and values as ancestors.
    """
    lora = group[0].lora
    adapter = None if lora is None else (lora.lora_name, lora.lora_int_id, lora.lora_path)
    by_hit: dict[Hashable, list[int]] = {}
    hits: list[CacheHit] = []
    for i, r in enumerate(group):
        positions = pooled_positions(r.pooling, r.token_ids)
        limit = r.num_tokens - 1
        if positions.numel():
            limit = min(limit, int(positions.min()))
        hit = session.lookup((adapter, r.cache_salt), r.token_ids, limit)
        hits.append(hit)
        by_hit.setdefault(hit.key, []).append(i)
    roots: list[PrefixNode] = []
    end_node: list[PrefixNode | None] = [None] * len(group)
    for idxs in by_hit.values():
        hit = hits[idxs[0]]
        h = hit.length
        sub = build_prefix_forest([group[i].token_ids[h:] for i in idxs], min_shared)
        for root in sub.roots:
            root.cached = hit
            for node in root.subtree():
                node.start += h
                node.ends = [idxs[j] for j in node.ends]  # the sub-forest's indices -> the group's
        roots.extend(sub.roots)
        for j, i in enumerate(idxs):
            end_node[i] = sub.end_node[j]
    return PrefixForest(roots=roots, end_node=end_node)  # type: ignore[arg-type]


class KVCapture:
    """Copies the keys and values of a forward's new tree nodes out of every layer, then inserts them into
    the cross-call cache (:meth:`commit`). ``inserted`` maps a node (by id) to whether it is cached; nodes
    already tried (a tree re-run in several forwards) are not captured again."""

    def __init__(self, packed: PackedForward, inserted: dict[int, bool], layers: int) -> None:
        self.inserted = inserted
        self.layers = layers
        seen: set[int] = set()
        self.todo: list[tuple[PrefixNode, int, int]] = []
        for node, seg in zip(packed.nodes, packed.segments, strict=True):
            if id(node) not in inserted and id(node) not in seen:
                seen.add(id(node))
                self.todo.append((node, seg.start, seg.end))
        self.buffers: list[torch.Tensor] = []
        self.layers_seen: set[int] = set()

    def __call__(self, layer: int, keys: torch.Tensor, values: torch.Tensor) -> None:
        """Copy ``layer``'s keys and values ``[kv_heads, total, head_dim]`` of the new nodes."""
        if not self.todo:
            return
        if not self.buffers:
            kv_heads, head_dim = keys.shape[0], keys.shape[-1]
            self.buffers = [
                keys.new_empty((self.layers, 2, kv_heads, e - s, head_dim)) for _, s, e in self.todo
            ]
        for (_, s, e), buf in zip(self.todo, self.buffers, strict=True):
            buf[layer, 0].copy_(keys[:, s:e])
            buf[layer, 1].copy_(values[:, s:e])
        self.layers_seen.add(layer)

    def commit(self, session: CacheSession, requests: list[EngineRequest], forest: PrefixForest) -> None:
        """Insert the captured nodes whose parents are cached (a node's keys need its prefix's)."""
        if not self.todo or len(self.layers_seen) != self.layers:
            return  # the forward did not run (nothing to pool) or ran another path
        first_seq: dict[int, int] = {}
        for i, end in enumerate(forest.end_node):
            for node in end.path():
                first_seq.setdefault(id(node), i)
        for (node, _, _), buf in zip(self.todo, self.buffers, strict=True):
            if node.parent is not None and not self.inserted.get(id(node.parent), False):
                self.inserted[id(node)] = False
                continue
            root = node.path()[0]
            seq = requests[first_seq[id(node)]]
            self.inserted[id(node)] = session.extend(
                root.cached.namespace, seq.token_ids, node.start, node.end, buf, pin=bool(node.children)
            )
        self.buffers = []
        session.evict()


__all__ = ["KVCapture", "cached_forest"]
