"""``POST /score`` and ``/rerank`` (vLLM's, with its ``/v1/score``, ``/v1/rerank`` and ``/v2/rerank`` forms).

Served, as in vLLM, for one-label classifiers (cross-encoders, converted rerankers: each (query, document)
pair is one prompt, built as vLLM builds it: the tokenizer's pair encoding when the config's
``use_sep_token`` is true (the default), the two texts joined otherwise, or the server's ``--chat-template``
with the roles ``query`` and ``document``), for embedding models (bi-encoders: cosine similarity of the two
embeddings) and token-embedding models (late interaction: ColBERT MaxSim). On any other model these routes answer FastAPI's ``{"detail": "Not Found"}``, as vLLM's do.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from rlhf_rewards.outputs import PoolingRequestOutput
from rlhf_rewards.server.errors import APIError
from rlhf_rewards.server.protocol import (
    NOT_OFFERED_RESPONSES,
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
from rlhf_rewards.server.routes.common import engine_of, json_response, make_params, response_id, usage
from rlhf_rewards.server.service import ServingEngine

router = APIRouter(tags=["scoring"])
logger = logging.getLogger("rlhf_rewards.server")


def scoring_mode(engine: ServingEngine) -> str | None:
    """``"cross"`` (one-label classifier), ``"bi"`` (embedding model), ``"late"`` (token-embedding model:
    ColBERT MaxSim) or ``None`` (no scoring API; vLLM's ``enable_scoring_api``)."""
    task = engine.default_task
    if task == "classify" and engine.llm.model.num_labels == 1 and engine.info.kind != "process":
        return "cross"
    if task == "embed":
        return "bi"
    if task == "token_embed":
        return "late"
    return None


def require_scoring(request: Request) -> None:
    """404 ``{"detail": "Not Found"}`` before the body is read when the model offers no scoring API (vLLM
    does not register these routes then)."""
    if scoring_mode(engine_of(request)) is None:
        raise StarletteHTTPException(404)


def _expand(one: list[str], two: list[str]) -> list[tuple[int, int]]:
    """Index pairs 1:1, 1:N or N:N (vLLM's rule)."""
    if not one:
        raise APIError(400, "At least one text element must be given")  # vLLM's messages, no param
    if not two:
        raise APIError(400, "At least one text_pair element must be given")
    if len(one) > 1 and len(one) != len(two):
        raise APIError(400, "Input lengths must be either 1:1, 1:N or N:N")
    return [(0 if len(one) == 1 else j, j) for j in range(len(two))]


def _cut(engine: ServingEngine, text: str, n: int) -> str:
    """``text`` cut to ``n`` tokens (vLLM's ``truncate_text_to_tokens``); ``n == 0``: unchanged."""
    if n <= 0:
        return text
    tok = engine.llm.get_tokenizer()
    ids = tok(text, add_special_tokens=False)["input_ids"]
    return text if len(ids) <= n else tok.decode(ids[:n])


async def _pair_scores(
    engine: ServingEngine, body: ScoreFields, one: list[str], two: list[str], request: Request
) -> tuple[str, list[PoolingRequestOutput], list[float | None], list[str | None]]:
    """``(model name, outputs, score per pair, error per pair)`` for the pairs of ``one`` x ``two``."""
    mode = scoring_mode(engine)
    if mode is None:
        raise StarletteHTTPException(404)
    name, lora = engine.resolve_model(body.model, param=None)
    pairs = _expand(one, two)
    for field in ("max_tokens_per_query", "max_tokens_per_doc"):
        limit = getattr(body, field)
        if (
            limit >= engine.llm.max_model_len
        ):  # vLLM 0.33's _validate_token_limit (negative: the schema's 400)
            raise APIError(
                400, f"{field} ({limit}) must be less than max_model_len ({engine.llm.max_model_len})."
            )
    template = engine.limits.chat_template
    if (body.instruction is not None or body.chat_template_kwargs) and (mode != "cross" or template is None):
        raise APIError(
            400,
            "`instruction` and `chat_template_kwargs` need a score template: start the server "
            "with --chat-template (roles `query` and `document`).",
            param="instruction" if body.instruction is not None else "chat_template_kwargs",
        )
    one = [_cut(engine, t, body.max_tokens_per_query) for t in one]
    two = [_cut(engine, t, body.max_tokens_per_doc) for t in two]
    params = make_params(
        {"use_activation": body.use_activation}, truncate_prompt_tokens=body.truncate_prompt_tokens
    )
    if mode in ("bi", "late"):
        task = "embed" if mode == "bi" else "token_embed"
        if mode == "late" and body.use_activation is None:
            params = params.clone(use_activation=True)  # vLLM's token_embed normalizes for MaxSim
        texts = [*one, *two]
        items = await engine.prepare_prompts(
            texts, task, params, lora, field_name="documents", truncation_side=body.truncation_side
        )
        outputs = await engine.score(task, items)
        scores: list[float | None] = []
        errors: list[str | None] = []
        for i, j in pairs:
            a, b = outputs[i].outputs.data.float(), outputs[len(one) + j].outputs.data.float()
            err = outputs[i].error or outputs[len(one) + j].error
            if err:
                scores.append(None)
            elif mode == "bi":
                scores.append(float(torch.nn.functional.cosine_similarity(a, b, dim=0)))
            else:  # ColBERT MaxSim: each query token's best document token, summed
                scores.append(float(torch.matmul(a, b.T).amax(dim=-1).sum()))
            errors.append(err)
        return name, outputs, scores, errors
    prompts = [{"prompt_token_ids": _pair_ids(engine, one[i], two[j], body)} for i, j in pairs]
    items = await engine.prepare_prompts(
        prompts, "classify", params, lora, field_name="documents", truncation_side=body.truncation_side
    )
    outputs = await engine.score("classify", items)
    return (
        name,
        outputs,
        [None if o.error else float(o.outputs.data.reshape(-1)[0]) for o in outputs],
        [o.error for o in outputs],
    )


def _pair_ids(engine: ServingEngine, query: str, doc: str, body: ScoreFields) -> list[int]:
    tok = engine.llm.get_tokenizer()
    template = engine.limits.chat_template
    if template is not None:
        kwargs: dict[str, Any] = dict(body.chat_template_kwargs or {})
        if body.instruction is not None:
            kwargs.setdefault("instruction", body.instruction)
        reserved = sorted({"chat_template", "tools", "tokenize"} & set(kwargs))
        if reserved:
            raise APIError(
                400,
                f"chat_template_kwargs contains reserved keys that conflict with fixed scorer "
                f"arguments: {reserved}",
                param="chat_template_kwargs",
            )
        try:
            text = tok.apply_chat_template(
                [{"role": "query", "content": query}, {"role": "document", "content": doc}],
                chat_template=template,
                tokenize=False,
                **kwargs,
            )
        except Exception as exc:  # noqa: BLE001 - a template error is the request's
            raise APIError(
                400,
                f"The score template failed on this pair: {type(exc).__name__}: {str(exc)[:300]}",
                param="documents",
            ) from None
        return list(tok(text)["input_ids"])
    config = engine.llm.model.config
    if getattr(
        config, "use_sep_token", getattr(config, "use_pad_token", True)
    ):  # use_pad_token: vLLM's old name
        return list(tok(text=query, text_pair=doc, add_special_tokens=True)["input_ids"])
    return list(tok(text=query + doc)["input_ids"])  # an LLM as reranker: the texts joined


def _n_tokens(outputs: list[PoolingRequestOutput]) -> int:
    return sum(len(o.prompt_token_ids) for o in outputs)


async def _score(body: ScoreRequest, request: Request) -> Response:
    one, two = body.pair()
    name, outputs, scores, errors = await _pair_scores(engine_of(request), body, one, two, request)
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


async def _rerank(body: RerankRequest, request: Request) -> Response:
    docs = [body.documents] if isinstance(body.documents, str) else list(body.documents)
    name, outputs, scores, errors = await _pair_scores(engine_of(request), body, [body.query], docs, request)
    order = sorted(range(len(docs)), key=lambda j: (scores[j] is None, -(scores[j] or 0.0)))
    if body.top_n:
        order = order[: body.top_n]
    n = _n_tokens(outputs)
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


@router.post(
    "/score",
    response_model=ScoreResponse,
    responses=NOT_OFFERED_RESPONSES,
    dependencies=[Depends(require_scoring)],
)
async def score(body: ScoreRequest, request: Request) -> Response:
    """One score per (query, document) pair, 1:1, 1:N or N:N (vLLM's Score API)."""
    return await _score(body, request)


@router.post(
    "/v1/score",
    response_model=ScoreResponse,
    responses=NOT_OFFERED_RESPONSES,
    dependencies=[Depends(require_scoring)],
)
async def score_v1(body: ScoreRequest, request: Request) -> Response:
    """``/score`` (vLLM's older path)."""
    return await _score(body, request)


@router.post(
    "/rerank",
    response_model=RerankResponse,
    responses=NOT_OFFERED_RESPONSES,
    dependencies=[Depends(require_scoring)],
)
async def rerank(body: RerankRequest, request: Request) -> Response:
    """Documents ordered by relevance to the query, best first (Jina's and Cohere's rerank API, as vLLM)."""
    return await _rerank(body, request)


@router.post(
    "/v1/rerank",
    response_model=RerankResponse,
    responses=NOT_OFFERED_RESPONSES,
    dependencies=[Depends(require_scoring)],
)
async def rerank_v1(body: RerankRequest, request: Request) -> Response:
    """``/rerank`` (Jina's path)."""
    return await _rerank(body, request)


@router.post(
    "/v2/rerank",
    response_model=RerankResponse,
    responses=NOT_OFFERED_RESPONSES,
    dependencies=[Depends(require_scoring)],
)
async def rerank_v2(body: RerankRequest, request: Request) -> Response:
    """``/rerank`` (Cohere's path)."""
    return await _rerank(body, request)


__all__ = ["router", "scoring_mode"]
