"""Turning user prompts into validated token ids.

Accepted prompt forms follow vLLM: a string, ``{"prompt": str}``, ``{"prompt_token_ids": [int, ...]}``,
or a list of those. Every problem is reported as a ``ValueError`` naming the prompt's index.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from transformers import PreTrainedTokenizerBase

PromptInput = str | dict[str, Any]


def normalize_prompts(prompts: Any) -> list[PromptInput]:
    """A flat list of prompts from any accepted form."""
    if isinstance(prompts, (str, dict)):
        return [prompts]
    if isinstance(prompts, Sequence) and not isinstance(prompts, (bytes, bytearray)):
        items = list(prompts)
        if items and all(isinstance(x, int) and not isinstance(x, bool) for x in items):
            raise ValueError(
                "prompts: a bare list of ints is ambiguous; pass {'prompt_token_ids': [...]} for token ids."
            )
        return items
    raise ValueError(
        f"prompts must be a str, a dict with 'prompt' or 'prompt_token_ids', or a list of those; got {type(prompts).__name__}."
    )


def tokenize_prompts(
    prompts: list[PromptInput],
    tokenizer: PreTrainedTokenizerBase | None,
    *,
    vocab_size: int,
    add_special_tokens: bool = True,
) -> list[list[int]]:
    """Token ids for every prompt; strings are tokenized in one batched call."""
    if not prompts:
        raise ValueError("prompts is empty: pass at least one prompt.")
    ids: list[list[int] | None] = [None] * len(prompts)
    texts: list[tuple[int, str]] = []
    for i, p in enumerate(prompts):
        if isinstance(p, dict):
            if "prompt_token_ids" in p:
                ids[i] = _check_token_ids(i, p["prompt_token_ids"], vocab_size)
                continue
            if "prompt" in p:
                p = p["prompt"]
            else:
                raise ValueError(f"prompts[{i}] is a dict without 'prompt' or 'prompt_token_ids' (keys: {sorted(p)}).")
        if not isinstance(p, str):
            raise ValueError(f"prompts[{i}] must be a string or a dict, got {type(p).__name__}.")
        if not p:
            raise ValueError(f"prompts[{i}] is an empty string; every prompt needs at least one token.")
        texts.append((i, p))
    if texts:
        if tokenizer is None:
            raise ValueError("This LLM has no tokenizer: pass prompts as {'prompt_token_ids': [...]}.")
        encoded = tokenizer([t for _, t in texts], add_special_tokens=add_special_tokens)["input_ids"]
        for (i, _), token_ids in zip(texts, encoded, strict=True):
            if not token_ids:
                raise ValueError(f"prompts[{i}] tokenizes to no tokens.")
            ids[i] = list(token_ids)
    return [x for x in ids if x is not None]


def _check_token_ids(i: int, token_ids: Any, vocab_size: int) -> list[int]:
    if not isinstance(token_ids, (list, tuple)):
        raise ValueError(f"prompts[{i}].prompt_token_ids must be a list of ints, got {type(token_ids).__name__}.")
    if not token_ids:
        raise ValueError(f"prompts[{i}].prompt_token_ids is empty; every prompt needs at least one token.")
    for t in token_ids:
        if isinstance(t, bool) or not isinstance(t, int):
            raise ValueError(f"prompts[{i}].prompt_token_ids must hold ints, found {t!r}.")
        if t < 0 or t >= vocab_size:
            raise ValueError(
                f"prompts[{i}].prompt_token_ids has token id {t}, outside the vocabulary range [0, {vocab_size})."
            )
    return list(token_ids)


def apply_length_limit(i: int, token_ids: list[int], max_model_len: int, truncate: int | None) -> list[int]:
    """Keep the last ``truncate`` tokens (``-1``: ``max_model_len``); error if still over ``max_model_len``."""
    if truncate is not None:
        keep = max_model_len if truncate == -1 else truncate
        if keep > max_model_len:
            raise ValueError(
                f"truncate_prompt_tokens={truncate} is over max_model_len={max_model_len}; use at most {max_model_len} or -1."
            )
        token_ids = token_ids[-keep:]
    if len(token_ids) > max_model_len:
        raise ValueError(
            f"prompts[{i}] has {len(token_ids)} tokens, over max_model_len={max_model_len}; "
            "shorten it or pass truncate_prompt_tokens (keeps the last k tokens)."
        )
    return token_ids
