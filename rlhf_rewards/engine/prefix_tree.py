"""Shared-prefix detection: a radix tree over the token ids of one call.

Requests whose token ids start the same way (the completions of a GRPO group share their prompt; a PRM's
sampled solutions share the problem; chat requests share a system prompt) are arranged in a tree whose
nodes are runs of tokens. Each node is run once; its keys and values serve every request below it (see
:mod:`rlhf_rewards.engine.packing`). Identical requests end at the same node and are computed once; a
request that is a prefix of another ends at an inner node, and positions inside a shared prefix are read
from the node that holds them, so STEP/ALL/MEAN/CLS pooling still get one row per position.

Sharing is exact for causal attention: a token's hidden state depends only on the tokens before it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

#: A shared run shorter than this is not split off into its own node (a node costs one attention call
#: per layer and a copy of its ancestors' keys for every child; a few tokens are not worth it).
DEFAULT_MIN_SHARED_TOKENS = 8


@dataclass(eq=False)
class PrefixNode:
    """A run of tokens, positioned at ``start`` in every sequence that passes through it.

    Args:
        tokens: The token ids of this run (at least one, except for nothing: nodes are never empty).
        start: Position of the run's first token in the full sequences.
        parent: The node holding the tokens before ``start`` (``None`` for a root).
        children: Nodes continuing this one.
        ends: Indices (into the forest's sequences) of the sequences that end with this node.
        cached: On a root that starts after position 0: the cross-call cache's hit holding positions
            ``[0, start)`` (:class:`~rlhf_rewards.engine.kv_cache.CacheHit`), whose keys and values the
            tree reads as an ancestor's.
    """

    tokens: list[int]
    start: int
    parent: PrefixNode | None = None
    children: list[PrefixNode] = field(default_factory=list)
    ends: list[int] = field(default_factory=list)
    cached: Any = None

    @property
    def end(self) -> int:
        """Position one past the run's last token."""
        return self.start + len(self.tokens)

    def path(self) -> list[PrefixNode]:
        """The nodes from the root down to this one."""
        nodes = []
        node: PrefixNode | None = self
        while node is not None:
            nodes.append(node)
            node = node.parent
        return nodes[::-1]

    def subtree(self) -> list[PrefixNode]:
        """This node and its descendants, depth first (parents before children)."""
        out, stack = [], [self]
        while stack:
            node = stack.pop()
            out.append(node)
            stack.extend(reversed(node.children))
        return out

    def subtree_tokens(self) -> int:
        """Tokens run by this node and its descendants."""
        return sum(len(n.tokens) for n in self.subtree())


@dataclass
class PrefixForest:
    """Roots of the trees, plus the node each sequence ends at."""

    roots: list[PrefixNode]
    end_node: list[PrefixNode]

    @property
    def num_tokens(self) -> int:
        """Tokens that run once sharing is applied."""
        return sum(r.subtree_tokens() for r in self.roots)


def build_prefix_forest(
    sequences: Sequence[Sequence[int]], min_shared_tokens: int = DEFAULT_MIN_SHARED_TOKENS
) -> PrefixForest:
    """Arrange ``sequences`` in a radix tree; identical sequences end at the same node.

    ``min_shared_tokens=0`` disables sharing except for exact duplicates, which are always merged.
    """
    n = len(sequences)
    seqs = [list(s) for s in sequences]
    end_node: list[PrefixNode | None] = [None] * n
    roots: list[PrefixNode] = []
    # Exact duplicates first: they always share everything.
    first_of: dict[tuple[int, ...], int] = {}
    dup_of: dict[int, int] = {}
    unique: list[int] = []
    for i, s in enumerate(seqs):
        key = tuple(s)
        if key in first_of:
            dup_of[i] = first_of[key]
        else:
            first_of[key] = i
            unique.append(i)
    order = sorted(unique, key=lambda i: seqs[i])
    if min_shared_tokens <= 0:
        for i in order:
            node = PrefixNode(tokens=seqs[i], start=0, ends=[i])
            roots.append(node)
            end_node[i] = node
    else:
        _build_level(seqs, order, 0, None, roots, end_node, min_shared_tokens)
    for i, j in dup_of.items():
        node = end_node[j]
        assert node is not None
        node.ends.append(i)
        end_node[i] = node
    assert all(e is not None for e in end_node)
    return PrefixForest(roots=roots, end_node=end_node)  # type: ignore[arg-type]


def common_prefix(
    a: Sequence[int], a_start: int, b: Sequence[int], b_start: int, limit: int | None = None
) -> int:
    """How many tokens ``a[a_start:]`` and ``b[b_start:]`` share at their start (at most ``limit``).

    Runs of doubling length are compared as slices (C speed) until one differs; only that run is walked
    token by token. Long shared runs (a GRPO prompt, a cached prefix) then cost a few slice comparisons, and
    an early difference costs a short slice.
    """
    n = min(len(a) - a_start, len(b) - b_start)
    if limit is not None:
        n = min(n, limit)
    lo, step = 0, 16
    while lo < n:
        hi = min(n, lo + step)
        if a[a_start + lo : a_start + hi] != b[b_start + lo : b_start + hi]:
            break
        lo, step = hi, step * 2
    else:
        return n
    while a[a_start + lo] == b[b_start + lo]:
        lo += 1
    return lo


def _lcp(a: list[int], b: list[int], start: int) -> int:
    """Length of the common prefix of ``a`` and ``b`` (both known to agree before ``start``)."""
    return start + common_prefix(a, start, b, start)


def _build_level(
    seqs: list[list[int]],
    order: list[int],
    start: int,
    parent: PrefixNode | None,
    out: list[PrefixNode],
    end_node: list[PrefixNode | None],
    min_shared: int,
) -> None:
    """Place the (sorted, distinct) sequences ``order``, which agree before ``start``, under ``parent``.

    Sorted order makes every group sharing a longer prefix contiguous, and the common prefix of a sorted
    group is the common prefix of its first and last members. Iterative, so deep nesting cannot overflow.
    """
    stack = [(order, start, parent)]
    while stack:
        order, start, parent = stack.pop()
        i = 0
        while i < len(order):
            # Extend the group while the next sequence shares at least ``min_shared`` more tokens.
            first = seqs[order[i]]
            # In sorted order the common prefix with ``first`` only shrinks, so the group's end is found
            # by bisection (a linear scan is quadratic on deeply nested inputs).
            lo, hi = i + 1, len(order)
            while lo < hi:
                mid = (lo + hi) // 2
                if _lcp(first, seqs[order[mid]], start) - start >= min_shared:
                    lo = mid + 1
                else:
                    hi = mid
            j = lo
            group = order[i:j]
            if len(group) == 1:
                idx = group[0]
                node = PrefixNode(tokens=first[start:], start=start, parent=parent, ends=[idx])
                _attach(node, parent, out)
                end_node[idx] = node
            else:
                shared = _lcp(first, seqs[group[-1]], start)
                node = PrefixNode(tokens=first[start:shared], start=start, parent=parent)
                _attach(node, parent, out)
                rest = []
                for idx in group:
                    if len(seqs[idx]) == shared:  # this sequence is exactly the shared prefix
                        node.ends.append(idx)
                        end_node[idx] = node
                    else:
                        rest.append(idx)
                stack.append((rest, shared, node))
            i = j


def _attach(node: PrefixNode, parent: PrefixNode | None, roots: list[PrefixNode]) -> None:
    if parent is None:
        roots.append(node)
    else:
        parent.children.append(node)


__all__ = ["DEFAULT_MIN_SHARED_TOKENS", "PrefixForest", "PrefixNode", "build_prefix_forest", "common_prefix"]
