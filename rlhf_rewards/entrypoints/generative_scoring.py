"""``LLM.generative_score``: vLLM 0.32's Generative Scoring (``POST /generative_scoring``) offline.

The probability that a causal LM's next token after ``query + item`` (or ``item + query``) is
``label_token_ids[0]``, for each item, in one forward pass with no decoding: a judge read through its answer
token. vLLM has only the HTTP route; this is the same computation, with the same inputs and rules:

- ``query`` is text (tokenized with ``add_special_tokens``) or token ids; ``items`` are all text (tokenized
  *without* special tokens, so no second BOS lands mid-prompt) or all token-id lists;
- each prompt is the concatenation of the token ids, cut to its first ``max_model_len - 1`` tokens (vLLM
  leaves room for the one token it would generate);
- ``apply_softmax=True``: softmax over the label tokens' logits only; ``False``: the label's probability
  over the whole vocabulary;
- the same errors for an empty ``items`` and empty or out-of-vocabulary ``label_token_ids``.

The engine runs every prompt of a call in its packed forward with prefix sharing, so the query (a long
rubric, say) is computed once for all items, and reads only the label rows of the LM head at each sequence's
last position (:mod:`rlhf_rewards.engine.label_logits`).
"""

from __future__ import annotations

import itertools
import math
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from rlhf_rewards.checks import is_int
from rlhf_rewards.engine.label_logits import label_pooling, label_probabilities
from rlhf_rewards.engine.request import EngineRequest
from rlhf_rewards.errors import RequestError
from rlhf_rewards.lora.request import LoRARequest

#: ``rlhf_rewards.LLM`` (not imported: ``llm.py`` imports this module).
LLM = Any

_counter = itertools.count()


@dataclass
class GenerativeScoringOutput:
    """One item's result of :meth:`rlhf_rewards.LLM.generative_score`.

    Args:
        index: The item's position in ``items``.
        score: The probability of ``label_token_ids[0]`` (vLLM's ``score``); NaN when ``error`` is set.
        label_probs: The probability of every label, in ``label_token_ids`` order (``None`` when unknown: a
            remote worker asked without ``all_labels``).
        prompt_token_ids: The ids that were scored (after concatenation and truncation); ``None`` when a
            remote server did not say.
        request_id: Unique id of the item's read.
        error: ``None``, or why the item has no score (the model produced NaN/inf).
    """

    index: int
    score: float
    label_probs: list[float] | None = None
    prompt_token_ids: list[int] | None = None
    request_id: str = ""
    error: str | None = field(default=None)


def check_labels(label_token_ids: Sequence[int], vocab_size: int) -> list[int]:
    """vLLM's checks of ``label_token_ids``, in its order and with its messages (``RequestError`` without a
    field, so the server answers exactly vLLM's text)."""
    if isinstance(label_token_ids, (str, bytes)) or not isinstance(label_token_ids, Sequence):
        raise RequestError(
            f"must be a list of token ids, got {type(label_token_ids).__name__}.", field="label_token_ids"
        )
    labels = []
    for token_id in label_token_ids:
        if not is_int(token_id):
            raise RequestError(f"must hold integer token ids, got {token_id!r}.", field="label_token_ids")
        if token_id < 0 or token_id >= vocab_size:
            raise RequestError(
                f"label_token_id {token_id} is out of vocabulary range [0, {vocab_size}). "
                "Please provide valid token IDs."
            )
        labels.append(int(token_id))
    if not labels:
        raise RequestError("label_token_ids must contain at least one token ID.")
    return labels


def check_items(items: Sequence[Any]) -> None:
    """vLLM's check of an empty ``items``; mixed text and token ids are refused too (vLLM's schema does)."""
    if isinstance(items, (str, bytes)) or not isinstance(items, Sequence):
        raise RequestError(
            f"must be a list of texts or of token-id lists, got {type(items).__name__}.", field="items"
        )
    if len(items) == 0:
        raise RequestError("items must contain at least one item.")
    kinds = {"text" if isinstance(x, str) else "ids" for x in items}
    if len(kinds) > 1:
        raise RequestError("must be all texts or all token-id lists, not a mix.", field="items")


def build_prompts(
    query: str | Sequence[int],
    items: Sequence[str | Sequence[int]],
    tokenizer: Any,
    *,
    vocab_size: int,
    max_model_len: int,
    item_first: bool = False,
    add_special_tokens: bool = True,
) -> list[list[int]]:
    """The token ids of every ``query + item`` (``item + query`` with ``item_first``), vLLM's way: the query
    tokenized with ``add_special_tokens``, items without special tokens, each prompt cut to its first
    ``max_model_len - 1`` tokens."""
    check_items(items)
    if isinstance(query, str):
        if tokenizer is None:
            raise RequestError("This model has no tokenizer: send the query as token ids.", field="query")
        query_ids = list(tokenizer.encode(query, add_special_tokens=add_special_tokens))
    else:
        query_ids = _ids(query, vocab_size, "query", None)
    texts = [(i, x) for i, x in enumerate(items) if isinstance(x, str)]
    item_ids: list[list[int] | None] = [None] * len(items)
    if texts:
        if tokenizer is None:
            raise RequestError("This model has no tokenizer: send items as token ids.", field="items")
        encoded = tokenizer([t for _, t in texts], add_special_tokens=False)["input_ids"]
        for (i, _), ids in zip(texts, encoded, strict=True):
            item_ids[i] = list(ids)
    for i, x in enumerate(items):
        if item_ids[i] is None:
            item_ids[i] = _ids(x, vocab_size, "items", i)
    limit = max_model_len - 1
    prompts = []
    for i, ids in enumerate(item_ids):
        assert ids is not None
        prompt = ids + query_ids if item_first else query_ids + ids
        prompt = prompt[:limit]
        if not prompt:
            raise RequestError("query + item has no tokens.", field="items", index=i)
        prompts.append(prompt)
    return prompts


