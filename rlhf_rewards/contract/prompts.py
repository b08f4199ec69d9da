"""Prompt forms and their validation, shared by the engine, the workers and the server.

Accepted prompt forms follow vLLM: a string, ``{"prompt": str}``, ``{"prompt_token_ids": [int, ...]}``,
or a list of those. Every problem is a :class:`~rlhf_rewards.errors.RequestError` on the field
``prompts`` with the prompt's index, so a layer that renames the field or shifts the index never parses
the message.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal, TypedDict

from rlhf_rewards.checks import is_int
from rlhf_rewards.errors import RequestError


class TextPrompt(TypedDict):
    """A text prompt, tokenized by the model's tokenizer."""

    prompt: str


class TokensPrompt(TypedDict):
    """A prompt given as token ids (scored exactly as given)."""

    prompt_token_ids: list[int]


#: One prompt.
PromptType = str | TextPrompt | TokensPrompt
#: What ``encode`` takes: one prompt or a sequence of them.
Prompts = PromptType | Sequence[PromptType]


def normalize_prompts(prompts: Any) -> list[PromptType]:
    """A flat list of prompts from any accepted form (entries are checked by :func:`check_prompt`)."""
    if isinstance(prompts, (str, dict)):
        return [prompts]  # type: ignore[list-item]
    if isinstance(prompts, Sequence) and not isinstance(prompts, (bytes, bytearray)):
        items = list(prompts)
        if items and all(is_int(x) for x in items):
            raise RequestError(
                "a bare list of ints is ambiguous; pass {'prompt_token_ids': [...]} for token ids.",
                field="prompts",
                sep=": ",
            )
        # vLLM's batch form: an entry that is itself a list of token ids is a token prompt.
        return [{"prompt_token_ids": list(x)} if isinstance(x, (list, tuple)) else x for x in items]
    raise RequestError(
        "must be a str, a dict with 'prompt' or 'prompt_token_ids', or a list of those; "
        f"got {type(prompts).__name__}.",
        field="prompts",
    )


def require_prompts(items: Sequence[Any]) -> None:
    """Raise if there is no prompt at all."""
    if not items:
        raise RequestError("is empty: pass at least one prompt.", field="prompts")


def check_prompt(i: int, prompt: Any, vocab_size: int | None = None) -> tuple[Literal["text", "ids"], Any]:
    """``("text", str)`` or ``("ids", [int, ...])`` for prompt ``i``; token ids are range-checked when
    ``vocab_size`` is known."""
    if isinstance(prompt, dict):
        if "prompt_token_ids" in prompt:
            return "ids", check_token_ids(i, prompt["prompt_token_ids"], vocab_size)
        if "prompt" not in prompt:
            raise RequestError(
                f"is a dict without 'prompt' or 'prompt_token_ids' (keys: {sorted(prompt)}).",
                field="prompts",
                index=i,
            )
        prompt = prompt["prompt"]
    if not isinstance(prompt, str):
        raise RequestError(
            f"must be a string or a dict, got {type(prompt).__name__}.", field="prompts", index=i
        )
    if not prompt:
        raise RequestError(
            "is an empty string; every prompt needs at least one token.", field="prompts", index=i
        )
    return "text", prompt


def check_token_ids(i: int, token_ids: Any, vocab_size: int | None = None) -> list[int]:
    """Prompt ``i``'s token ids as a list, checked to be non-empty ints (in ``[0, vocab_size)`` if given)."""

    def error(reason: str) -> RequestError:
        return RequestError(reason, field="prompts", index=i, subfield="prompt_token_ids")

    if not isinstance(token_ids, (list, tuple)):
        raise error(f"must be a list of ints, got {type(token_ids).__name__}.")
    if not token_ids:
        raise error("is empty; every prompt needs at least one token.")
    # Fast path (C loops): plain ints within range. Otherwise the slow loop names the first offender.
    if all(type(t) is int for t in token_ids) and (
        vocab_size is None or (min(token_ids) >= 0 and max(token_ids) < vocab_size)
    ):
        return list(token_ids)
    for t in token_ids:
        if not is_int(t):
            raise error(f"must hold ints, found {t!r}.")
        if vocab_size is not None and (t < 0 or t >= vocab_size):
            raise error(f"has token id {t}, outside the vocabulary range [0, {vocab_size}).")
    return list(token_ids)


def prompts_from_input(value: str | list[str] | list[int] | list[list[int]]) -> list[PromptType]:
    """The prompts of an HTTP ``input`` field (vLLM's completion form): a string, strings, one list of
    token ids, or lists of token ids. The shape itself is checked by the request schema."""
    if isinstance(value, str):
        return [value]
    if value and all(isinstance(v, int) for v in value):
        return [{"prompt_token_ids": list(value)}]  # type: ignore[arg-type]
    return [{"prompt_token_ids": v} if isinstance(v, list) else v for v in value]  # type: ignore[misc]


__all__ = [
    "PromptType",
    "Prompts",
    "TextPrompt",
    "TokensPrompt",
    "check_prompt",
    "check_token_ids",
    "normalize_prompts",
    "prompts_from_input",
    "require_prompts",
]
