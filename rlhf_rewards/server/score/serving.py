"""``POST /score`` and ``/rerank`` (vLLM's, with its ``/v1/score``, ``/v1/rerank`` and ``/v2/rerank`` forms).

Served, as in vLLM, for one-label classifiers (cross-encoders, converted rerankers: each (query, document)
pair is one prompt), for embedding models (bi-encoders: cosine similarity of the two embeddings) and
token-embedding models (late interaction: ColBERT MaxSim). The rules are the offline ``LLM.score``'s,
written once in :mod:`rlhf_rewards.entrypoints.scoring`; the pair prompt's template is the server's
``--chat-template`` (roles ``query`` and ``document``). On any other model these routes answer FastAPI's
``{"detail": "Not Found"}``, as vLLM's do.
"""

from __future__ import annotations

from typing import Any

from fastapi import Request
from fastapi.responses import Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from rlhf_rewards.entrypoints.scoring import (
    BI_ENCODER,
    CROSS_ENCODER,
    check_token_limits,
    pair_similarity,
    pair_token_ids,
    score_type,
    truncate_pairs,
    valid_inputs,
)
from rlhf_rewards.outputs import PoolingRequestOutput
from rlhf_rewards.server.base.api_utils import json_response, make_params, response_id, usage
from rlhf_rewards.server.base.preprocess import prepare_prompts
from rlhf_rewards.server.base.serving import ServedModel
from rlhf_rewards.server.errors import APIError
from rlhf_rewards.server.score.protocol import (
    RerankDocument,
    RerankRequest,
    RerankResponse,
    RerankResult,
    RerankUsage,
    ScoreFields,
    ScoreRequest,
    ScoreResponse,
    ScoreResponseData,
)

#: Keys of ``chat_template_kwargs`` that would override the scorer's own template arguments (vLLM's).
_RESERVED_TEMPLATE_KEYS = frozenset({"chat_template", "tools", "tokenize"})


def scoring_kind(served: ServedModel) -> str | None:
    """The served model's kind of score (:func:`~rlhf_rewards.entrypoints.scoring.score_type` of its task), or
    ``None``: no scoring API. A process reward model has none here even when it serves ``classify``: its
    scores are per step, not per pair."""
    if served.info.kind == "process":
        return None
    return score_type(served.default_task, served.llm.model.num_labels)


def check_offered(served: ServedModel) -> None:
    """404 ``{"detail": "Not Found"}`` when the model offers no scoring API (vLLM does not register these
    routes then)."""
    if scoring_kind(served) is None:
        raise StarletteHTTPException(404)


async def create_score(served: ServedModel, body: ScoreRequest, request: Request) -> Response:
    """One score per (query, document) pair, 1:1, 1:N or N:N (vLLM's Score API)."""
    one, two = body.pair()
    name, outputs, scores, errors = await _pair_scores(served, body, one, two)
    return json_response(
        ScoreResponse(
            id=response_id("score", body.request_id, request),
            model=name,
            data=[
                ScoreResponseData(index=i, score=s, error=e)
                for i, (s, e) in enumerate(zip(scores, errors, strict=True))
            ],
            usage=usage(outputs),
        )
    )


async def create_rerank(served: ServedModel, body: RerankRequest, request: Request) -> Response:
    """Documents ordered by relevance to the query, best first (NaN scores last, with a ``null`` score)."""
    docs = [body.documents] if isinstance(body.documents, str) else list(body.documents)
    name, outputs, scores, errors = await _pair_scores(served, body, [body.query], docs)
    order = sorted(range(len(docs)), key=lambda j: (scores[j] is None, -(scores[j] or 0.0)))
    if body.top_n:
        order = order[: body.top_n]
    n = usage(outputs).prompt_tokens
    return json_response(
        RerankResponse(
            id=response_id("rerank", body.request_id, request),
            model=name,
            usage=RerankUsage(prompt_tokens=n, total_tokens=n),
            results=[
                RerankResult(
                    index=j, document=RerankDocument(text=docs[j]), relevance_score=scores[j], error=errors[j]
                )
                for j in order
            ],
        )
    )


