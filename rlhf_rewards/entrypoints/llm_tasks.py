"""``LLM``'s task methods, as vLLM names them: ``classify``, ``embed``, ``score``, ``generative_score``
(and the removed ``reward``). Each is a thin layer over ``LLM.encode`` or over the module that does the
work (:mod:`~rlhf_rewards.entrypoints.scoring`, :mod:`~rlhf_rewards.entrypoints.generative_scoring`)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from rlhf_rewards.contract import Prompts
from rlhf_rewards.entrypoints.generative_scoring import GenerativeScoringOutput, generative_score
from rlhf_rewards.entrypoints.scoring import ScoringRequestOutput, score_pairs
from rlhf_rewards.lora.request import LoRARequest
from rlhf_rewards.outputs import (
    ClassificationOutput,
    ClassificationRequestOutput,
    EmbeddingOutput,
    EmbeddingRequestOutput,
    PoolingRequestOutput,
)
from rlhf_rewards.pooling import PoolingParams, check_task


class TaskMethods:
    """Mixed into ``LLM``, which provides ``encode`` (the one pooling path), ``chat_template``, the user's
    pooler config and the supported tasks."""

    chat_template: str | None

    @property
    def pooling_task(self) -> str:
        """The model's own pooling task (vLLM's ``LLM.pooling_task``): ``PoolerConfig(task=...)`` if set,
        else the architecture's default (``token_classify`` for process reward models)."""
        if self.user_pooler_config.task is not None:
            return check_task(self.user_pooler_config.task, self.supported_tasks)
        if self.strict_vllm_compat:  # vLLM's ModelConfig.get_pooling_task priority
            supported = self.supported_tasks
            return next(t for t in ("embed", "classify", "token_embed", "token_classify") if t in supported)
        return self.model_info().default_task

    def classify(
        self,
        prompts: Prompts,
        pooling_params: PoolingParams | Sequence[PoolingParams] | None = None,
        *,
        lora_request: LoRARequest | Sequence[LoRARequest | None] | None = None,
        truncate_prompt_tokens: int | None = None,
        use_tqdm: bool | Callable[..., Any] = True,
        tokenization_kwargs: dict[str, Any] | None = None,
    ) -> list[ClassificationRequestOutput]:
        """vLLM's ``LLM.classify``: ``encode(..., pooling_task="classify")`` with ``outputs.probs`` lists."""
        outs = self._encode_lists(
            "classify",
            prompts,
            pooling_params,
            lora_request,
            truncate_prompt_tokens,
            use_tqdm,
            tokenization_kwargs,
        )
        return [
            ClassificationRequestOutput(o.request_id, ClassificationOutput(d), o.prompt_token_ids)
            for o, d in outs
        ]

    def embed(
        self,
        prompts: Prompts,
        pooling_params: PoolingParams | Sequence[PoolingParams] | None = None,
        *,
        lora_request: LoRARequest | Sequence[LoRARequest | None] | None = None,
        truncate_prompt_tokens: int | None = None,
        use_tqdm: bool | Callable[..., Any] = True,
        tokenization_kwargs: dict[str, Any] | None = None,
    ) -> list[EmbeddingRequestOutput]:
        """vLLM's ``LLM.embed``: ``encode(..., pooling_task="embed")`` with ``outputs.embedding`` lists."""
        outs = self._encode_lists(
            "embed",
            prompts,
            pooling_params,
            lora_request,
            truncate_prompt_tokens,
            use_tqdm,
            tokenization_kwargs,
        )
        return [EmbeddingRequestOutput(o.request_id, EmbeddingOutput(d), o.prompt_token_ids) for o, d in outs]

    def _encode_lists(
        self,
        task: str,
        prompts: Prompts,
        pooling_params: PoolingParams | Sequence[PoolingParams] | None,
        lora_request: LoRARequest | Sequence[LoRARequest | None] | None,
        truncate_prompt_tokens: int | None,
        use_tqdm: bool | Callable[..., Any],
        tokenization_kwargs: dict[str, Any] | None,
    ) -> list[tuple[PoolingRequestOutput, list[Any]]]:
        outs = self.encode(
            prompts,
            pooling_params,
            pooling_task=task,
            lora_request=lora_request,
            truncate_prompt_tokens=truncate_prompt_tokens,
            use_tqdm=use_tqdm,
            tokenization_kwargs=tokenization_kwargs,
        )
        return [(o, o.outputs.data.tolist()) for o in outs]

    def score(
        self,
        data_1: str | Sequence[str],
        data_2: str | Sequence[str],
        /,
        *,
        use_tqdm: bool | Callable[..., Any] = True,
        pooling_params: PoolingParams | None = None,
        lora_request: LoRARequest | Sequence[LoRARequest | None] | None = None,
        tokenization_kwargs: dict[str, Any] | None = None,
        chat_template: str | None = None,
    ) -> list[ScoringRequestOutput]:
        """vLLM's ``LLM.score``: one score per ``(data_1[i], data_2[i])`` pair (``1 -> 1``, ``1 -> N``, ``N -> N``).

        The kind follows the model's :attr:`pooling_task`, as in vLLM: ``classify`` (a one-label classifier or
        a converted reranker) is a cross-encoder over the pair, encoded as vLLM builds it (the tokenizer's
        pair encoding, or ``query + document`` when ``config.use_sep_token`` is false, or ``chat_template``
        rendered over ``[{"role": "query"}, {"role": "document"}]`` when one is given, here or to ``LLM``);
        ``embed`` is the cosine similarity of the two embeddings; ``token_embed`` is late interaction
        (MaxSim). ``pooling_params.extra_kwargs={"max_tokens_per_doc": k}`` cuts documents to k tokens,
        ``"max_tokens_per_query"`` queries (vLLM's; each under ``max_model_len``, 0: no cut).
        See :mod:`rlhf_rewards.entrypoints.scoring`.
        """
        return score_pairs(
            self,
            data_1,
            data_2,
            use_tqdm=use_tqdm,
            pooling_params=pooling_params,
            lora_request=lora_request,
            tokenization_kwargs=tokenization_kwargs,
            chat_template=chat_template if chat_template is not None else self.chat_template,
        )

    def generative_score(
        self,
        query: str | Sequence[int],
        items: str | Sequence[str] | Sequence[Sequence[int]],
        label_token_ids: Sequence[int],
        *,
        apply_softmax: bool = True,
        item_first: bool = False,
        add_special_tokens: bool = True,
        lora_request: LoRARequest | None = None,
        use_tqdm: bool | Callable[..., Any] = True,
    ) -> list[GenerativeScoringOutput]:
        """vLLM's ``POST /generative_scoring`` offline: for each item, the probability that a causal LM's next
        token after ``query + item`` is ``label_token_ids[0]`` (a judge read through its answer token).

        One packed forward, no decoding: the query shared by all items is computed once (prefix sharing),
        and only the label rows of the LM head are multiplied at each sequence's last position
        (``apply_softmax=False``: one full-vocabulary row per item). See
        :mod:`rlhf_rewards.entrypoints.generative_scoring`.

        Args:
            query: Text (tokenized with ``add_special_tokens``) or token ids.
            items: Texts (tokenized without special tokens) or token-id lists, not mixed; one string is one item.
            label_token_ids: The label tokens; the score is the probability of the first.
            apply_softmax: ``True``: softmax over the label tokens' logits only; ``False``: the label's
                probability over the whole vocabulary.
            item_first: Put each item before the query instead of after it.
            add_special_tokens: Add the tokenizer's special tokens to a text query (never to items).
            lora_request: One adapter for every item (``None``: the base model).
            use_tqdm: Progress bar on calls of more than one micro-batch.

        Returns:
            One :class:`~rlhf_rewards.entrypoints.generative_scoring.GenerativeScoringOutput` per item, in
            order: ``.score``, ``.label_probs`` (every label's probability), ``.prompt_token_ids``.
            Prompts are cut to their first ``max_model_len - 1`` tokens, as vLLM does.
        """
        return generative_score(
            self,
            query,
            items,
            label_token_ids,
            apply_softmax=apply_softmax,
            item_first=item_first,
            add_special_tokens=add_special_tokens,
            lora_request=lora_request,
            use_tqdm=use_tqdm,
        )

    def reward(self, *args: Any, **kwargs: Any) -> list[PoolingRequestOutput]:
        """Removed, as in vLLM 0.33: raises ``AttributeError`` naming the replacement."""
        raise AttributeError(
            "LLM.reward() was removed (as in vLLM): use llm.encode(prompts, "
            "pooling_task='token_classify') for token reward models, or pooling_task='classify' "
            "for sequence reward models."
        )


__all__ = ["TaskMethods"]
