"""A prefix cache that outlives one call: keys and values of recently computed token prefixes.

Within one call the engine already runs every shared prefix once (:mod:`~rlhf_rewards.engine.prefix_tree`).
Trainers that send one sample per request as each rollout finishes (OpenRLHF, verl's reward loop) never put
siblings in one call, so every completion would recompute its prompt. This cache keeps, across calls, the
post-RoPE keys and values of every layer for the token runs the engine computed, in a radix tree per
*namespace* (the LoRA adapter and vLLM's ``cache_salt``). A later request whose token ids start with a
cached run computes only its suffix, attending to the cached keys and values exactly as a child node
attends to its parent node inside one call (:mod:`~rlhf_rewards.engine.attention`).

- **Exact.** A token's keys and values depend only on the tokens before it, so a hit computes what a miss
  computes, up to float rounding in the default mode (~1e-7; the cached keys came from another batch), and
  bit for bit in deterministic mode (there every kernel's numbers depend on the text alone).
- **Poolers.** Only positions whose outputs no pooler reads are taken from the cache: a hit ends before the
  first position the request's pooler reads (the last token for LAST, the first step tag for STEP), so
  ALL/MEAN/CLS requests never hit, and a repeated LAST request recomputes its last token.
- **Bounded.** ``max_bytes`` bounds the keys and values held; least recently used leaves are evicted first
  (a node is never evicted before its descendants). Nodes a running call reads or extends are pinned.
- **Invalidated** by :meth:`PrefixKVCache.clear` (the engine calls it on ``reset_prefix_cache()``, adapter
  changes and ``sleep()``) and when the model's weights change (a fingerprint checked on every call).

Storage: one contiguous tensor per node, ``[layers, 2, kv_heads, tokens, head_dim]`` in the model's dtype.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import threading
from collections.abc import Hashable, Iterator
from dataclasses import dataclass, field

import torch

from rlhf_rewards.checks import check_bool, check_int, is_int
from rlhf_rewards.engine.prefix_tree import common_prefix

#: Shortest hit worth taking (a hit adds one attention call per layer and per cached node it reads).
DEFAULT_MIN_HIT_TOKENS = 16
#: Default bound of the cache (bytes).
DEFAULT_PREFIX_CACHE_BYTES = 1 << 30


@dataclass(eq=False)
class CacheNode:
    """A cached run of tokens at positions ``[start, start + len(tokens))`` of every text through it."""

    tokens: list[int]
    start: int
    kv: torch.Tensor | None  # [layers, 2, kv_heads, n, head_dim]; None for a namespace root
    parent: CacheNode | None = None
    children: dict[int, CacheNode] = field(default_factory=dict)
    last_used: int = 0
    pins: int = 0
    alive: bool = True

    @property
    def end(self) -> int:
        """Position one past the run's last token."""
        return self.start + len(self.tokens)

    @property
    def nbytes(self) -> int:
        """Bytes of the node's keys and values."""
        return 0 if self.kv is None else self.kv.numel() * self.kv.element_size()


@dataclass(eq=False)
class Piece:
    """The first ``length`` tokens of a cached node, as read by one hit (``kv`` is a view taken at lookup)."""

    node: CacheNode
    length: int
    kv: torch.Tensor

    @property
    def key(self) -> tuple[int, int]:
        """The piece's identity in one forward (node and length): a piece read by several hits is laid out once."""
        return id(self.node), self.length


@dataclass(eq=False)
class CacheHit:
    """A request's cached prefix: ``pieces`` cover positions ``[0, length)``; ``length`` 0 is a miss."""

    namespace: Hashable
    pieces: list[Piece]
    length: int

    @property
    def key(self) -> tuple:
        """Requests with equal keys read the same cached pieces (they share one tree)."""
        return (self.namespace, tuple(p.key for p in self.pieces))


