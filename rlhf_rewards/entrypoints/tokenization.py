"""``tokenization_kwargs`` of ``LLM.encode``/``classify``/``embed``/``score``, read as vLLM 0.33 reads them.

vLLM's ``TokenizeParams.with_kwargs`` pops ``max_length``, ``truncate_prompt_tokens``, ``truncation_side``,
``add_special_tokens`` and ``truncation`` (``True``/``"longest_first"``: cut to ``max_length``, which defaults
to the model's length; ``False``/``"do_not_truncate"``: no cut) and logs the other keys as ignored. The
same happens here, and so does the side: ``truncation_side="left"`` keeps the LAST k tokens, ``"right"`` the
first k, and without one the tokenizer's side applies, which vLLM's pooling runner always loads as ``"right"``
(``vllm/tokenizers/registry.py``): vLLM keeps the FIRST k tokens by default, and so does this library.
Reward code that reads a score at the last token asks for ``truncation_side="left"`` itself (the reward
workers do).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from rlhf_rewards.checks import is_int
from rlhf_rewards.engine.inputs import apply_length_limit
from rlhf_rewards.errors import RequestError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TokenizationOptions:
    """The effective tokenization settings of one call.

    Args:
        truncate_prompt_tokens: Keep k tokens (``-1``: ``max_model_len``); ``None``: no truncation.
        truncation_side: ``"left"`` keeps the last k tokens, ``"right"`` the first k; ``None`` (default): vLLM's
            default for pooling models, ``"right"``.
        add_special_tokens: Add the tokenizer's special tokens to text prompts.
    """

    truncate_prompt_tokens: int | None = None
    truncation_side: str | None = None
    add_special_tokens: bool = True

    def tokenizer_max_length(self, truncate: int | None, max_model_len: int) -> int | None:
        """The ``max_length`` the tokenizer itself cuts a text prompt to, as vLLM's
        ``TokenizeParams.get_encode_kwargs``: a truncation with no side given is the tokenizer's own
        (``truncation=True, max_length=k``: special tokens such as an appended EOS are kept); with a side,
        or a k over ``max_model_len`` (refused by :meth:`cut`), ``None``: the ids are sliced afterwards."""
        if truncate is None or self.truncation_side is not None:
            return None
        keep = max_model_len if truncate == -1 else truncate
        return keep if 0 < keep <= max_model_len else None

    def cut(self, index: int, token_ids: list[int], truncate: int | None, max_model_len: int) -> list[int]:
        """Apply ``truncate`` on this call's side, then the ``max_model_len`` check (a ``RequestError``)."""
        return apply_length_limit(
            index, token_ids, max_model_len, truncate, side=self.truncation_side or "right"
        )


def tokenization_options(
    kwargs: Mapping[str, Any] | None,
    *,
    truncate_prompt_tokens: int | None = None,
    add_special_tokens: bool = True,
    max_model_len: int,
) -> TokenizationOptions:
    """Merge ``tokenization_kwargs`` over the call's keywords (vLLM's rules; unknown keys warn and are ignored)."""
    if kwargs is None:
        return TokenizationOptions(truncate_prompt_tokens, None, add_special_tokens)
    if not isinstance(kwargs, Mapping):
        raise RequestError(f"must be a dict, got {type(kwargs).__name__}.", field="tokenization_kwargs")
    rest = dict(kwargs)
    max_length = rest.pop("max_length", max_model_len)
    truncate = rest.pop("truncate_prompt_tokens", truncate_prompt_tokens)
    side = rest.pop("truncation_side", None)
    add_special = rest.pop("add_special_tokens", add_special_tokens)
    truncation = rest.pop("truncation", None)
    if truncation in (True, "longest_first"):
        truncate = max_length
    elif truncation in (False, "do_not_truncate"):
        truncate = None
    elif truncation is not None:
        rest["truncation"] = truncation  # e.g. "only_second": reported below, as vLLM does
    if side not in (None, "left", "right"):
        raise RequestError("must be either 'left' or 'right'.", field="truncation_side", sep=" ")
    if not isinstance(add_special, bool):
        raise RequestError(f"must be true or false, got {add_special!r}.", field="add_special_tokens")
    if max_length is not None and not is_int(max_length, minimum=1):
        raise RequestError(f"must be a positive integer, got {max_length!r}.", field="max_length")
    if rest:
        logger.warning("The following tokenization arguments are not supported and will be ignored: %s", rest)
    return TokenizationOptions(truncate, side, add_special)


__all__ = ["TokenizationOptions", "tokenization_options"]
