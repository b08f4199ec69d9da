"""``LLM.score``: vLLM 0.33's offline Scoring API over this engine's ``encode``.

The kind of score follows the model's pooling task, as vLLM's ``SCORE_TYPE_MAP``:

- ``classify`` -> **cross-encoder**: each ``(query, document)`` pair is one prompt, built as vLLM's
  ``CrossEncoderIOProcessor.get_score_prompt`` builds it: with a ``chat_template`` (given to ``score`` or
  to ``LLM``), the template rendered over ``[{"role": "query", ...}, {"role": "document", ...}]``; else the
  tokenizer's pair encoding (``tokenizer(text=query, text_pair=document)``) when ``config.use_sep_token``
  is true (the default), or ``query + document`` when it is false (vLLM's "LLM as reranker" form). Only
  one-label classifiers score (``num_labels == 1``); the score is the activated logit (sigmoid) unless
  ``use_activation=False``.
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

SCORE_TYPES: dict[str, str] = {
    "classify": "cross-encoder",
    "embed": "bi-encoder",
    "token_embed": "late-interaction",
}


def valid_inputs(data_1: str | Sequence[str], data_2: str | Sequence[str]) -> tuple[list[str], list[str]]:
    """vLLM's ``validate_score_input`` for text: ``1 -> 1``, ``1 -> N`` or ``N -> N``."""
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


def truncate_text_to_tokens(text: str, tokenizer: Any, max_tokens: int) -> str:
    """The longest prefix of ``text`` that tokenizes to at most ``max_tokens`` content tokens (vLLM's rule)."""
    if max_tokens <= 0:
        return ""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if len(ids) <= max_tokens:
        return text
    return tokenizer.decode(ids[:max_tokens])


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
    per pair, in order."""
    task = llm.pooling_task
    score_type = SCORE_TYPES.get(task)
    if score_type == "cross-encoder" and llm.model.num_labels != 1:
        raise ValueError("Scoring API is only enabled for num_labels == 1.")
    if score_type is None:
        raise ValueError("This model does not support the Scoring API.")
    queries, docs = valid_inputs(data_1, data_2)
    params = (pooling_params or PoolingParams()).clone()
    if params.task is not None and params.task != task:
        raise ValueError(
            f"You cannot overwrite pooling_params.task={params.task!r} with pooling_task={task!r}!"
        )
    max_doc = int((params.extra_kwargs or {}).get("max_tokens_per_doc", 0) or 0)
    params = params.clone(task=None, extra_kwargs=None)
    tok = llm.get_tokenizer()
    if max_doc > 0:
        docs = [truncate_text_to_tokens(d, tok, max_doc) for d in docs]
    if score_type == "cross-encoder":
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
            {"prompt_token_ids": _pair_ids(llm, tok, q, d, tokenization_kwargs, chat_template)}
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
    if score_type == "late-interaction" and params.use_activation is None and params.normalize is None:
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
    results = []
    for a, b in zip(q_outs, d_outs, strict=True):
        if score_type == "bi-encoder":
            value = F.cosine_similarity(a.outputs.data.float(), b.outputs.data.float(), dim=0)
        else:
            value = torch.matmul(a.outputs.data.float(), b.outputs.data.float().T).amax(dim=-1).sum()
        results.append(
            ScoringRequestOutput(
                f"{a.request_id}_{b.request_id}",
                ScoringOutput(float(value)),
                a.prompt_token_ids + pad + b.prompt_token_ids,
            )
        )
    return results


def _pair_ids(
    llm: Any,
    tok: Any,
    query: str,
    doc: str,
    tokenization_kwargs: dict[str, Any] | None,
    chat_template: str | None,
) -> list[int]:
    """The cross-encoder prompt of one pair, as vLLM's ``get_score_prompt`` builds it.

    A truncation without an explicit side is the tokenizer's own, as vLLM's ``TokenizeParams.get_encode_kwargs``
    asks for it (``truncation=True, max_length=k``): a pair is then cut ``longest_first``, from both texts.
    """
    add_special = (tokenization_kwargs or {}).get("add_special_tokens", True)
    cut = _tokenizer_truncation(llm, tokenization_kwargs)
    if cut:
        tok = right_truncating(tok)  # vLLM's pooling tokenizer truncates on the right
    if chat_template is not None:
        text = tok.apply_chat_template(
            [{"role": "query", "content": query}, {"role": "document", "content": doc}],
            chat_template=chat_template,
            tokenize=False,
        )
        return list(tok(text, add_special_tokens=add_special, **cut)["input_ids"])
    if getattr(llm.model.config, "use_sep_token", getattr(llm.model.config, "use_pad_token", True)):
        return list(tok(text=query, text_pair=doc, add_special_tokens=add_special, **cut)["input_ids"])
    return list(tok(text=query + doc, add_special_tokens=add_special, **cut)["input_ids"])


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


__all__ = ["SCORE_TYPES", "score_pairs", "truncate_text_to_tokens", "valid_inputs"]