class PrefixKVCache:
    """Keys and values of token prefixes, kept across calls (see the module docs). Thread-safe.

    Args:
        max_bytes: Most bytes of keys and values held (> 0).
        min_hit_tokens: Shortest prefix taken from the cache.
    """

    def __init__(
        self, max_bytes: int = DEFAULT_PREFIX_CACHE_BYTES, min_hit_tokens: int = DEFAULT_MIN_HIT_TOKENS
    ) -> None:
        if not is_int(max_bytes, minimum=1):
            raise ValueError(f"prefix cache max_bytes must be a positive integer, got {max_bytes!r}.")
        self.max_bytes = max_bytes
        self.min_hit_tokens = max(1, int(min_hit_tokens))
        self._lock = threading.RLock()
        self._roots: dict[Hashable, CacheNode] = {}
        self._clock = itertools.count(1)
        self._generation = 0
        self._fingerprint: tuple | None = None
        #: Bytes of keys and values held now.
        self.bytes = 0
        #: Cumulative counters: prompt tokens looked up, tokens served from the cache, tokens inserted, nodes
        #: evicted, and clears.
        self.queried_tokens = 0
        self.hit_tokens = 0
        self.inserted_tokens = 0
        self.evictions = 0
        self.clears = 0

    # ------------------------------------------------------------------ state
    def clear(self) -> None:
        """Drop every entry (calls running now finish with what they read; nothing they add is kept)."""
        with self._lock:
            for root in self._roots.values():
                for node in _subtree(root):
                    node.alive = False
            self._roots = {}
            self.bytes = 0
            self._generation += 1
            self.clears += 1

    def check_weights(self, fingerprint: tuple) -> None:
        """Clear the cache if ``fingerprint`` (of the model's weights) differs from the last call's."""
        with self._lock:
            if self._fingerprint is not None and fingerprint != self._fingerprint:
                self.clear()
            self._fingerprint = fingerprint

    @property
    def num_nodes(self) -> int:
        """Cached runs (radix-tree nodes) held now."""
        with self._lock:
            return sum(len(_subtree(r)) - 1 for r in self._roots.values())

    def stats(self) -> dict[str, int]:
        """Counters for metrics and logs."""
        with self._lock:
            return {
                "bytes": self.bytes,
                "max_bytes": self.max_bytes,
                "nodes": self.num_nodes,
                "queried_tokens": self.queried_tokens,
                "hit_tokens": self.hit_tokens,
                "inserted_tokens": self.inserted_tokens,
                "evictions": self.evictions,
                "clears": self.clears,
            }

    @contextlib.contextmanager
    def session(self) -> Iterator[CacheSession]:
        """One engine call's view of the cache: what it pins is released at the end."""
        s = CacheSession(self)
        try:
            yield s
        finally:
            s.close()

    # ------------------------------------------------------------------ internals (lock held)
    def _touch(self, node: CacheNode) -> None:
        t = next(self._clock)
        while node is not None and node.kv is not None:
            node.last_used = t
            node = node.parent

    def _root(self, namespace: Hashable) -> CacheNode:
        root = self._roots.get(namespace)
        if root is None:
            root = self._roots[namespace] = CacheNode(tokens=[], start=0, kv=None)
        return root

    def _split(self, node: CacheNode, at: int) -> None:
        """Cut ``node`` after ``at`` tokens: ``node`` keeps the head, a new child the tail (same bytes)."""
        kv = node.kv
        assert kv is not None and 0 < at < len(node.tokens)
        tail = CacheNode(
            tokens=node.tokens[at:],
            start=node.start + at,
            kv=kv[:, :, :, at:].clone(),
            parent=node,
            children=node.children,
            last_used=node.last_used,
        )
        for child in tail.children.values():
            child.parent = tail
        node.kv = kv[:, :, :, :at].clone()
        node.tokens = node.tokens[:at]
        node.children = {tail.tokens[0]: tail}

    def _evict(self) -> None:
        if self.bytes <= self.max_bytes:
            return
        heap = [
            (n.last_used, id(n), n)
            for root in self._roots.values()
            for n in _subtree(root)
            if n.kv is not None and not n.children and n.pins == 0
        ]
        heapq.heapify(heap)
        while heap and self.bytes > self.max_bytes:
            _, _, node = heapq.heappop(heap)
            parent = node.parent
            assert parent is not None
            del parent.children[node.tokens[0]]
            node.alive = False
            self.bytes -= node.nbytes
            self.evictions += 1
            if parent.kv is not None and not parent.children and parent.pins == 0:
                heapq.heappush(heap, (parent.last_used, id(parent), parent))


def _walk(root: CacheNode, token_ids: list[int], upto: int) -> tuple[CacheNode, int, int]:
    """Follow ``token_ids[:upto]`` down from ``root``: ``(node, tokens of it matched, positions matched)``."""
    node, pos = root, 0
    while pos < upto:
        child = node.children.get(token_ids[pos])
        if child is None:
            break
        m = common_prefix(child.tokens, 0, token_ids, pos, upto - pos)
        pos += m
        if m < len(child.tokens):
            return child, m, pos
        node = child
    return node, len(node.tokens), pos


def _subtree(node: CacheNode) -> list[CacheNode]:
    out, stack = [], [node]
    while stack:
        n = stack.pop()
        out.append(n)
        stack.extend(n.children.values())
    return out


