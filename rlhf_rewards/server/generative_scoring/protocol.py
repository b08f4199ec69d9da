"""Schemas of ``POST /generative_scoring``: vLLM 0.32's ``GenerativeScoringRequest`` and its response.

Field for field vLLM's (``vllm/entrypoints/generate/generative_scoring/serving.py``), strictly typed as this
server's other requests are: ``query`` is text or token ids, ``items`` all texts or all token-id lists
(mixing them is a 400), ``priority`` is accepted in vLLM's range and, as in vLLM's first-come-first-served
scheduler, changes nothing; ``cache_salt`` is checked as vLLM checks it and
names the prefix-cache namespace the request's prompts share. The response's ``usage`` carries vLLM's two ``*_details`` fields (always ``null``).
"""

from __future__ import annotations

import uuid
from typing import Any

from pydantic import Field

from rlhf_rewards.server.base.protocol import (
    ResponseModel,
    ScoredList,
    StrictModel,
    absent_if_none,
    priority_field,
)


class GenerativeScoringRequest(StrictModel):
    """``POST /generative_scoring``: for each item, the probability that the next token after
    ``query + item`` (``item + query`` with ``item_first``) is ``label_token_ids[0]``."""

    model: str | None = Field(
        default=None, description="Served model name or LoRA module name; default the base model."
    )
    query: str | list[int] = Field(description="The query text or pre-tokenized query token IDs.")
    items: list[str] | list[list[int]] = Field(
        description="List of item texts or pre-tokenized item token IDs."
    )
    label_token_ids: list[int] = Field(description="List of token IDs to compute probabilities for.")
    apply_softmax: bool = Field(
        default=True,
        description="True: softmax over the label tokens' logits only. False: the true model "
        "probabilities over the full vocabulary for those ids.",
    )
    item_first: bool = Field(
        default=False, description="If True, prepend items to query. Otherwise append items to query."
    )
    add_special_tokens: bool = Field(
        default=True, description="Add special tokens when tokenizing the query (never items)."
    )
    cache_salt: str | None = Field(
        default=None,
        description="Checked as vLLM does: cached prefixes are shared only between requests of the same salt.",
    )
    priority: int = priority_field()
    request_id: str = Field(
        default_factory=lambda: uuid.uuid4().hex,
        max_length=256,
        description="Response id suffix (the X-Request-Id header wins, as in vLLM).",
    )


class GenerativeScoringItemResult(ResponseModel):
    """One item: ``score`` is the probability of ``label_token_ids[0]`` (``null`` with ``error`` set when the
    model produced NaN/inf)."""

    index: int
    object: str = "score"
    score: float | None
    error: str | None = absent_if_none("Extension: why this item has no score.")


class GenerativeScoringUsage(ResponseModel):
    """vLLM's ``UsageInfo``: one completion token per item (the token vLLM generates to read the labels)."""

    prompt_tokens: int
    total_tokens: int
    completion_tokens: int
    prompt_tokens_details: Any = None
    completion_tokens_details: Any = None


class GenerativeScoringResponse(ScoredList[GenerativeScoringItemResult]):
    """``/generative_scoring`` response: ``id`` is ``generative-scoring-<request_id>``."""

    usage: GenerativeScoringUsage  # type: ignore[assignment]


__all__ = [
    "GenerativeScoringItemResult",
    "GenerativeScoringRequest",
    "GenerativeScoringResponse",
    "GenerativeScoringUsage",
]
