"""Work counters of one :meth:`~rlhf_rewards.engine.runner.ModelRunner.run`, for benchmarks and logs."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from rlhf_rewards.engine.attention.plan import Segment


def _causal_pairs(n: int) -> int:
    """Query-key pairs of causal attention over ``n`` tokens."""
    return n * (n + 1) // 2


@dataclass
class RunStats:
    """What one call ran.

    Attributes:
        forwards: Forward passes.
        tokens_requested: Tokens of the call's requests.
        tokens_run: Rows through every layer but the last (padding included on the padded path).
        last_layer_rows: Rows through the last layer (fewer than ``tokens_run`` when it is pruned).
        attention_pairs: Query-key pairs attention evaluates per layer.
        last_layer_attention_pairs: Query-key pairs of the last layer.
        cached_tokens: Tokens read from the cross-call prefix cache instead of being run.
    """

    forwards: int = 0
    tokens_requested: int = 0
    tokens_run: int = 0
    last_layer_rows: int = 0
    attention_pairs: int = 0
    last_layer_attention_pairs: int = 0
    cached_tokens: int = 0

    def add_padded(self, rows: int, width: int) -> None:
        """One padded forward of ``rows`` rows of ``width`` tokens (every layer runs every row)."""
        self.forwards += 1
        self.tokens_run += rows * width
        self.last_layer_rows += rows * width
        self.attention_pairs += rows * _causal_pairs(width)
        self.last_layer_attention_pairs += rows * _causal_pairs(width)

    def add_packed_attention(self, segments: list[Segment], total: int, pruned: bool) -> None:
        """The last layer's rows and the attention pairs of a packed row of ``total`` tokens; with
        ``pruned``, the last layer ran only the segments' ``rows``."""
        pairs = sum(seg.length * seg.prefix_length + _causal_pairs(seg.length) for seg in segments)
        self.attention_pairs += pairs
        if not pruned:
            self.last_layer_rows += total
            self.last_layer_attention_pairs += pairs
            return
        for seg in segments:
            rows = seg.rows if seg.rows is not None else torch.arange(seg.length)
            self.last_layer_rows += int(rows.numel())
            self.last_layer_attention_pairs += int((rows + 1).sum()) + int(rows.numel()) * seg.prefix_length


__all__ = ["RunStats"]
