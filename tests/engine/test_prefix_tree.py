"""The prefix forest: every sequence is the concatenation of its root path, and sharing is maximal."""

from __future__ import annotations

import random

import pytest

from rlhf_rewards.engine.packing import bin_pack, work_units
from rlhf_rewards.engine.prefix_tree import build_prefix_forest


def _tokens(node):
    return [t for n in node.path() for t in n.tokens]


def _check(forest, seqs):
    for i, s in enumerate(seqs):
        node = forest.end_node[i]
        assert _tokens(node) == list(s)
        assert i in node.ends
        for n in node.path():
            assert len(n.tokens) > 0
            assert n.start == (n.parent.end if n.parent else 0)


def test_grpo_groups_share_their_prompt():
    rng = random.Random(0)
    prompts = [[rng.randrange(1, 50) for _ in range(30)] for _ in range(3)]
    seqs = [p + [rng.randrange(50, 100) for _ in range(rng.randint(1, 9))] for p in prompts for _ in range(4)]
    forest = build_prefix_forest(seqs, min_shared_tokens=8)
    _check(forest, seqs)
    assert len(forest.roots) == 3
    assert all(len(r.tokens) == 30 and len(r.children) == 4 for r in forest.roots)
    assert forest.num_tokens == sum(len(s) for s in seqs) - 3 * 3 * 30


def test_duplicates_prefixes_single_token_and_nesting():
    base = list(range(1, 21))
    seqs = [
        base + [30, 31, 32],
        base + [30, 31, 32],  # duplicate
        base,  # a prompt that is a prefix of others
        base[:12],  # prefix of the prefix
        base + [40] * 10 + [41],  # nested: shares base + [40]*10 with the next
        base + [40] * 10 + [42, 43],
        [7],  # single token
        [7],  # duplicate single token
        [99] * 5 + [1],  # shares < min_shared with the next
        [99] * 5 + [2],
    ]
    forest = build_prefix_forest(seqs, min_shared_tokens=4)
    _check(forest, seqs)
    assert forest.end_node[0] is forest.end_node[1]
    assert forest.end_node[6] is forest.end_node[7]
    assert forest.end_node[0].parent is forest.end_node[2]  # base is a node, its own request ends there
    assert forest.end_node[2].parent is forest.end_node[3]
    nested = forest.end_node[4].parent
    assert nested is forest.end_node[5].parent and len(nested.tokens) == 10
    shared = forest.end_node[8].parent  # 5 shared tokens >= min_shared_tokens=4
    assert shared is forest.end_node[9].parent and shared.tokens == [99] * 5
    assert build_prefix_forest(seqs, min_shared_tokens=6).end_node[8].parent is None  # 5 < 6: not split off
    # Each unique token run is counted once.
    assert forest.num_tokens == 12 + 8 + 3 + 10 + 1 + 2 + 1 + 5 + 1 + 1


def test_sharing_off_still_merges_exact_duplicates():
    seqs = [[1, 2, 3], [1, 2, 3], [1, 2, 4]]
    forest = build_prefix_forest(seqs, min_shared_tokens=0)
    _check(forest, seqs)
    assert len(forest.roots) == 2 and forest.end_node[0] is forest.end_node[1]


@pytest.mark.parametrize("seed", range(5))
def test_random_forests_rebuild_every_sequence(seed):
    rng = random.Random(seed)
    stems = [[rng.randrange(4) for _ in range(rng.randint(1, 12))] for _ in range(4)]
    seqs = []
    for _ in range(40):
        s = list(rng.choice(stems)) + [rng.randrange(4) for _ in range(rng.randint(0, 6))]
        seqs.append(s or [0])
    for m in (1, 2, 5):
        _check(build_prefix_forest(seqs, min_shared_tokens=m), seqs)


def test_deep_nesting_does_not_recurse():
    seqs = [[1] * n for n in range(1, 3000, 2)]
    forest = build_prefix_forest(seqs, min_shared_tokens=1)
    _check(forest, seqs)
    assert forest.num_tokens == 2999


def test_units_respect_the_budget_and_keep_ancestors():
    prompt = list(range(100, 160))
    seqs = [prompt + [i] * 20 for i in range(10)] + [list(range(500, 800))]
    forest = build_prefix_forest(seqs)
    units = work_units(forest, budget=150)
    covered = sorted(i for u in units for i in u.sequences)
    assert covered == list(range(len(seqs)))
    for u in units:
        ids = {id(n) for n in u.nodes}
        for i in u.sequences:
            assert all(id(n) in ids for n in forest.end_node[i].path())
        assert u.num_tokens <= 150 or len(u.sequences) == 1
    bins = bin_pack(units, 150)
    assert sorted(i for b in bins for u in b for i in u.sequences) == covered
    assert all(sum(u.num_tokens for u in b) <= 150 or len(b) == 1 for b in bins)
