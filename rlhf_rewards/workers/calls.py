"""One worker call as one object: :class:`EncodeCall` and :class:`GenerativeScoreCall`.

:class:`~rlhf_rewards.workers.base.RewardWorker`'s public methods take the arguments of ``LLM.encode`` and
``LLM.generative_score``; they hand each call on as one of these, so a worker implements one method taking
the call instead of repeating the signature. ``run_on`` runs a call on an in-process ``LLM`` by the worker
contract (the colocated worker and every Ray replica do).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import KW_ONLY, dataclass, fields
from typing import TYPE_CHECKING, Any

from rlhf_rewards.contract import Prompts
from rlhf_rewards.entrypoints.generative_scoring import GenerativeScoringOutput
from rlhf_rewards.lora.request import LoRARequest
from rlhf_rewards.outputs import PoolingRequestOutput
from rlhf_rewards.pooling.params import PoolingParams

if TYPE_CHECKING:
    from rlhf_rewards.entrypoints.llm import LLM

#: The ``tokenization_kwargs`` a worker passes to ``LLM.encode``: truncation keeps the last tokens.
KEEP_LAST_TOKENS: dict[str, str] = {"truncation_side": "left"}


@dataclass(frozen=True)
class EncodeCall:
    """The arguments of one :meth:`~rlhf_rewards.workers.base.RewardWorker.encode` call (see there)."""

    prompts: Prompts
    pooling_params: PoolingParams | Sequence[PoolingParams] | None = None
    _: KW_ONLY
    pooling_task: str | None = None
    lora_request: LoRARequest | Sequence[LoRARequest | None] | None = None
    truncate_prompt_tokens: int | None = None
    use_tqdm: bool = False
    add_special_tokens: bool = True

    def keywords(self) -> dict[str, Any]:
        """The keyword arguments of the call (all but ``prompts`` and ``pooling_params``)."""
        return {f.name: getattr(self, f.name) for f in fields(self)[2:]}

    def run_on(self, llm: LLM) -> list[PoolingRequestOutput]:
        """``llm.encode`` of this call; truncation keeps the LAST tokens (:data:`KEEP_LAST_TOKENS`)."""
        return llm.encode(
            self.prompts,
            self.pooling_params,
            pooling_task=self.pooling_task,
            lora_request=self.lora_request,
            truncate_prompt_tokens=self.truncate_prompt_tokens,
            tokenization_kwargs=KEEP_LAST_TOKENS,
            add_special_tokens=self.add_special_tokens,
            use_tqdm=self.use_tqdm,
        )


@dataclass(frozen=True)
class GenerativeScoreCall:
    """The arguments of one :meth:`~rlhf_rewards.workers.base.RewardWorker.generative_score` call."""

    query: str | Sequence[int]
    items: Sequence[str] | Sequence[Sequence[int]]
    label_token_ids: Sequence[int]
    _: KW_ONLY
    apply_softmax: bool = True
    item_first: bool = False
    add_special_tokens: bool = True
    lora_request: LoRARequest | None = None
    all_labels: bool = False

    def llm_options(self) -> dict[str, Any]:
        """The keywords ``LLM.generative_score`` takes (every output of it has ``label_probs``, so
        ``all_labels`` is not one of them)."""
        return {
            "apply_softmax": self.apply_softmax,
            "item_first": self.item_first,
            "add_special_tokens": self.add_special_tokens,
            "lora_request": self.lora_request,
        }

    def run_on(self, llm: LLM) -> list[GenerativeScoringOutput]:
        """``llm.generative_score`` of this call (no progress bar)."""
        return llm.generative_score(
            self.query, self.items, self.label_token_ids, use_tqdm=False, **self.llm_options()
        )


__all__ = ["KEEP_LAST_TOKENS", "EncodeCall", "GenerativeScoreCall"]
