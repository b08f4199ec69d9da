"""The Scoring API, written once: ``LLM.score`` (offline) and the server's ``/score`` and ``/rerank`` both use it.

As vLLM's ``score/utils.py`` does for its offline and online paths, this module holds the rules both share:
the kind of score a model gives (:func:`score_type`), the pair validation (:func:`valid_inputs`), the token
limits of queries and documents (:func:`check_token_limits`, :func:`truncate_pairs`), the cross-encoder
prompt of a pair (:func:`pair_token_ids`) and the similarity of two embeddings (:func:`pair_similarity`).
:func:`score_pairs` is the offline call built on them. The kind of score follows the model's pooling task, as
vLLM's ``SCORE_TYPE_MAP``:

- ``classify`` -> **cross-encoder**: each ``(query, document)`` pair is one prompt, built as vLLM's
  ``CrossEncoderIOProcessor.get_score_prompt`` builds it: with a ``chat_template`` (given to ``score`` or
  to ``LLM``; the server's ``--chat-template``), the template rendered over ``[{"role": "query", ...},
  {"role": "document", ...}]``; else the tokenizer's pair encoding (``tokenizer(text=query,
  text_pair=document)``) when ``config.use_sep_token`` is true (the default), or ``query + document`` when
  it is false (vLLM's "LLM as reranker" form). Only one-label classifiers score (``num_labels == 1``); the
  score is the activated logit (sigmoid) unless ``use_activation=False``.
- ``embed`` -> **bi-encoder**: the cosine similarity of the two embeddings.
- ``token_embed`` -> **late interaction**: ColBERT MaxSim over the L2-normalized token embeddings.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F

from rlhf_rewards.engine.inputs import right_truncating
from rlhf_rewards.entrypoints.tokenization import tokenization_options
from rlhf_rewards.lora.request import LoRARequest
from rlhf_rewards.outputs import ScoringOutput, ScoringRequestOutput
from rlhf_rewards.pooling import PoolingParams

logger = logging.getLogger(__name__)

CROSS_ENCODER, BI_ENCODER, LATE_INTERACTION = "cross-encoder", "bi-encoder", "late-interaction"
#: vLLM's ``SCORE_TYPE_MAP``: the kind of score of a model serving each pooling task.
SCORE_TYPES: dict[str, str] = {
    "classify": CROSS_ENCODER,
    "embed": BI_ENCODER,
    "token_embed": LATE_INTERACTION,
}


def score_type(task: str, num_labels: int) -> str | None:
    """The kind of score of a model serving ``task`` (:data:`SCORE_TYPES`), or ``None`` when it has no
    Scoring API (vLLM's ``enable_scoring_api``: another task, or a classifier of more than one label)."""
    kind = SCORE_TYPES.get(task)
    return None if kind == CROSS_ENCODER and num_labels != 1 else kind


def valid_inputs(data_1: str | Sequence[str], data_2: str | Sequence[str]) -> tuple[list[str], list[str]]:
    """vLLM's ``validate_score_input`` for text: ``1 -> 1``, ``1 -> N`` or ``N -> N``; a ``ValueError``
    with vLLM's messages, in vLLM's order, otherwise."""
    q = [data_1] if isinstance(data_1, str) else list(data_1)
    d = [data_2] if isinstance(data_2, str) else list(data_2)
    for name, items in (("data_1", q), ("data_2", d)):
        for i, x in enumerate(items):
            if not isinstance(x, str):
                raise ValueError(
                    f"{name}[{i}] must be a string (multimodal score inputs are not supported), "
                    f"got {type(x).__name__}."
                )
    if len(q) > 1 and len(q) != len(d):
        raise ValueError("Input lengths must be either 1:1, 1:N or N:N")
    if not q:
        raise ValueError("At least one text element must be given")
    if not d:
        raise ValueError("At least one text_pair element must be given")
    return q, d


def check_token_limits(max_tokens_per_query: int, max_tokens_per_doc: int, max_model_len: int) -> None:
    """vLLM's ``_validate_token_limit`` of both limits (``0``: no cut, never checked): a ``ValueError`` for a
    negative limit or one of ``max_model_len`` or more."""
    for name, value in (
        ("max_tokens_per_query", max_tokens_per_query),
        ("max_tokens_per_doc", max_tokens_per_doc),
    ):
        if value == 0:
            continue
        if value < 0:
            raise ValueError(f"{name} must be a non-negative integer")
        if value >= max_model_len:
            raise ValueError(f"{name} ({value}) must be less than max_model_len ({max_model_len}).")


def truncate_text_to_tokens(text: str, tokenizer: Any, max_tokens: int) -> str:
    """The longest prefix of ``text`` that tokenizes to at most ``max_tokens`` content tokens (vLLM's rule,
    ``""`` for a limit ``<= 0``; :func:`truncate_pairs` calls it only with a positive limit, as vLLM's callers
    do, since ``0`` is the fields' "no cut")."""
    if max_tokens <= 0:
        return ""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if len(ids) <= max_tokens:
        return text
    return tokenizer.decode(ids[:max_tokens])


def truncate_pairs(
    queries: list[str], docs: list[str], tokenizer: Any, max_tokens_per_query: int, max_tokens_per_doc: int
) -> tuple[list[str], list[str]]:
    """Queries and documents cut to their token limits (vLLM's ``_truncate_scoring_data``; ``0``: no cut)."""
    if max_tokens_per_query > 0:
        queries = [truncate_text_to_tokens(q, tokenizer, max_tokens_per_query) for q in queries]
    if max_tokens_per_doc > 0:
        docs = [truncate_text_to_tokens(d, tokenizer, max_tokens_per_doc) for d in docs]
    return queries, docs


def pair_token_ids(
    tokenizer: Any,
    config: Any,
    query: str,
    doc: str,
    *,
    chat_template: str | None = None,
    template_kwargs: dict[str, Any] | None = None,
    add_special_tokens: bool = True,
    **truncation: Any,
) -> list[int]:
    """The cross-encoder prompt of one pair, as vLLM's ``get_score_prompt`` builds it (see the module
    docstring); ``truncation``: the tokenizer's own cut (``truncation=True, max_length=k``), if any."""
    if chat_template is not None:
        text = tokenizer.apply_chat_template(
            [{"role": "query", "content": query}, {"role": "document", "content": doc}],
            chat_template=chat_template,
            tokenize=False,
            **(template_kwargs or {}),
        )
        return list(tokenizer(text, add_special_tokens=add_special_tokens, **truncation)["input_ids"])
    if getattr(
        config, "use_sep_token", getattr(config, "use_pad_token", True)
    ):  # use_pad_token: vLLM's old name
        encoded = tokenizer(text=query, text_pair=doc, add_special_tokens=add_special_tokens, **truncation)
        return list(encoded["input_ids"])
    # An LLM as reranker: the two texts joined.
    return list(tokenizer(text=query + doc, add_special_tokens=add_special_tokens, **truncation)["input_ids"])


def pair_similarity(kind: str, a: torch.Tensor, b: torch.Tensor) -> float:
    """The score of two pooled inputs, in float32: cosine similarity of two embeddings (bi-encoder), or ColBERT
    MaxSim of two token-embedding matrices (late interaction: each query token's best document token, summed)."""
    a, b = a.float(), b.float()
    if kind == BI_ENCODER:
        return float(F.cosine_similarity(a, b, dim=0))
    return float(torch.matmul(a, b.T).amax(dim=-1).sum())


def score_pairs(
    llm: Any,
    data_1: str | Sequence[str],
    data_2: str | Sequence[str],
    *,
    use_tqdm: bool | Callable[..., Any] = True,
    pooling_params: PoolingParams | None = None,
    lora_request: LoRARequest | Sequence[LoRARequest | None] | None = None,
    tokenization_kwargs: dict[str, Any] | None = None,
    chat_template: str | None = None,
) -> list[ScoringRequestOutput]:
    """Score every pair with ``llm`` (an :class:`~rlhf_rewards.LLM`; see the module docstring); one output
    per pair, in order. ``pooling_params.extra_kwargs``' ``max_tokens_per_query`` and ``max_tokens_per_doc``
    cut queries and documents (vLLM's offline form of the routes' fields)."""
    task = llm.pooling_task
    kind = score_type(task, llm.model.num_labels)
    if kind is None:
        raise ValueError(
            "Scoring API is only enabled for num_labels == 1."
            if task in SCORE_TYPES
            else "This model does not support the Scoring API."
        )
    queries, docs = valid_inputs(data_1, data_2)
    params = (pooling_params or PoolingParams()).clone()
    if params.task is not None and params.task != task:
        raise ValueError(
            f"You cannot overwrite pooling_params.task={params.task!r} with pooling_task={task!r}!"
        )
    extra = params.extra_kwargs or {}
    max_query = int(extra.get("max_tokens_per_query", 0) or 0)
    max_doc = int(extra.get("max_tokens_per_doc", 0) or 0)
    check_token_limits(max_query, max_doc, llm.max_model_len)
    params = params.clone(task=None, extra_kwargs=None)
    tok = llm.get_tokenizer()
    queries, docs = truncate_pairs(queries, docs, tok, max_query, max_doc)
    if kind == CROSS_ENCODER:
        if getattr(llm.model.config, "is_original_qwen3_reranker", False) and chat_template is None:
            # vLLM warns the same way: the original Qwen3-Reranker was trained with one prompt template.
            logger.warning(
                "Scoring an original Qwen3 reranker without a chat_template: the model was trained with a "
                "specific prompt template; pass chat_template= (vLLM's "
                "examples/pooling/score/template/qwen3_reranker.jinja)."
            )
        if len(queries) == 1:
            queries = queries * len(docs)
        prompts = [
            {"prompt_token_ids": _offline_pair_ids(llm, tok, q, d, tokenization_kwargs, chat_template)}
            for q, d in zip(queries, docs, strict=True)
        ]
        outs = llm.encode(
            prompts,
            params,
            pooling_task="classify",
            lora_request=lora_request,
            use_tqdm=use_tqdm,
            tokenization_kwargs=_truncation_only(tokenization_kwargs),
        )
        return [
            ScoringRequestOutput(
                o.request_id, ScoringOutput(float(o.outputs.data.flatten()[0])), o.prompt_token_ids
            )
            for o in outs
        ]
    if kind == LATE_INTERACTION and params.use_activation is None and params.normalize is None:
        params = params.clone(use_activation=True)  # vLLM's token_embed normalizes by default
    n_q = len(queries)
    outs = llm.encode(
        queries + docs,
        params,
        pooling_task=task,
        lora_request=lora_request,
        use_tqdm=use_tqdm,
        tokenization_kwargs=tokenization_kwargs,
    )
    q_outs, d_outs = outs[:n_q], outs[n_q:]
    if len(q_outs) == 1:
        q_outs = q_outs * len(d_outs)
    pad = [tok.pad_token_id] if getattr(tok, "pad_token_id", None) is not None else []
    return [
        ScoringRequestOutput(
            f"{a.request_id}_{b.request_id}",
            ScoringOutput(pair_similarity(kind, a.outputs.data, b.outputs.data)),
            a.prompt_token_ids + pad + b.prompt_token_ids,
        )
        for a, b in zip(q_outs, d_outs, strict=True)
    ]


def _offline_pair_ids(
    llm: Any,
    tok: Any,
    query: str,
    doc: str,
    tokenization_kwargs: dict[str, Any] | None,
    chat_template: str | None,
) -> list[int]:
    """:func:`pair_token_ids` with the call's ``tokenization_kwargs``.

    A truncation without an explicit side is the tokenizer's own, as vLLM's ``TokenizeParams.get_encode_kwargs``
    asks for it (``truncation=True, max_length=k``): a pair is then cut ``longest_first``, from both texts.
    """
    cut = _tokenizer_truncation(llm, tokenization_kwargs)
    if cut:
        tok = right_truncating(tok)  # vLLM's pooling tokenizer truncates on the right
    return pair_token_ids(
        tok,
        llm.model.config,
        query,
        doc,
        chat_template=chat_template,
        add_special_tokens=(tokenization_kwargs or {}).get("add_special_tokens", True),
        **cut,
    )


def _tokenizer_truncation(llm: Any, kwargs: dict[str, Any] | None) -> dict[str, Any]:
    """``{"truncation": True, "max_length": k}`` when the call truncates on the tokenizer's side, else ``{}``
    (an explicit side, or a k over ``max_model_len``, is left to ``encode``, which cuts or refuses)."""
    if not kwargs:
        return {}
    options = tokenization_options(kwargs, max_model_len=llm.max_model_len)
    keep = options.truncate_prompt_tokens
    if keep is None or options.truncation_side is not None:
        return {}
    keep = llm.max_model_len if keep == -1 else keep
    return {"truncation": True, "max_length": keep} if 0 < keep <= llm.max_model_len else {}


def _truncation_only(kwargs: dict[str, Any] | None) -> dict[str, Any] | None:
    """The pair is already tokenized: only the truncation keys still apply to it."""
    if kwargs is None:
        return None
    return {
        k: v
        for k, v in kwargs.items()
        if k in ("truncate_prompt_tokens", "truncation", "max_length", "truncation_side")
    }


__all__ = [
    "BI_ENCODER",
    "CROSS_ENCODER",
    "LATE_INTERACTION",
    "SCORE_TYPES",
    "check_token_limits",
    "pair_similarity",
    "pair_token_ids",
    "score_pairs",
    "score_type",
    "truncate_pairs",
    "truncate_text_to_tokens",
    "valid_inputs",
]
