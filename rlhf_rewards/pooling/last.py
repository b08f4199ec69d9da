"""LAST pooling: the hidden state of the final token (decoder reward models)."""

from __future__ import annotations

import torch

from rlhf_rewards.pooling.params import ResolvedPooling


class LastPooler:
    """Reads the last token's state; the standard for causal sequence classifiers."""

    pooling_type = "LAST"

    def positions(self, token_ids: torch.Tensor, params: ResolvedPooling) -> torch.Tensor:
        """See :meth:`~rlhf_rewards.pooling.base.Pooler.positions`."""
        return torch.tensor([token_ids.numel() - 1], dtype=torch.long)

    def reduce(self, states: torch.Tensor) -> torch.Tensor:
        """See :meth:`~rlhf_rewards.pooling.base.Pooler.reduce`."""
        return states[-1]
