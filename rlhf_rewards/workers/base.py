"""The one worker interface shared by the colocated, remote and Ray workers.

``RewardFunction`` and the trainer callbacks only ever talk to :class:`RewardWorker`, so they never need to
know where the model runs.
"""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from rlhf_rewards.contract import ModelInfo, Prompts
from rlhf_rewards.entrypoints.generative_scoring import GenerativeScoringOutput
from rlhf_rewards.lora.request import LoRARequest
from rlhf_rewards.outputs import PoolingRequestOutput
from rlhf_rewards.pooling.params import PoolingParams


@dataclass
class WorkerHealth:
    """Health of a worker. ``ok`` is False if it cannot serve; ``down`` names the endpoints that are down."""

    ok: bool
    details: dict[str, Any] = field(default_factory=dict)
    down: list[str] = field(default_factory=list)


@dataclass
class WorkerStats:
    """Counters a worker keeps for metrics (monotonic; callbacks report differences)."""

    requests: int = 0
    prompts: int = 0
    tokens: int = 0
    retries: int = 0
    failures: int = 0
    busy_seconds: float = 0.0

    def record(self, outputs: Sequence[PoolingRequestOutput], seconds: float) -> None:
        """Count one served ``encode`` call: its outputs, their prompt tokens and the time it took."""
        self.requests += 1
        self.prompts += len(outputs)
        self.tokens += sum(len(o.prompt_token_ids) for o in outputs)
        self.busy_seconds += seconds


#: The ``tokenization_kwargs`` a worker passes to ``LLM.encode``: truncation keeps the last tokens.
KEEP_LAST_TOKENS: dict[str, str] = {"truncation_side": "left"}


class RewardWorker(ABC):
    """Runs pooling requests somewhere. Same arguments and outputs as :meth:`rlhf_rewards.LLM.encode`."""

    stats: WorkerStats

    @abstractmethod
    def encode(
        self,
        prompts: Prompts,
        pooling_params: PoolingParams | Sequence[PoolingParams] | None = None,
        *,
        pooling_task: str | None = None,
        lora_request: LoRARequest | Sequence[LoRARequest | None] | None = None,
        truncate_prompt_tokens: int | None = None,
        use_tqdm: bool = False,
        add_special_tokens: bool = True,
    ) -> list[PoolingRequestOutput]:
        """Pool ``prompts``; see :meth:`rlhf_rewards.LLM.encode`.

        One difference: ``truncate_prompt_tokens=k`` keeps the LAST k tokens of a prompt (workers serve reward
        functions, which read the score at the end of the text), where ``LLM.encode`` keeps the first k unless
        ``tokenization_kwargs={"truncation_side": "left"}``, as vLLM. Implementations ask the engine for
        left truncation (:data:`KEEP_LAST_TOKENS`). ``add_special_tokens``: as ``LLM.encode``'s (string prompts
        only; ``False`` tokenizes a text without the tokenizer's BOS/EOS).
        """

    async def aencode(
        self,
        prompts: Prompts,
        pooling_params: PoolingParams | Sequence[PoolingParams] | None = None,
        *,
        pooling_task: str | None = None,
        lora_request: LoRARequest | Sequence[LoRARequest | None] | None = None,
        truncate_prompt_tokens: int | None = None,
        use_tqdm: bool = False,
        add_special_tokens: bool = True,
    ) -> list[PoolingRequestOutput]:
        """Async :meth:`encode`; the default runs it in a thread so the event loop stays free."""
        return await asyncio.to_thread(
            self.encode,
            prompts,
            pooling_params,
            pooling_task=pooling_task,
            lora_request=lora_request,
            truncate_prompt_tokens=truncate_prompt_tokens,
            use_tqdm=use_tqdm,
            add_special_tokens=add_special_tokens,
        )

    def generative_score(
        self,
        query: str | Sequence[int],
        items: Sequence[str] | Sequence[Sequence[int]],
        label_token_ids: Sequence[int],
        *,
        apply_softmax: bool = True,
        item_first: bool = False,
        add_special_tokens: bool = True,
        lora_request: LoRARequest | None = None,
        all_labels: bool = False,
    ) -> list[GenerativeScoringOutput]:
        """Probability of ``label_token_ids[0]`` as the next token after each ``query + item``: see
        :meth:`rlhf_rewards.LLM.generative_score` (vLLM's ``/generative_scoring``). With ``all_labels`` every
        output's ``label_probs`` holds each label's probability (a remote worker then asks once per label)."""
        raise NotImplementedError(f"{type(self).__name__} does not implement generative scoring.")

    def tokenize(self, texts: Sequence[str], *, add_special_tokens: bool = False) -> list[list[int]]:
        """Token ids of each text with the model's tokenizer. The default renders each text verbatim with
        :meth:`render_chat` (no special tokens: ``add_special_tokens`` must be False)."""
        if add_special_tokens:
            raise NotImplementedError(f"{type(self).__name__}.tokenize adds no special tokens.")
        template = "{{ messages[0]['content'] }}"
        return self.render_chat([[{"role": "user", "content": t}] for t in texts], chat_template=template)

    async def agenerative_score(
        self,
        query: str | Sequence[int],
        items: Sequence[str] | Sequence[Sequence[int]],
        label_token_ids: Sequence[int],
        **kwargs: Any,
    ) -> list[GenerativeScoringOutput]:
        """Async :meth:`generative_score`; the default runs it in a thread so the event loop stays free."""
        return await asyncio.to_thread(self.generative_score, query, items, label_token_ids, **kwargs)

    @abstractmethod
    def model_info(self) -> ModelInfo:
        """Facts about the served model (cached by implementations)."""

    @abstractmethod
    def render_chat(
        self,
        conversations: Sequence[Sequence[dict[str, Any]]],
        *,
        chat_template: str | None = None,
        add_generation_prompt: bool = False,
    ) -> list[list[int]]:
        """Token ids of each conversation rendered with the reward model's own chat template."""

    @abstractmethod
    def health(self) -> WorkerHealth:
        """Whether the worker can serve now."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release resources (connections, actors, accelerator memory)."""

    def __enter__(self) -> RewardWorker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
