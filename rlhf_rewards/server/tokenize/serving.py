"""``POST /tokenize`` and ``POST /detokenize`` (vLLM's)."""

from __future__ import annotations

from fastapi.responses import Response

from rlhf_rewards.server.base.api_utils import json_response
from rlhf_rewards.server.base.preprocess import chat_options, render
from rlhf_rewards.server.base.serving import ServedModel
from rlhf_rewards.server.tokenize.protocol import (
    DetokenizeRequest,
    DetokenizeResponse,
    TokenizeRequest,
    TokenizeResponse,
)


async def create_tokenize(served: ServedModel, body: TokenizeRequest) -> Response:
    """Token ids of a ``prompt``, or of ``messages`` rendered with the chat template."""
    served.resolve_model(body.model, param="model")
    if body.messages is not None:
        ids = await render(served, body.messages, **chat_options(body))
    else:
        add_special = True if body.add_special_tokens is None else body.add_special_tokens
        ids = await served.tokenize_text(body.prompt or "", add_special)
    token_strs = await served.token_strs(ids) if body.return_token_strs else None
    return json_response(
        TokenizeResponse(
            count=len(ids), max_model_len=served.llm.max_model_len, tokens=ids, token_strs=token_strs
        )
    )


async def create_detokenize(served: ServedModel, body: DetokenizeRequest) -> Response:
    """The text of token ids (special tokens kept, ids outside the vocabulary decode to nothing, as vLLM's)."""
    served.resolve_model(body.model, param="model")
    tok = served.llm.get_tokenizer()
    size = len(tok)
    text = await served.in_tokenizer_thread(tok.decode, [t for t in body.tokens if t < size])
    return json_response(DetokenizeResponse(prompt=text))


__all__ = ["create_detokenize", "create_tokenize"]
