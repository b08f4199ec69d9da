"""One value for every prompt, or one per prompt: the rule ``encode`` applies to ``pooling_params`` and
``lora_request``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, TypeVar

from rlhf_rewards.errors import RequestError

T = TypeVar("T")


def per_prompt(name: str, value: T | Sequence[T | None] | None, n: int, kind: type[T]) -> list[T | None]:
    """``value`` as a list of ``n`` entries: ``None`` or one ``kind`` repeated, or a list of ``n``
    (``None`` entries allowed). Errors name ``name`` and the entry at fault."""
    if value is None or isinstance(value, kind):
        return [value] * n  # type: ignore[list-item]
    if isinstance(value, Sequence) and not isinstance(value, (str, bytes)):
        values = list(value)
        if len(values) != n:
            raise RequestError(
                f"has {len(values)} entries but there are {n} prompts; pass one or one per prompt.",
                field=name,
            )
        for j, v in enumerate(values):
            if v is not None and not isinstance(v, kind):
                raise RequestError(
                    f"must be a {kind.__name__} or None, got {type(v).__name__}.", field=name, index=j
                )
        return values
    raise RequestError(
        f"must be a {kind.__name__}, a list of them, or None; got {type(value).__name__}.", field=name
    )


def slice_per_prompt(value: Any, lo: int, size: int) -> Any:
    """The part of a per-prompt value (a list from :func:`per_prompt`, or one shared value) for prompts
    ``lo .. lo + size - 1``."""
    return value[lo : lo + size] if isinstance(value, list) else value


__all__ = ["per_prompt", "slice_per_prompt"]
