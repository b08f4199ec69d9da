"""Output types of ``LLM.encode``, shaped like vLLM's."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class PoolingOutput:
    """The pooled result of one request.

    Args:
        data: A float32 CPU tensor: ``[num_labels]`` for classify, ``[n_rows, k]`` for token_classify,
            ``[hidden]`` for embed, ``[n_tokens, hidden]`` for token_embed.
    """

    data: torch.Tensor


@dataclass
class PoolingRequestOutput:
    """One ``encode`` result, in the order of the prompts.

    Args:
        request_id: Unique id of the request.
        outputs: The pooled data.
        prompt_token_ids: The token ids that were scored (after truncation).
        finished: Always True: pooling finishes in one pass.
        error: ``None``, or why this item has no usable result (e.g. the model produced NaN/inf). Consumers
            (reward functions, the server) must not use ``outputs.data`` as a score when it is set.
    """

    request_id: str
    outputs: PoolingOutput
    prompt_token_ids: list[int]
    finished: bool = True
    error: str | None = None


@dataclass
class ClassificationOutput:
    """vLLM's ``ClassificationOutput``: class probabilities (or raw logits with ``use_activation=False``)."""

    probs: list[float]

    @property
    def num_classes(self) -> int:
        """Number of classes."""
        return len(self.probs)


@dataclass
class ClassificationRequestOutput:
    """vLLM's ``ClassificationRequestOutput``, returned by :meth:`rlhf_rewards.LLM.classify`."""

    request_id: str
    outputs: ClassificationOutput
    prompt_token_ids: list[int]
    finished: bool = True


@dataclass
class EmbeddingOutput:
    """vLLM's ``EmbeddingOutput``: one embedding vector."""

    embedding: list[float]

    @property
    def hidden_size(self) -> int:
        """Length of the vector."""
        return len(self.embedding)


@dataclass
class EmbeddingRequestOutput:
    """vLLM's ``EmbeddingRequestOutput``, returned by :meth:`rlhf_rewards.LLM.embed`."""

    request_id: str
    outputs: EmbeddingOutput
    prompt_token_ids: list[int]
    finished: bool = True


@dataclass
class ScoringOutput:
    """vLLM's ``ScoringOutput``: the similarity / relevance score of one pair."""

    score: float


@dataclass
class ScoringRequestOutput:
    """vLLM's ``ScoringRequestOutput``, returned by :meth:`rlhf_rewards.LLM.score`.

    Args:
        request_id: Unique id of the pair's request.
        outputs: The score.
        prompt_token_ids: The token ids scored (cross-encoder: the pair's prompt; bi-encoder and late
            interaction: the query's, a pad token if the tokenizer has one, then the document's, as vLLM).
        finished: Always True.
    """

    request_id: str
    outputs: ScoringOutput
    prompt_token_ids: list[int]
    finished: bool = True
