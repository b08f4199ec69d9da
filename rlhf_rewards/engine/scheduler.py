"""Token-budget micro-batching: group requests so one forward never exceeds ``max_num_batched_tokens``.

Requests are sorted by length (longest first) so each micro-batch pads as little as possible; a batch's
cost is ``rows * longest``. A single request longer than the budget still runs, alone.
"""

from __future__ import annotations

from collections.abc import Sequence


def plan_micro_batches(lengths: Sequence[int], max_num_batched_tokens: int) -> list[list[int]]:
    """Indices into ``lengths`` grouped into micro-batches whose padded size fits the token budget."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    batches: list[list[int]] = []
    current: list[int] = []
    longest = 0
    for i in order:
        n = lengths[i]
        width = max(longest, n)
        if current and width * (len(current) + 1) > max_num_batched_tokens:
            batches.append(current)
            current, width = [], n
        current.append(i)
        longest = width
    if current:
        batches.append(current)
    return batches
