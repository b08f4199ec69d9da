"""MEAN pooling: the average hidden state over all tokens."""

from __future__ import annotations

import torch

from rlhf_rewards.pooling.params import ResolvedPooling


class MeanPooler:
    """Averages every token's state (in float32, so long inputs do not lose precision)."""

    pooling_type = "MEAN"

    def positions(self, token_ids: torch.Tensor, params: ResolvedPooling) -> torch.Tensor:
        """See :meth:`~rlhf_rewards.pooling.base.Pooler.positions`."""
        return torch.arange(token_ids.numel(), dtype=torch.long)

    def reduce(self, states: torch.Tensor) -> torch.Tensor:
        """See :meth:`~rlhf_rewards.pooling.base.Pooler.reduce`."""
        return states.float().mean(dim=0)
