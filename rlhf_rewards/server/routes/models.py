"""Model routes: ``GET /v1/models``, ``GET /v1/model_info``, ``POST /tokenize``, ``POST /detokenize`` and
``GET /version`` (vLLM's; ``/v1/model_info`` is this server's)."""

from __future__ import annotations

import time
import uuid

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from rlhf_rewards.server.protocol import (
    ERROR_RESPONSES,
    DetokenizeRequest,
    DetokenizeResponse,
    ModelCard,
    ModelInfoResponse,
    ModelList,
    ModelPermission,
    TokenizeRequest,
    TokenizeResponse,
    VersionResponse,
)
from rlhf_rewards.server.routes.common import engine_of, json_response

router = APIRouter(tags=["models"])
_AUTH_ERROR = {401: ERROR_RESPONSES[401]}


def _permission(created: int) -> list[ModelPermission]:
    return [ModelPermission(id=f"modelperm-{uuid.uuid4().hex}", created=created)]


@router.get("/v1/models", response_model=ModelList, responses=_AUTH_ERROR)
async def list_models(request: Request) -> JSONResponse:
    """One card per served model name (``--served-model-name`` aliases, the first is the one reported) and
    one per LoRA module (``--lora-modules``), as vLLM lists them. ``root`` is the model as the server was
    started with it; a LoRA card's ``root`` is its name (adapter paths never leave the server)."""
    engine = engine_of(request)
    created = int(time.time())
    max_len = engine.llm.max_model_len
    root = str(engine.llm.model_name)
    cards = [
        ModelCard(
            id=alias,
            created=created,
            root=root,
            parent=None,
            max_model_len=max_len,
            permission=_permission(created),
        )
        for alias in engine.served_model_names
    ]
    cards += [
        ModelCard(
            id=name,
            created=created,
            root=name,
            parent=engine.model_name,
            max_model_len=max_len,
            permission=_permission(created),
        )
        for name in engine.lora_names
    ]
    return json_response(ModelList(data=cards))


@router.get("/v1/model_info", response_model=ModelInfoResponse, responses=_AUTH_ERROR)
async def model_info(request: Request) -> JSONResponse:
    """``ModelInfo.to_dict()`` of the served model (what ``RemoteWorker.model_info()`` returns), plus the
    server's request limits under ``server_limits``."""
    engine = engine_of(request)
    return json_response(ModelInfoResponse(**engine.info.to_dict(), server_limits=engine.limits.to_dict()))


@router.post("/tokenize", response_model=TokenizeResponse, responses=ERROR_RESPONSES)
async def tokenize(body: TokenizeRequest, request: Request) -> JSONResponse:
    """Token ids of a ``prompt``, or of ``messages`` rendered with the chat template (vLLM's ``/tokenize``)."""
    engine = engine_of(request)
    engine.resolve_model(body.model, param="model")
    if body.messages is not None:
        ids = await engine.render(
            body.messages,
            chat_template=body.chat_template,
            add_generation_prompt=body.add_generation_prompt,
            continue_final_message=body.continue_final_message,
            chat_template_kwargs=body.chat_template_kwargs,
            add_special_tokens=bool(body.add_special_tokens),
        )
    else:
        add_special = True if body.add_special_tokens is None else body.add_special_tokens
        ids = await engine.tokenize_text(body.prompt or "", add_special)
    token_strs = await engine.token_strs(ids) if body.return_token_strs else None
    return json_response(
        TokenizeResponse(
            count=len(ids), max_model_len=engine.llm.max_model_len, tokens=ids, token_strs=token_strs
        )
    )


@router.post("/detokenize", response_model=DetokenizeResponse, responses=ERROR_RESPONSES)
async def detokenize(body: DetokenizeRequest, request: Request) -> JSONResponse:
    """The text of token ids (vLLM's ``/detokenize``: special tokens kept, ids outside the vocabulary decode
    to nothing)."""
    engine = engine_of(request)
    engine.resolve_model(body.model, param="model")
    tok = engine.llm.get_tokenizer()
    size = len(tok)
    text = await engine.in_tokenizer_thread(tok.decode, [t for t in body.tokens if t < size])
    return json_response(DetokenizeResponse(prompt=text))


@router.get("/version", response_model=VersionResponse, responses=_AUTH_ERROR)
async def version() -> JSONResponse:
    """This server's version (vLLM's route and shape; the number is rlhf-rewards', not a vLLM release)."""
    from rlhf_rewards import __version__

    return json_response(VersionResponse(version=__version__))
