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

The items are queued in the server's batcher as label reads, engine items of their own task
(:data:`GENERATIVE_SCORING_TASK`): concurrent requests merge into one engine call (sharing their queries'
forward when they share a prefix). Each item carries its labels and softmax mode in ``params.extra_kwargs``;
:func:`encode_label_reads` runs a merged batch and answers, per item, a ``PoolingRequestOutput`` whose data is
the ``[k]`` label probabilities and whose ``error`` is set for a non-finite result (the batcher then re-runs
the members alone, as for every task). On a model without an LM head the route answers ``{"detail": "Not
Found"}``, as vLLM's pooling runner has no such route.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from fastapi import Request
from fastapi.responses import Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from rlhf_rewards.entrypoints.generative_scoring import (
    build_prompts,
    check_items,
    check_labels,
    run_label_reads,
)
from rlhf_rewards.errors import RequestError
from rlhf_rewards.lora.request import LoRARequest
from rlhf_rewards.outputs import PoolingOutput, PoolingRequestOutput
from rlhf_rewards.pooling.params import PoolingParams
from rlhf_rewards.server.base.api_utils import json_response, response_id
from rlhf_rewards.server.base.protocol import cache_salt_error
from rlhf_rewards.server.base.serving import ServedModel
from rlhf_rewards.server.batcher import EngineItem
from rlhf_rewards.server.errors import APIError
from rlhf_rewards.server.generative_scoring.protocol import (
    GenerativeScoringItemResult,
    GenerativeScoringRequest,
    GenerativeScoringResponse,
    GenerativeScoringUsage,
)

#: The batcher's task name of label reads (never a pooling task a client can name).
GENERATIVE_SCORING_TASK = "generative_scoring"


def check_offered(served: ServedModel) -> None:
    """404 ``{"detail": "Not Found"}`` unless the served model is a causal LM read through its LM head (vLLM's
    generate runner)."""
    if getattr(served.llm.model, "lm_head_name", None) is None:
        raise StarletteHTTPException(404)


def vocab_size(served: ServedModel) -> int:
    """vLLM's ``model_config.get_vocab_size()``: the text config's ``vocab_size``."""
    config = served.llm.model.config
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    return int(getattr(text, "vocab_size", None) or served.llm.model.num_labels)


async def create_generative_scoring(
    served: ServedModel, body: GenerativeScoringRequest, request: Request
) -> Response:
    """Probability of ``label_token_ids[0]`` as the next token after each ``query + item``."""
    salt_error = cache_salt_error(body.cache_salt)  # vLLM checks it while parsing, before anything else
    if salt_error is not None:
        raise APIError(400, salt_error, param="cache_salt")
    name, lora = served.resolve_model(body.model)
    try:
        labels = check_labels(body.label_token_ids, vocab_size(served))
        check_items(body.items)
    except RequestError as exc:
        raise APIError.from_request_error(exc) from None
    served.check_count(len(body.items), "items")
    llm = served.llm

    def prepare() -> list[EngineItem]:
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

    with served.batcher.arriving():  # a round about to start waits for this request's tokenization
        try:
            items = await served.in_tokenizer_thread(prepare)
        except RequestError as exc:
            raise APIError.from_request_error(exc) from None
    outputs = await served.score(GENERATIVE_SCORING_TASK, items)
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


def label_item(
    token_ids: list[int],
    label_token_ids: Sequence[int],
    apply_softmax: bool,
    lora: LoRARequest | None,
    cache_salt: str | None = None,
) -> EngineItem:
    """The engine item of one ``query + item`` prompt (``cache_salt``: its prefix-cache namespace)."""
    params = PoolingParams(
        extra_kwargs={"label_token_ids": list(label_token_ids), "apply_softmax": apply_softmax}
    )
    return EngineItem(token_ids, params, lora, cache_salt=cache_salt)


def encode_label_reads(llm: Any, items: list[EngineItem]) -> list[PoolingRequestOutput]:
    """Run merged label-read items in one engine call (the batcher's encoder of :data:`GENERATIVE_SCORING_TASK`)."""
    extras = [i.params.extra_kwargs or {} for i in items]
    reads = run_label_reads(
        llm,
        [i.token_ids for i in items],
        [e["label_token_ids"] for e in extras],
        [bool(e["apply_softmax"]) for e in extras],
        [i.lora for i in items],
        cache_salt=[i.cache_salt for i in items],
    )
    return [
        PoolingRequestOutput(
            request_id=f"generative-scoring-{n}",
            outputs=PoolingOutput(data=probs.to(torch.float64)),
            prompt_token_ids=list(item.token_ids),
            error=error,
        )
        for n, (item, (probs, error)) in enumerate(zip(items, reads, strict=True))
    ]


__all__ = [
    "GENERATIVE_SCORING_TASK",
    "check_offered",
    "create_generative_scoring",
    "encode_label_reads",
    "label_item",
    "vocab_size",
]
