"""ALL pooling: one output row per token (token reward models)."""

from __future__ import annotations

import torch

from rlhf_rewards.pooling.params import ResolvedPooling


class AllPooler:
    """Keeps every token's state."""

    pooling_type = "ALL"

    def positions(self, token_ids: torch.Tensor, params: ResolvedPooling) -> torch.Tensor:
        """See :meth:`~rlhf_rewards.pooling.base.Pooler.positions`."""
        return torch.arange(token_ids.numel(), dtype=torch.long)

    def reduce(self, states: torch.Tensor) -> torch.Tensor:
        """See :meth:`~rlhf_rewards.pooling.base.Pooler.reduce`."""
        return states
