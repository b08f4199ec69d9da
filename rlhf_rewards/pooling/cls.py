"""CLS pooling: the hidden state of the first token (encoder classifiers)."""

from __future__ import annotations

import torch

from rlhf_rewards.pooling.params import ResolvedPooling


class CLSPooler:
    """Reads the first token's state."""

    pooling_type = "CLS"

    def positions(self, token_ids: torch.Tensor, params: ResolvedPooling) -> torch.Tensor:
        """See :meth:`~rlhf_rewards.pooling.base.Pooler.positions`."""
        return torch.tensor([0], dtype=torch.long)

    def reduce(self, states: torch.Tensor) -> torch.Tensor:
        """See :meth:`~rlhf_rewards.pooling.base.Pooler.reduce`."""
        return states[0]
