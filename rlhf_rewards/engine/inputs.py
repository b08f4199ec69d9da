"""Turning user prompts into validated token ids.

The prompt forms and their checks are :mod:`rlhf_rewards.contract.prompts` (shared with the workers and
the server); this module adds what needs the model: tokenization, the vocabulary range and the length limit.
Every problem is a :class:`~rlhf_rewards.errors.RequestError` naming the prompt's index.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

from transformers import PreTrainedTokenizerBase

from rlhf_rewards.contract.prompts import PromptType, check_prompt, normalize_prompts, require_prompts
from rlhf_rewards.errors import RequestError


def tokenize_prompts(
    prompts: list[PromptType],
    tokenizer: PreTrainedTokenizerBase | None,
    *,
    vocab_size: int,
    add_special_tokens: bool = True,
    max_lengths: Sequence[int | None] | None = None,
) -> list[list[int]]:
    """Token ids for every prompt; strings are tokenized in one batched call (one per ``max_lengths`` value).

    ``max_lengths``: per prompt, a truncation the tokenizer itself applies to a text prompt
    (``truncation=True, max_length=k``, on the tokenizer's side; its special tokens are kept, as vLLM's
    ``TokenizeParams.get_encode_kwargs`` asks when no ``truncation_side`` is given); ``None``: no cut here.
    """
    require_prompts(prompts)
    ids: list[list[int] | None] = [None] * len(prompts)
    texts: list[tuple[int, str]] = []
    for i, p in enumerate(prompts):
        kind, value = check_prompt(i, p, vocab_size)
        if kind == "ids":
            ids[i] = value
        else:
            texts.append((i, value))
    if texts:
        if tokenizer is None:
            raise RequestError("This LLM has no tokenizer: pass prompts as {'prompt_token_ids': [...]}.")
        groups: dict[int | None, list[tuple[int, str]]] = {}
        for i, t in texts:
            groups.setdefault(max_lengths[i] if max_lengths is not None else None, []).append((i, t))
        for max_length, group in groups.items():
            cut = {} if max_length is None else {"truncation": True, "max_length": max_length}
            tok = tokenizer if max_length is None else right_truncating(tokenizer)
            encoded = tok([t for _, t in group], add_special_tokens=add_special_tokens, **cut)["input_ids"]
            for (i, _), token_ids in zip(group, encoded, strict=True):
                if not token_ids:
                    raise RequestError("tokenizes to no tokens.", field="prompts", index=i)
                ids[i] = list(token_ids)
    return [x for x in ids if x is not None]


def right_truncating(tokenizer: PreTrainedTokenizerBase) -> PreTrainedTokenizerBase:
    """``tokenizer``, or a shallow copy of it with ``truncation_side="right"``: vLLM's pooling runner loads every
    tokenizer so (``vllm/tokenizers/registry.py``), whatever its ``tokenizer_config.json`` says, so a cut made
    by the tokenizer keeps the first tokens. The model's own tokenizer is left as loaded."""
    if getattr(tokenizer, "truncation_side", "right") == "right":
        return tokenizer
    view = copy.copy(tokenizer)
    view.truncation_side = "right"
    return view


def apply_length_limit(
    i: int, token_ids: list[int], max_model_len: int, truncate: int | None, *, side: str = "left"
) -> list[int]:
    """Keep ``truncate`` tokens (``-1``: ``max_model_len``) from ``side``'s end: ``"left"`` keeps the last ones
    (this function's default, what reward reading needs), ``"right"`` the first ones (vLLM's default for
    pooling requests); then an error if still over ``max_model_len``."""
    if truncate is not None:
        keep = max_model_len if truncate == -1 else truncate
        if keep > max_model_len:
            raise RequestError(
                f"{truncate} is over max_model_len={max_model_len}; use at most {max_model_len} or -1.",
                field="truncate_prompt_tokens",
                sep="=",
            )
        token_ids = token_ids[:keep] if side == "right" else token_ids[-keep:]
    if len(token_ids) > max_model_len:
        raise RequestError(
            f"has {len(token_ids)} tokens, over max_model_len={max_model_len}; "
            "shorten it or pass truncate_prompt_tokens (with truncation_side 'left' to keep the last k tokens).",
            field="prompts",
            index=i,
        )
    return token_ids


__all__ = ["apply_length_limit", "normalize_prompts", "right_truncating", "tokenize_prompts"]
