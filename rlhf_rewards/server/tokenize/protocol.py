"""``POST /tokenize`` and ``POST /detokenize``'s requests and responses (vLLM's)."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import Field, model_validator

from rlhf_rewards.server.base.protocol import ChatMessage, ResponseModel, StrictModel, check_generation_prompt


class TokenizeRequest(StrictModel):
    """``POST /tokenize`` (vLLM's): ``prompt`` or ``messages``."""

    model: str | None = None
    prompt: str | None = None
    messages: list[ChatMessage] | None = None
    add_special_tokens: bool | None = Field(
        default=None, description="Default true for `prompt`, false for `messages`."
    )
    add_generation_prompt: bool = Field(default=True, description="Chat form only; vLLM's default is true.")
    continue_final_message: bool = False
    chat_template: str | None = None
    chat_template_kwargs: dict[str, Any] | None = None
    return_token_strs: bool = False

    @model_validator(mode="before")
    @classmethod
    def _vllm_refusals(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("messages") is not None:  # vLLM's chat form only
            check_generation_prompt(data)
        return data

    @model_validator(mode="after")
    def _one_form(self) -> TokenizeRequest:
        if (self.prompt is None) == (self.messages is None):
            raise ValueError("send exactly one of `prompt` or `messages`")
        if self.messages is not None and not self.messages:
            raise ValueError("`messages` is empty: send at least one message")
        return self


class DetokenizeRequest(StrictModel):
    """``POST /detokenize`` (vLLM's)."""

    model: str | None = None
    tokens: list[Annotated[int, Field(ge=0, le=2**63 - 1)]] = Field(
        description="Token ids; ids outside the vocabulary decode to nothing, as vLLM's."
    )


class DetokenizeResponse(ResponseModel):
    """``/detokenize`` response (vLLM's)."""

    prompt: str


class TokenizeResponse(ResponseModel):
    """``/tokenize`` response (vLLM's)."""

    count: int
    max_model_len: int
    tokens: list[int]
    token_strs: list[str] | None = Field(default=None, description="With `return_token_strs`; else null.")


__all__ = ["DetokenizeRequest", "DetokenizeResponse", "TokenizeRequest", "TokenizeResponse"]
