"""The pooler interface: which token positions a request needs, and how their states are reduced."""

from __future__ import annotations

from typing import ClassVar, Protocol

import torch

from rlhf_rewards.pooling.params import ResolvedPooling


class Pooler(Protocol):
    """A pooling method. Runners gather only ``positions(...)`` so that heads never run on unused tokens."""

    pooling_type: ClassVar[str]

    def positions(self, token_ids: torch.Tensor, params: ResolvedPooling) -> torch.Tensor:
        """Indices (int64, into the request's tokens) whose hidden states this pooler reads."""
        ...

    def reduce(self, states: torch.Tensor) -> torch.Tensor:
        """Reduce the gathered ``[k, H]`` states: to ``[H]`` for sequence pooling, unchanged for token pooling."""
        ...
