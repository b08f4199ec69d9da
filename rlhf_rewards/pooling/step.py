"""STEP pooling: one output row per reasoning-step tag (process reward models).

Rows are kept where the *input* token equals ``step_tag_id`` (all rows when it is unset); the column
selection by ``returned_token_ids`` happens in the head, so an LM-head PRM only computes those vocabulary
logits instead of the full vocabulary.
"""

from __future__ import annotations

import torch

from rlhf_rewards.pooling.params import ResolvedPooling


class StepPooler:
    """Keeps the states at step-tag positions."""

    pooling_type = "STEP"

    def positions(self, token_ids: torch.Tensor, params: ResolvedPooling) -> torch.Tensor:
        if params.step_tag_id is None:
            return torch.arange(token_ids.numel(), dtype=torch.long)
        return torch.nonzero(token_ids == params.step_tag_id, as_tuple=False).flatten()

    def reduce(self, states: torch.Tensor) -> torch.Tensor:
        return states