def run_label_reads(
    llm: LLM,
    token_ids: Sequence[Sequence[int]],
    label_token_ids: Sequence[Sequence[int]],
    apply_softmax: Sequence[bool],
    lora_request: Sequence[LoRARequest | None],
    use_tqdm: bool | Callable[..., Any] = False,
    cache_salt: Sequence[str | None] | None = None,
) -> list[tuple[torch.Tensor, str | None]]:
    """One engine call over prompts that may each have their own labels, softmax mode, adapter and salt.

    ``cache_salt``: vLLM's ``cache_salt`` per prompt (cross-call cached prefixes are shared only within one
    salt); ``None``: every prompt unsalted.

    Returns ``(label probabilities [k] float64, error)`` per prompt. Prompts sharing a prefix share its
    forward; the head multiplies, per group of equal label sets, only those rows of the LM head.
    """
    head = _lm_head_rows(llm)
    loras = list(lora_request)
    if any(lo is not None for lo in loras):
        if llm.lora_manager is None:
            raise ValueError("lora_request was given but this LLM was built with enable_lora=False.")
        llm.lora_manager.check(loras)
    salts = list(cache_salt) if cache_salt is not None else [None] * len(loras)
    requests = []
    for i, (ids, labels, soft, lora, salt) in enumerate(
        zip(token_ids, label_token_ids, apply_softmax, loras, salts, strict=True)
    ):
        check_labels(labels, head)
        requests.append(
            EngineRequest(
                index=i,
                request_id=f"gs-{next(_counter)}-{uuid.uuid4().hex[:8]}",
                token_ids=list(ids),
                pooling=label_pooling(labels, soft),
                lora=lora,
                cache_salt=salt,
            )
        )
    tensors = llm._run(requests, use_tqdm)
    results = []
    for t, labels, soft in zip(tensors, label_token_ids, apply_softmax, strict=True):
        probs = label_probabilities(t, labels, soft)
        error = None
        if not bool(torch.isfinite(probs).all()):
            error = "the model produced non-finite output at the last position; this item has no score"
        results.append((probs, error))
    return results


def generative_score(
    llm: LLM,
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
    """See :meth:`rlhf_rewards.LLM.generative_score`."""
    if isinstance(items, str):
        items = [items]
    for name, flag in (
        ("apply_softmax", apply_softmax),
        ("item_first", item_first),
        ("add_special_tokens", add_special_tokens),
    ):
        if not isinstance(flag, bool):
            raise ValueError(f"{name} must be True or False, got {flag!r}.")
    if lora_request is not None and not isinstance(lora_request, LoRARequest):
        raise ValueError(f"lora_request must be one LoRARequest or None, got {type(lora_request).__name__}.")
    labels = check_labels(label_token_ids, _lm_head_rows(llm))
    check_items(items)
    prompts = build_prompts(
        query,
        items,
        llm.tokenizer,
        vocab_size=llm.model.vocab_size,
        max_model_len=llm.max_model_len,
        item_first=item_first,
        add_special_tokens=add_special_tokens,
    )
    n = len(prompts)
    reads = run_label_reads(llm, prompts, [labels] * n, [apply_softmax] * n, [lora_request] * n, use_tqdm)
    outputs = []
    for i, (prompt, (probs, error)) in enumerate(zip(prompts, reads, strict=True)):
        values = [float(p) for p in probs]
        outputs.append(
            GenerativeScoringOutput(
                index=i,
                score=values[0] if error is None else math.nan,
                label_probs=values,
                prompt_token_ids=prompt,
                request_id=f"generative-scoring-{uuid.uuid4().hex}-{i}",
                error=error,
            )
        )
    return outputs


def _ids(value: Any, vocab_size: int, field_name: str, index: int | None) -> list[int]:
    """Token ids checked to be ints in ``[0, vocab_size)`` (an empty list is allowed, as in vLLM)."""
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise RequestError(
            f"must be a list of token ids, got {type(value).__name__}.", field=field_name, index=index
        )
    for t in value:
        if not is_int(t):
            raise RequestError(f"must hold integer token ids, found {t!r}.", field=field_name, index=index)
        if t < 0 or t >= vocab_size:
            raise RequestError(
                f"has token id {t}, outside the vocabulary range [0, {vocab_size}).",
                field=field_name,
                index=index,
            )
    return [int(t) for t in value]


def _lm_head_rows(llm: LLM) -> int:
    """The vocabulary the labels index: the rows of the model's LM head (an error for a model without one)."""
    model = llm.model
    if getattr(model, "lm_head_name", None) is None:
        raise RequestError(
            f"{llm.spec.architecture} has no LM head: generative scoring needs a causal LM "
            "(a *ForCausalLM checkpoint loaded with convert='auto').",
            field="model",
            sep=": ",
        )
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    vocab = getattr(config, "vocab_size", None)
    return int(vocab) if vocab else int(model.num_labels)


__all__ = [
    "GenerativeScoringOutput",
    "build_prompts",
    "check_items",
    "check_labels",
    "generative_score",
    "run_label_reads",
]
