"""``POST /generative_scoring``: vLLM 0.32's Generative Scoring API on a causal LM.

For each item, the probability that the model's next token after ``query + item`` is ``label_token_ids[0]``
(a judge read through its answer token), computed in one forward pass without decoding. The steps and
their order are vLLM's (``ServingGenerativeScoring.create_generative_scoring``):

1. ``model`` names the base model or a served LoRA adapter (404 otherwise);
2. every ``label_token_ids`` entry must be in ``[0, vocab_size)``, then the list must not be empty, then
   ``items`` must not be empty (400, vLLM's messages);
3. the query is tokenized with ``add_special_tokens``, text items without special tokens; each prompt is
   the concatenation, cut to its first ``max_model_len - 1`` tokens;
4. ``score`` is the probability of the first label: softmax over the label logits (``apply_softmax``), or
   over the whole vocabulary; ``usage`` counts the prompts' tokens plus one completion token per item, as
   vLLM generates one.

The items are queued in the server's batcher as label reads (:mod:`rlhf_rewards.server.label_reads`):
concurrent requests share one engine call, and a query shared by all items runs once (prefix sharing).
On a model without an LM head the route answers ``{"detail": "Not Found"}``, as vLLM's pooling runner
has no such route.
"""

from __future__ import annotations

import math

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from rlhf_rewards.entrypoints.generative_scoring import build_prompts, check_items, check_labels
from rlhf_rewards.errors import RequestError
from rlhf_rewards.server.errors import APIError
from rlhf_rewards.server.generative_protocol import (
    GenerativeScoringItemResult,
    GenerativeScoringRequest,
    GenerativeScoringResponse,
    GenerativeScoringUsage,
    check_cache_salt,
)
from rlhf_rewards.server.label_reads import GENERATIVE_SCORING_TASK, label_item
from rlhf_rewards.server.protocol import NOT_OFFERED_RESPONSES
from rlhf_rewards.server.routes.common import engine_of, json_response, response_id
from rlhf_rewards.server.service import ServingEngine

router = APIRouter(tags=["scoring"])


def has_lm_head(engine: ServingEngine) -> bool:
    """Whether the served model is a causal LM read through its LM head (vLLM's generate runner)."""
    return getattr(engine.llm.model, "lm_head_name", None) is not None


def require_lm_head(request: Request) -> None:
    """404 ``{"detail": "Not Found"}`` before the body is read when the model has no LM head."""
    if not has_lm_head(engine_of(request)):
        raise StarletteHTTPException(404)


def vocab_size(engine: ServingEngine) -> int:
    """vLLM's ``model_config.get_vocab_size()``: the text config's ``vocab_size``."""
    config = engine.llm.model.config
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    return int(getattr(text, "vocab_size", None) or engine.llm.model.num_labels)


@router.post(
    "/generative_scoring",
    response_model=GenerativeScoringResponse,
    responses=NOT_OFFERED_RESPONSES,
    dependencies=[Depends(require_lm_head)],
)
async def generative_scoring(body: GenerativeScoringRequest, request: Request) -> JSONResponse:
    """Probability of ``label_token_ids[0]`` as the next token after each ``query + item``."""
    engine = engine_of(request)
    salt_error = check_cache_salt(body.cache_salt)  # vLLM checks it while parsing, before anything else
    if salt_error is not None:
        raise APIError(400, salt_error, param="cache_salt")
    name, lora = engine.resolve_model(body.model)
    try:
        labels = check_labels(body.label_token_ids, vocab_size(engine))
        check_items(body.items)
    except RequestError as exc:
        raise APIError.from_request_error(exc) from None
    engine.check_count(len(body.items), "items")
    llm = engine.llm

    def prepare() -> list:
        prompts = build_prompts(
            body.query,
            body.items,
            llm.tokenizer,
            vocab_size=llm.model.vocab_size,
            max_model_len=llm.max_model_len,
            item_first=body.item_first,
            add_special_tokens=body.add_special_tokens,
        )
        return [label_item(ids, labels, body.apply_softmax, lora, body.cache_salt) for ids in prompts]

    with engine.batcher.arriving():  # a round about to start waits for this request's tokenization
        try:
            items = await engine._in_tokenizer_thread(prepare)
        except RequestError as exc:
            raise APIError.from_request_error(exc) from None
    outputs = await engine.score(GENERATIVE_SCORING_TASK, items)
    data = []
    for i, out in enumerate(outputs):
        score = float(out.outputs.data[0]) if out.error is None else math.nan
        if out.error is not None or not math.isfinite(score):
            data.append(
                GenerativeScoringItemResult(index=i, score=None, error=out.error or "non-finite score")
            )
        else:
            data.append(GenerativeScoringItemResult(index=i, score=score))
    prompt_tokens = sum(len(o.prompt_token_ids) for o in outputs)
    return json_response(
        GenerativeScoringResponse(
            id=response_id("generative-scoring", body.request_id, request),
            model=name,
            data=data,
            usage=GenerativeScoringUsage(
                prompt_tokens=prompt_tokens,
                completion_tokens=len(outputs),
                total_tokens=prompt_tokens + len(outputs),
            ),
        )
    )


__all__ = ["has_lm_head", "router"]
