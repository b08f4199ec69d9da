"""The one worker interface shared by the colocated, remote and Ray workers.

``RewardFunction`` and the trainer callbacks only ever talk to :class:`RewardWorker`, so they never need to
know where the model runs.
"""

from __future__ import annotations

import asyncio
from abc import abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from rlhf_rewards.contract import ChatRenderer, ModelInfo, Prompts
from rlhf_rewards.entrypoints.generative_scoring import GenerativeScoringOutput
from rlhf_rewards.lora.request import LoRARequest
from rlhf_rewards.outputs import PoolingRequestOutput
from rlhf_rewards.pooling.params import PoolingParams
from rlhf_rewards.workers.calls import EncodeCall, GenerativeScoreCall


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

    def record(self, outputs: Sequence[Any], seconds: float, *, tokens: int | None = None) -> None:
        """Count one served call: its outputs (one per prompt or item), their prompt tokens (``tokens``, else
        the outputs' ``prompt_token_ids``) and the time it took."""
        self.requests += 1
        self.prompts += len(outputs)
        self.tokens += sum(len(o.prompt_token_ids or ()) for o in outputs) if tokens is None else tokens
        self.busy_seconds += seconds


class RewardWorker(ChatRenderer):
    """Runs pooling requests somewhere. Same arguments and outputs as :meth:`rlhf_rewards.LLM.encode`.

    The public signatures are written here once; a worker implements :meth:`_encode` (one
    :class:`~rlhf_rewards.workers.calls.EncodeCall`), :meth:`_render_chat`, :meth:`model_info` and
    :meth:`health`, and may implement :meth:`_generative_score` and the async hooks :meth:`_aencode` and
    :meth:`_agenerative_score`.
    """

    stats: WorkerStats

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
        left truncation (:data:`~rlhf_rewards.workers.calls.KEEP_LAST_TOKENS`). ``add_special_tokens``: as
        ``LLM.encode``'s (string prompts only; ``False`` tokenizes a text without the tokenizer's BOS/EOS).
        """
        return self._encode(
            EncodeCall(
                prompts,
                pooling_params,
                pooling_task=pooling_task,
                lora_request=lora_request,
                truncate_prompt_tokens=truncate_prompt_tokens,
                use_tqdm=use_tqdm,
                add_special_tokens=add_special_tokens,
            )
        )

    async def aencode(
        self,
        prompts: Prompts,
        pooling_params: PoolingParams | Sequence[PoolingParams] | None = None,
        **options: Any,
    ) -> list[PoolingRequestOutput]:
        """Async :meth:`encode` (same keyword arguments), from any event loop."""
        return await self._aencode(EncodeCall(prompts, pooling_params, **options))

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
        return self._generative_score(
            GenerativeScoreCall(
                query,
                items,
                label_token_ids,
                apply_softmax=apply_softmax,
                item_first=item_first,
                add_special_tokens=add_special_tokens,
                lora_request=lora_request,
                all_labels=all_labels,
            )
        )

    async def agenerative_score(
        self,
        query: str | Sequence[int],
        items: Sequence[str] | Sequence[Sequence[int]],
        label_token_ids: Sequence[int],
        **options: Any,
    ) -> list[GenerativeScoringOutput]:
        """Async :meth:`generative_score` (same keyword arguments), from any event loop."""
        return await self._agenerative_score(GenerativeScoreCall(query, items, label_token_ids, **options))

    def tokenize(self, texts: Sequence[str], *, add_special_tokens: bool = False) -> list[list[int]]:
        """Token ids of each text with the model's tokenizer. The default renders each text verbatim with
        :meth:`render_chat` (no special tokens: ``add_special_tokens`` must be False)."""
        if add_special_tokens:
            raise NotImplementedError(f"{type(self).__name__}.tokenize adds no special tokens.")
        template = "{{ messages[0]['content'] }}"
        return self.render_chat([[{"role": "user", "content": t}] for t in texts], chat_template=template)

    @abstractmethod
    def model_info(self) -> ModelInfo:
        """Facts about the served model (cached by implementations)."""

    @abstractmethod
    def health(self) -> WorkerHealth:
        """Whether the worker can serve now."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release resources (connections, actors, accelerator memory)."""

    def __enter__(self) -> RewardWorker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ for subclasses
    @abstractmethod
    def _encode(self, call: EncodeCall) -> list[PoolingRequestOutput]:
        """Serve one :meth:`encode` call."""

    async def _aencode(self, call: EncodeCall) -> list[PoolingRequestOutput]:
        """Serve one :meth:`aencode` call. The default runs :meth:`encode` in a thread, so the event loop
        stays free (through the public method, so a wrapper installed on it, e.g. by
        :class:`~rlhf_rewards.callbacks.RewardWorkerCallback`, runs too)."""
        return await asyncio.to_thread(self.encode, call.prompts, call.pooling_params, **call.keywords())

    def _generative_score(self, call: GenerativeScoreCall) -> list[GenerativeScoringOutput]:
        """Serve one :meth:`generative_score` call (workers that serve it override this)."""
        raise NotImplementedError(f"{type(self).__name__} does not implement generative scoring.")

    async def _agenerative_score(self, call: GenerativeScoreCall) -> list[GenerativeScoringOutput]:
        """Serve one :meth:`agenerative_score` call; the default runs :meth:`_generative_score` in a thread."""
        return await asyncio.to_thread(self._generative_score, call)