class CacheSession:
    """Lookups and insertions of one engine call; pins what it reads or extends until :meth:`close`."""

    def __init__(self, cache: PrefixKVCache) -> None:
        self.cache = cache
        self._generation = cache._generation
        self._pinned: list[CacheNode] = []
        self.hit_tokens = 0

    def _pin(self, node: CacheNode) -> None:
        if node.kv is not None:
            node.pins += 1
            self._pinned.append(node)

    def close(self) -> None:
        """Release what the session pinned, and evict down to the bound."""
        with self.cache._lock:
            for node in self._pinned:
                node.pins -= 1
            self._pinned = []
            self.cache._evict()

    def lookup(self, namespace: Hashable, token_ids: list[int], limit: int) -> CacheHit:
        """The longest cached prefix of ``token_ids`` of at most ``limit`` tokens (a miss if shorter than
        ``min_hit_tokens``)."""
        cache = self.cache
        with cache._lock:
            cache.queried_tokens += len(token_ids)
            root = cache._roots.get(namespace)
            pieces: list[Piece] = []
            pos = 0
            node = root
            while node is not None and pos < limit:
                child = node.children.get(token_ids[pos])
                if child is None:
                    break
                m = common_prefix(child.tokens, 0, token_ids, pos, limit - pos)
                if m == 0:
                    break
                pieces.append(Piece(child, m, child.kv[:, :, :, :m]))
                pos += m
                node = child if m == len(child.tokens) else None
            if pos < cache.min_hit_tokens:
                return CacheHit(namespace, [], 0)
            for p in pieces:
                self._pin(p.node)
            cache._touch(pieces[-1].node)
            cache.hit_tokens += pos
            self.hit_tokens += pos
            return CacheHit(namespace, pieces, pos)

    def extend(
        self,
        namespace: Hashable,
        token_ids: list[int],
        start: int,
        end: int,
        kv: torch.Tensor,
        pin: bool = True,
    ) -> bool:
        """Insert positions ``[start, end)`` of ``token_ids`` with their keys and values
        (``kv [layers, 2, kv_heads, end - start, head_dim]``). Positions ``[0, start)`` must be cached (a hit
        or an earlier insertion of this session pinned with ``pin``); returns whether the run is now cached."""
        cache = self.cache
        with cache._lock:
            if self._generation != cache._generation:
                return False
            root = cache._root(namespace)
            node, used, pos = _walk(root, token_ids, start)
            if pos < start:
                return False  # the prefix is gone (never cached, or could not be kept)
            if node.kv is not None and used < len(node.tokens):
                cache._split(node, used)
            while pos < end:
                child = node.children.get(token_ids[pos])
                if child is None:
                    rest = kv if pos == start else kv[:, :, :, pos - start :].clone()
                    if rest.numel() * rest.element_size() > cache.max_bytes:
                        return False
                    new = CacheNode(tokens=list(token_ids[pos:end]), start=pos, kv=rest, parent=node)
                    node.children[new.tokens[0]] = new
                    cache.bytes += new.nbytes
                    cache.inserted_tokens += len(new.tokens)
                    node = new
                    break
                m = common_prefix(child.tokens, 0, token_ids, pos, end - pos)
                if m < len(child.tokens) and pos + m < end:
                    cache._split(child, m)  # diverges inside ``child``: cut it there and branch
                node, pos = child, pos + m
            cache._touch(node)
            if pin:
                self._pin(node)
            return True

    def evict(self) -> None:
        """Evict down to the bound (pinned nodes stay)."""
        with self.cache._lock:
            self.cache._evict()


def weights_fingerprint(module: torch.nn.Module) -> tuple:
    """Identity of a module's weights: storage and in-place version of every parameter and buffer.

    Loading new weights (``load_state_dict``, ``copy_`` on a parameter, moving devices) changes it. Writing
    through ``param.data`` does not bump a version: call ``LLM.reset_prefix_cache()`` after such updates.
    """
    out, stack = [], [module]
    while stack:  # a plain walk: module.parameters() costs 4x as much, on every call
        m = stack.pop()
        for t in itertools.chain(m._parameters.values(), m._buffers.values()):
            if t is not None:
                out.append((t.data_ptr(), t._version))
        stack.extend(c for c in m._modules.values() if c is not None)
    return tuple(out)


def make_prefix_cache(engine_args: dict, parallel: bool = False) -> PrefixKVCache | None:
    """The cache ``LLM(...)`` builds from its engine arguments: vLLM's ``enable_prefix_caching`` (default on;
    ``False`` turns it off) and ``prefix_cache_bytes`` (the bound; default 1 GiB, ``0`` turns it off). Split
    engines (tensor/pipeline parallel) keep no cache."""
    enabled = engine_args.get("enable_prefix_caching")
    size = engine_args.get("prefix_cache_bytes")
    if enabled is not None:
        check_bool("enable_prefix_caching", enabled)
    if size is not None:
        check_int("prefix_cache_bytes", size, minimum=0)
    if enabled is False or size == 0 or parallel:
        return None
    return PrefixKVCache(DEFAULT_PREFIX_CACHE_BYTES if size is None else size)


__all__ = [
    "DEFAULT_MIN_HIT_TOKENS",
    "DEFAULT_PREFIX_CACHE_BYTES",
    "CacheHit",
    "CacheNode",
    "CacheSession",
    "Piece",
    "PrefixKVCache",
    "make_prefix_cache",
    "weights_fingerprint",
]
