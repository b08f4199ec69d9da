"""Forward FLOP accounting and this CPU's measured fp32 matmul throughput on the model's own shapes.

FLOPs count multiply-adds as 2. Per token and layer: the q/k/v/o projections and the SwiGLU MLP; per
query-key pair and layer: ``4 * heads * head_dim`` (scores and weighted values). Attention is counted
causally (a token attends to itself and what precedes it), padding as work where a method pads. Norms,
RoPE and activations are not counted (they are not matmuls), so utilisation is against matmul peak.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from rlhf_rewards.engine.stats import RunStats


@dataclass(frozen=True)
class Shapes:
    hidden: int
    q_width: int
    kv_width: int
    intermediate: int
    layers: int
    heads: int
    head_dim: int

    @classmethod
    def from_config(cls, config: Any) -> Shapes:
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        kv_heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
        return cls(
            hidden=config.hidden_size,
            q_width=config.num_attention_heads * head_dim,
            kv_width=kv_heads * head_dim,
            intermediate=config.intermediate_size,
            layers=config.num_hidden_layers,
            heads=config.num_attention_heads,
            head_dim=head_dim,
        )

    @property
    def kv_flops_per_token(self) -> int:
        return 2 * 2 * self.hidden * self.kv_width

    @property
    def layer_flops_per_token(self) -> int:
        h = self.hidden
        return 2 * (h * self.q_width + 2 * h * self.kv_width + self.q_width * h + 3 * h * self.intermediate)

    @property
    def flops_per_pair(self) -> int:
        return 4 * self.heads * self.head_dim

    def matmuls(self) -> list[tuple[int, int, int]]:
        """``(K, N, count)`` of the linear layers of one decoder layer."""
        h, i = self.hidden, self.intermediate
        return [(h, self.q_width, 1), (h, self.kv_width, 2), (self.q_width, h, 1), (h, i, 2), (i, h, 1)]


def sequences_flops(shapes: Shapes, rows: list[int]) -> float:
    """Forward FLOPs of running each length in ``rows`` as its own causal sequence (padding included)."""
    tokens = sum(rows)
    pairs = sum(n * (n + 1) // 2 for n in rows)
    return float(shapes.layers * (tokens * shapes.layer_flops_per_token + pairs * shapes.flops_per_pair))


def padded_flops(shapes: Shapes, lengths: list[int], batch_size: int | None = None) -> float:
    """FLOPs of padded batches of ``batch_size`` in order (``None``: one batch of everything)."""
    batch_size = batch_size or len(lengths)
    rows = []
    for i in range(0, len(lengths), batch_size):
        chunk = lengths[i : i + batch_size]
        rows.extend([max(chunk)] * len(chunk))
    return sequences_flops(shapes, rows)


def engine_flops(shapes: Shapes, stats: RunStats) -> float:
    """FLOPs the engine executed, from ``ModelRunner.last_stats`` (pruned last layer included)."""
    full_layers = shapes.layers - 1
    f = full_layers * (
        stats.tokens_run * shapes.layer_flops_per_token + stats.attention_pairs * shapes.flops_per_pair
    )
    rows, last_rows = stats.tokens_run, stats.last_layer_rows
    f += (rows - last_rows) * shapes.kv_flops_per_token  # pruned rows still produce keys and values
    f += last_rows * shapes.layer_flops_per_token + stats.last_layer_attention_pairs * shapes.flops_per_pair
    return float(f)


def matmul_peak(shapes: Shapes, m: int, reps: int = 5) -> float:
    """Measured fp32 FLOP/s of this machine on the model's linear shapes at ``m`` rows (FLOP-weighted)."""
    m = max(int(m), 1)
    flops = seconds = 0.0
    with torch.inference_mode():
        for k, n, count in shapes.matmuls():
            a, b = torch.randn(m, k), torch.randn(k, n)
            torch.mm(a, b)
            times = []
            for _ in range(reps):
                t = time.perf_counter()
                torch.mm(a, b)
                times.append(time.perf_counter() - t)
            flops += 2.0 * m * k * n * count
            seconds += min(times) * count
    return flops / seconds


__all__ = ["Shapes", "engine_flops", "matmul_peak", "padded_flops", "sequences_flops"]
