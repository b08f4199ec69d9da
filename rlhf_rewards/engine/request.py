"""The engine's internal request: tokens, resolved pooling settings and adapter."""

from __future__ import annotations

from dataclasses import dataclass

from rlhf_rewards.lora.request import LoRARequest
from rlhf_rewards.pooling.params import ResolvedPooling


@dataclass
class EngineRequest:
    """One prompt ready to run.

    Args:
        index: Position of the prompt in the caller's list (outputs are returned in this order).
        request_id: Unique id reported in the output.
        token_ids: Token ids to run (already truncated and validated).
        pooling: Effective pooling settings.
        lora: Adapter to apply, or ``None`` for the base model.
        cache_salt: vLLM's ``cache_salt``: requests share cross-call cached prefixes only with requests of the
            same salt (and adapter). ``None``: the unsalted namespace.
    """

    index: int
    request_id: str
    token_ids: list[int]
    pooling: ResolvedPooling
    lora: LoRARequest | None = None
    cache_salt: str | None = None

    @property
    def num_tokens(self) -> int:
        """Number of tokens the request runs."""
        return len(self.token_ids)