async def _pair_scores(
    served: ServedModel, body: ScoreFields, one: list[str], two: list[str]
) -> tuple[str, list[PoolingRequestOutput], list[float | None], list[str | None]]:
    """``(model name, outputs, score per pair, error per pair)`` for the pairs of ``one`` x ``two``."""
    kind = scoring_kind(served)
    if kind is None:
        raise StarletteHTTPException(404)
    name, lora = served.resolve_model(body.model, param=None)
    llm = served.llm
    try:  # vLLM's messages, no param
        one, two = valid_inputs(one, two)
        check_token_limits(body.max_tokens_per_query, body.max_tokens_per_doc, llm.max_model_len)
    except ValueError as exc:
        raise APIError(400, str(exc)) from None
    pairs = [(0 if len(one) == 1 else j, j) for j in range(len(two))]
    template = served.limits.chat_template
    if (body.instruction is not None or body.chat_template_kwargs) and (
        kind != CROSS_ENCODER or template is None
    ):
        raise APIError(
            400,
            "`instruction` and `chat_template_kwargs` need a score template: start the server "
            "with --chat-template (roles `query` and `document`).",
            param="instruction" if body.instruction is not None else "chat_template_kwargs",
        )
    one, two = truncate_pairs(
        one, two, llm.get_tokenizer(), body.max_tokens_per_query, body.max_tokens_per_doc
    )
    params = make_params(
        {"use_activation": body.use_activation}, truncate_prompt_tokens=body.truncate_prompt_tokens
    )
    if kind != CROSS_ENCODER:
        task = "embed" if kind == BI_ENCODER else "token_embed"
        if kind != BI_ENCODER and body.use_activation is None:
            params = params.clone(use_activation=True)  # vLLM's token_embed normalizes for MaxSim
        items = await prepare_prompts(
            served,
            [*one, *two],
            task,
            params,
            lora,
            field_name="documents",
            truncation_side=body.truncation_side,
        )
        outputs = await served.score(task, items)
        scores: list[float | None] = []
        errors: list[str | None] = []
        for i, j in pairs:
            a, b = outputs[i], outputs[len(one) + j]
            err = a.error or b.error
            scores.append(None if err else pair_similarity(kind, a.outputs.data, b.outputs.data))
            errors.append(err)
        return name, outputs, scores, errors
    kwargs = _template_kwargs(body) if template is not None else None
    prompts = [{"prompt_token_ids": _pair_ids(served, one[i], two[j], template, kwargs)} for i, j in pairs]
    items = await prepare_prompts(
        served,
        prompts,
        "classify",
        params,
        lora,
        field_name="documents",
        truncation_side=body.truncation_side,
    )
    outputs = await served.score("classify", items)
    return (
        name,
        outputs,
        [None if o.error else float(o.outputs.data.reshape(-1)[0]) for o in outputs],
        [o.error for o in outputs],
    )


def _template_kwargs(body: ScoreFields) -> dict[str, Any]:
    """The score template's variables: ``chat_template_kwargs``, and ``instruction`` unless they set one."""
    kwargs: dict[str, Any] = dict(body.chat_template_kwargs or {})
    if body.instruction is not None:
        kwargs.setdefault("instruction", body.instruction)
    reserved = sorted(_RESERVED_TEMPLATE_KEYS & set(kwargs))
    if reserved:
        raise APIError(
            400,
            f"chat_template_kwargs contains reserved keys that conflict with fixed scorer "
            f"arguments: {reserved}",
            param="chat_template_kwargs",
        )
    return kwargs


def _pair_ids(
    served: ServedModel, query: str, doc: str, template: str | None, kwargs: dict[str, Any] | None
) -> list[int]:
    """The cross-encoder prompt of one pair; a failure of the server's score template is the request's (400)."""
    llm = served.llm
    try:
        return pair_token_ids(
            llm.get_tokenizer(), llm.model.config, query, doc, chat_template=template, template_kwargs=kwargs
        )
    except Exception as exc:  # noqa: BLE001 - a template error is the request's
        if template is None:
            raise
        raise APIError(
            400,
            f"The score template failed on this pair: {type(exc).__name__}: {str(exc)[:300]}",
            param="documents",
        ) from None


__all__ = ["check_offered", "create_rerank", "create_score", "scoring_kind"]
