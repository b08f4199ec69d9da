"""``POST /v1/embeddings`` (OpenAI's and vLLM's) and ``POST /v2/embed`` (Cohere's, as vLLM serves it).

On an embedding model ``/v1/embeddings`` answers embeddings (one vector per token on a token-embedding model, as
vLLM's token-embedding server does). On a reward model it answers as SGLang's reward
servers do, which verl's SGLang reward path reads (``data[-1]["embedding"][-1]`` is the reward): the raw score
vector of each prompt, ``[num_labels]`` (for token reward models, the last token's scores), without
activation unless ``use_activation`` asks for it.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from fastapi import Request
from fastapi.responses import Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from rlhf_rewards.outputs import PoolingRequestOutput
from rlhf_rewards.server.base.api_utils import json_response, make_params, response_id, usage
from rlhf_rewards.server.base.encoding import bytes_response, encode_base64, encode_item
from rlhf_rewards.server.base.preprocess import chat_options, prepare, prepare_prompts, render
from rlhf_rewards.server.base.serving import ServedModel
from rlhf_rewards.server.embed.protocol import (
    CohereBilledUnits,
    CohereEmbeddings,
    CohereEmbedRequest,
    CohereEmbedResponse,
    CohereMeta,
    EmbeddingRequest,
    EmbeddingResponse,
    EmbeddingResponseData,
)
from rlhf_rewards.server.errors import APIError

_EMBED_TASKS = ("embed", "token_embed")


def check_embeddings_offered(served: ServedModel) -> None:
    """Under ``--strict-vllm-compat``: 404 ``{"detail": "Not Found"}`` unless an embedding model is served
    (vLLM has no embeddings route for reward models)."""
    if served.strict and "embed" not in served.vllm_tasks:
        raise StarletteHTTPException(404)


def check_cohere_offered(served: ServedModel) -> None:
    """404 ``{"detail": "Not Found"}`` unless an embedding model is served (vLLM serves ``/v2/embed`` only
    then)."""
    if served.default_task != "embed":
        raise StarletteHTTPException(404)


def _reward_vector(index: int, out: PoolingRequestOutput) -> torch.Tensor:
    """The score vector SGLang answers for a reward model: ``[num_labels]`` (a token model's last row); a 400
    when there is no row (a process reward model's prompt without a step tag: STEP pooling keeps no token)."""
    data = out.outputs.data
    if data.dim() == 2:
        if data.shape[0] == 0:
            raise APIError(
                400,
                f"input[{index}] has no step tag, so this process reward model has no score for "
                "it: end each step with the model's step tag (STEP pooling scores only those "
                "tokens).",
                param="input",
            )
        return data[-1]
    return data.reshape(-1)


async def create_embedding(served: ServedModel, body: EmbeddingRequest, request: Request) -> Response:
    """Embeddings of an embedding model; the raw reward vector of a reward model (SGLang's answer)."""
    name, lora = served.resolve_model(body.model, param=None)
    default = served.default_task
    reward = default not in _EMBED_TASKS
    # A token-embedding model answers per-token vectors.
    task = default if reward or default == "token_embed" else "embed"
    fields: Any = body
    if reward and body.use_activation is None:
        fields = {**body.model_dump(include={"dimensions", "normalize"}), "use_activation": False}
    params = make_params(fields, truncate_prompt_tokens=body.truncate_prompt_tokens)
    if body.batched:  # several conversations: each rendered, then scored together
        served.check_count(len(body.messages), "messages")
        ids = [await render(served, conv, **chat_options(body)) for conv in body.messages]
        items = await prepare_prompts(
            served,
            [{"prompt_token_ids": i} for i in ids],
            task,
            params,
            lora,
            field_name="messages",
            add_special_tokens=False,
            truncation_side=body.truncation_side,
        )
    else:
        items = await prepare(served, body, task, params, lora)
    outputs = await served.score(task, items)
    tensors = [_reward_vector(i, o) if reward else o.outputs.data for i, o in enumerate(outputs)]
    rid = response_id("embd", body.request_id, request)
    if body.encoding_format in ("bytes", "bytes_only"):
        return bytes_response(outputs, tensors, body, response_id=rid, model=name)
    data = [
        EmbeddingResponseData(
            index=i, embedding=None if out.error is not None else encode_item(tensor, body), error=out.error
        )
        for i, (out, tensor) in enumerate(zip(outputs, tensors, strict=True))
    ]
    return json_response(EmbeddingResponse(id=rid, model=name, data=data, usage=usage(outputs)))


async def create_cohere_embed(served: ServedModel, body: CohereEmbedRequest, request: Request) -> Response:
    """Cohere's embed API on an embedding model."""
    served.resolve_model(body.model, param=None)
    texts = _cohere_texts(body)
    # Cohere's truncate -> (truncate_prompt_tokens, side) as vLLM maps it; NONE + max_tokens is checked after.
    truncate, side = None, None
    if body.truncate == "START":
        truncate, side = (body.max_tokens or -1), "left"
    elif body.truncate == "END":
        truncate, side = (body.max_tokens or -1), "right"
    params = make_params({"dimensions": body.output_dimension}, truncate_prompt_tokens=truncate)
    items = await prepare_prompts(
        served,
        texts,
        "embed",
        params,
        None,
        field_name="texts" if body.texts else "inputs",
        truncation_side=side,
    )
    if body.truncate == "NONE" and body.max_tokens is not None:
        long = [i for i, it in enumerate(items) if len(it.token_ids) > body.max_tokens]
        if long:
            raise APIError(
                400,
                f"Input of {len(items[long[0]].token_ids)} tokens exceeds max_tokens="
                f"{body.max_tokens} with truncate=NONE. Set truncate to END or START to allow "
                "truncation.",
                param="max_tokens",
            )
    outputs = await served.score("embed", items)
    bad = [i for i, o in enumerate(outputs) if o.error is not None]
    if bad:
        raise APIError(
            422,
            f"Texts {bad[:10]} have no embedding ({outputs[bad[0]].error}); Cohere's answer cannot "
            "carry per-item errors: use /v1/embeddings.",
            param="texts",
        )
    floats = [o.outputs.data.tolist() for o in outputs]
    return json_response(
        CohereEmbedResponse(
            id=response_id("embd", None, request),
            embeddings=_typed(floats, body.embedding_types or ["float"]),
            texts=body.texts,
            meta=CohereMeta(billed_units=CohereBilledUnits(input_tokens=usage(outputs).prompt_tokens)),
        )
    )


def _cohere_texts(body: CohereEmbedRequest) -> list[str]:
    """The texts to embed: ``texts``, or each of ``inputs`` with its text parts joined by newlines."""
    if body.inputs is None:
        return list(body.texts or [])
    texts = []
    for i, item in enumerate(body.inputs):
        parts = item.get("content") if isinstance(item, dict) else None
        if not isinstance(parts, list) or not all(
            isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str) for p in parts
        ):
            raise APIError(
                400,
                f"`inputs[{i}].content` must be text parts {{'type': 'text', 'text': str}}; "
                "this server scores text only.",
                param="inputs",
            )
        texts.append("\n".join(p["text"] for p in parts))
    return texts


def _typed(floats: list[list[float]], types: list[str]) -> CohereEmbeddings:
    """Cohere's embedding types (vLLM's ``build_typed_embeddings``)."""
    out: dict[str, Any] = {}
    array = np.asarray(floats, dtype=np.float64)
    for kind in types:
        if kind == "float":
            out["float"] = floats
        elif kind in ("binary", "ubinary"):
            if array.shape[1] % 8:
                raise APIError(
                    400,
                    "Embedding dimension must be a multiple of 8 for binary embedding types, but "
                    f"got {array.shape[1]}.",
                    param="embedding_types",
                )
            packed = np.packbits(array >= 0, axis=-1)
            out[kind] = (packed.astype(np.int16) - 128).tolist() if kind == "binary" else packed.tolist()
        elif kind == "base64":
            out["base64"] = [
                encode_base64(torch.tensor(v, dtype=torch.float32), "float32", "little") for v in floats
            ]
    return CohereEmbeddings(**out)


__all__ = ["check_cohere_offered", "check_embeddings_offered", "create_cohere_embed", "create_embedding"]
