"""What every route's schemas share (pydantic), following vLLM 0.33's where a route mirrors vLLM's.

Request models validate as vLLM's do (pydantic's lax mode: ``"2"`` is the integer 2, ``"yes"`` and ``1`` are
``true``; ``2.5`` is not an integer, ``"maybe"`` is not a boolean, NaN is never a number). Unknown fields are
ignored with a logged warning naming them, as vLLM does (its ``OpenAIBaseModel``); vLLM's own fields are
accepted, honoured where they apply, and refused with a 400 saying why where they cannot be. Fields marked
*extension* are not in vLLM's schema. Each route family's own models are in its ``protocol`` module.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

logger = logging.getLogger("rlhf_rewards.server")

#: vLLM 0.33's ``EncodingFormat``, ``EmbedDType`` and ``Endianness``.
EncodingFormat = Literal["float", "base64", "bytes", "bytes_only"]
EmbedDType = Literal["float32", "float16", "bfloat16", "fp8_e4m3", "fp8_e5m2"]
Endianness = Literal["native", "big", "little"]
_CACHE_SALT_FORBIDDEN = frozenset("@/\\\x00")


class RequestRefused(Exception):  # noqa: N818 - vLLM's VLLMValidationError, raised from a validator
    """A request refused by a schema check the way vLLM refuses it: raised inside a validator (not a
    ``ValueError``, so pydantic does not wrap it), answered as a 400 ``BadRequestError`` with ``param``
    (vLLM raises ``VLLMValidationError`` from its validators for these)."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


class ParamValueError(ValueError):
    """A schema error naming vLLM's ``param`` for it (its ``VLLMValidationError.parameter``; kept here, where the
    schemas are, so that they need not import the error module)."""

    def __init__(self, message: str, parameter: str | None = None) -> None:
        super().__init__(message)
        self.parameter = parameter


class StrictModel(BaseModel):
    """Base of request models: vLLM's validation (pydantic's lax mode, NaN/inf refused); unknown fields ignored
    and logged (vLLM's behaviour). The name is historical: types are checked as vLLM checks them."""

    model_config = ConfigDict(extra="ignore", allow_inf_nan=False)

    @model_validator(mode="wrap")
    @classmethod
    def _log_ignored_fields(cls, data: Any, handler: Any, info: ValidationInfo) -> Any:
        result = handler(data)
        if isinstance(data, dict) and not (info.context or {}).get("quiet"):
            log_ignored_fields(cls, data)
        return result


def log_ignored_fields(schema: type[BaseModel], data: dict[str, Any]) -> list[str]:
    """Log (warning) and return the keys of ``data`` that ``schema`` ignores, as vLLM logs them."""
    known = set(schema.model_fields) | {f.alias for f in schema.model_fields.values() if f.alias}
    ignored = sorted(str(k) for k in data if k not in known)
    if ignored:
        shown = [k[:60] for k in ignored[:20]]
        logger.warning(
            "The following fields were present in the request but ignored: %s%s",
            shown,
            f" (and {len(ignored) - 20} more)" if len(ignored) > 20 else "",
        )
    return ignored


class ChatMessage(BaseModel):
    """One chat message (OpenAI format). Text content parts are joined with newlines, as vLLM does."""

    model_config = ConfigDict(extra="allow", allow_inf_nan=False)

    role: str = Field(min_length=1)
    content: str | list[dict[str, Any]] | None = None

    @field_validator("content")
    @classmethod
    def _text_parts(cls, value: Any) -> Any:
        if isinstance(value, list):
            texts = []
            for i, part in enumerate(value):
                if part.get("type") != "text" or not isinstance(part.get("text"), str):
                    raise ValueError(
                        f"content[{i}] must be a text part {{'type': 'text', 'text': str}}; "
                        "this server scores text only"
                    )
                texts.append(part["text"])
            return "\n".join(texts)
        return value

    def as_dict(self) -> dict[str, Any]:
        """The message as the chat template receives it."""
        return self.model_dump(exclude_none=True)


def cache_salt_error(value: Any) -> str | None:
    """vLLM's ``validate_cache_salt``: why ``value`` is not a ``cache_salt`` (``None`` when it is one, or unset).
    The routes answer it as a 400 ``BadRequestError`` naming ``cache_salt``, not as a schema error."""
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        return "Parameter 'cache_salt' must be a non-empty string if provided."
    if len(value) > 128 or any(c in _CACHE_SALT_FORBIDDEN for c in value):
        return (
            "Parameter 'cache_salt' must be at most 128 characters and must not contain '@', '/', '\\\\', "
            "or NUL."
        )
    return None


def check_generation_prompt(data: Any) -> None:
    """vLLM's ``check_generation_prompt`` of a raw chat-form body (before defaults apply): both
    ``continue_final_message`` and ``add_generation_prompt`` sent true is a 400 ``BadRequestError``."""
    if isinstance(data, dict) and data.get("continue_final_message") and data.get("add_generation_prompt"):
        raise RequestRefused("Cannot set both `continue_final_message` and `add_generation_prompt` to True.")


def priority_field() -> Any:
    """vLLM's ``priority``: any 64-bit integer, accepted and unused (vLLM's pooling and generative-scoring
    servers schedule first come, first served, and so does this one)."""
    return Field(
        default=0,
        ge=-(2**63),
        le=2**63 - 1,
        description="Accepted in vLLM's range and unused: requests are served first come, first served.",
    )


class CommonRequest(StrictModel):
    """vLLM 0.33's common pooling request fields (``PoolingBasicRequestMixin``)."""

    model: str | None = Field(
        default=None, description="Served model name or LoRA module name; default the base model."
    )
    user: str | None = Field(default=None, description="Accepted and ignored (vLLM's).")
    truncate_prompt_tokens: int | None = Field(
        default=None,
        ge=-1,
        description="Cut each prompt to k tokens (-1: max_model_len); which side: `truncation_side`.",
    )
    truncation_side: Literal["left", "right"] | None = Field(
        default=None,
        description="With truncate_prompt_tokens: 'left' keeps the last k tokens, 'right' the "
        "first k. Default 'right' (vLLM's); reward code reading the end asks for 'left'.",
    )
    padding: Literal["max_length", "do_not_pad"] | None = Field(
        default=None,
        description="'do_not_pad' (what the server does). 'max_length' is refused: pad tokens "
        "would change a causal reward model's scores.",
    )
    request_id: str | None = Field(
        default=None,
        max_length=256,
        description="Response id suffix (the X-Request-Id header wins, as in vLLM).",
    )
    priority: int = priority_field()
    mm_processor_kwargs: dict[str, Any] | None = Field(
        default=None, description="Only empty: this server scores text, it has no multimodal processor."
    )
    cache_salt: str | None = Field(
        default=None,
        description="Checked as vLLM does: cached prefixes are shared only between requests of the same salt.",
    )

    @model_validator(mode="before")
    @classmethod
    def _vllm_refusals(cls, data: Any) -> Any:
        # vLLM checks these before the schema, with VLLMValidationError (a 400 BadRequestError naming the field).
        if not isinstance(data, dict):
            return data
        salt_error = cache_salt_error(data.get("cache_salt"))
        if salt_error is not None:
            raise RequestRefused(salt_error, "cache_salt")
        if data.get("mm_processor_kwargs"):
            raise RequestRefused(
                "Per-request mm_processor_kwargs are refused: this server scores text only (it has "
                "no multimodal processor).",
                "mm_processor_kwargs",
            )
        check_generation_prompt(data)
        return data


class CompletionOrChatRequest(CommonRequest):
    """The prompts of ``/pooling``, ``/classify`` and ``/v1/embeddings``: vLLM's completion form (``input``) or
    its chat form (``messages`` and the chat options), one of them."""

    input: list[int] | list[list[int]] | str | list[str] | None = Field(
        default=None, description="Completion form: a string, strings, token ids, or lists of token ids."
    )
    messages: list[ChatMessage] | None = Field(
        default=None, description="Chat form: one conversation, rendered with the model's chat template."
    )
    add_special_tokens: bool | None = Field(
        default=None, description="Add BOS etc. Default true for `input`, false for `messages` (as vLLM)."
    )
    use_activation: bool | None = Field(
        default=None, description="Apply the task's activation (sigmoid/softmax)."
    )
    add_generation_prompt: bool = False
    continue_final_message: bool = False
    chat_template: str | None = Field(
        default=None,
        description="A Jinja chat template; refused unless the server runs with "
        "--trust-request-chat-template.",
    )
    chat_template_kwargs: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _one_form(self) -> CompletionOrChatRequest:
        if self.input is None and self.messages is None:
            raise ValueError("send one of `input` (completion form) or `messages` (chat form)")
        return self

    def chat_only_fields(self) -> list[str]:
        """Chat-form fields sent with ``input`` (vLLM ignores them there; refused here unless strict)."""
        if self.input is None:
            return []
        names = [n for n in ("chat_template", "chat_template_kwargs") if getattr(self, n) is not None]
        return names + [n for n in ("add_generation_prompt", "continue_final_message") if getattr(self, n)]


class EncodingRequest(CompletionOrChatRequest):
    """``encoding_format`` and its options (vLLM's ``EncodingRequestMixin``)."""

    encoding_format: EncodingFormat = Field(
        default="float",
        description="float (JSON numbers), base64 (each item's bytes), bytes (the binary body, "
        "item offsets in the `metadata` header) or bytes_only (no header).",
    )
    embed_dtype: EmbedDType = "float32"
    endianness: Endianness = "native"


# ---------------------------------------------------------------------------------------------- responses
def created_now() -> int:
    """A response's ``created``: the Unix time, in seconds."""
    return int(time.time())


def _is_none(value: Any) -> bool:
    return value is None


def absent_if_none(description: str | None = None) -> Any:
    """A field left out of the body (not sent as ``null``) when it is ``None``."""
    return Field(default=None, exclude_if=_is_none, description=description)


class ResponseModel(BaseModel):
    """Base of response models: what the routes build and the strict encoder serializes.

    Unknown fields are refused when a route builds a response, and the serialization schema (the one in
    ``/openapi.json``) marks every field the body always carries as required and forbids others, so a route
    cannot add or drop a field without the schema saying so. Fields made with ``absent_if_none`` are
    left out of the body when unset.
    """

    model_config = ConfigDict(extra="forbid", json_schema_serialization_defaults_required=True)


class UsageInfo(ResponseModel):
    """Token counts of a request (vLLM's ``UsageInfo``: the details are always ``null`` for pooling)."""

    prompt_tokens: int
    total_tokens: int
    completion_tokens: int = 0
    prompt_tokens_details: None = None
    completion_tokens_details: None = None


ItemT = TypeVar("ItemT", bound=ResponseModel)


class ScoredList(ResponseModel, Generic[ItemT]):
    """A scoring route's answer (vLLM's list shape): one ``data`` item per prompt, in request order.

    ``id`` is ``<prefix>-<request_id>`` (a random hex id without ``request_id``), e.g. ``pool-...``.
    """

    id: str
    object: str = "list"
    created: int = Field(default_factory=created_now)
    model: str
    data: list[ItemT]
    usage: UsageInfo


class ErrorInfo(ResponseModel):
    """The error itself (vLLM's ``ErrorInfo``)."""

    message: str
    type: str
    param: str | None = None
    code: int


class ErrorResponse(ResponseModel):
    """Every error (vLLM's shape ``{"error": {"message", "type", "param", "code"}}``); a route that does not
    exist answers FastAPI's ``{"detail": "Not Found"}`` instead, as vLLM does."""

    error: ErrorInfo


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse, "description": desc}
    for code, desc in (
        (400, "A client mistake; the message names the field and the limit."),
        (401, "Missing or wrong API key."),
        (
            404,
            "An unknown model or LoRA name in `model` (a route that does not exist answers "
            '{"detail": "Not Found"}).',
        ),
        (413, "Body over --max-body-bytes or more inputs than --max-client-batch-size."),
        (503, "Queue full or server draining; retry after the Retry-After header's seconds."),
    )
}
#: A 404 that is either an unknown ``model`` (``ErrorResponse``) or FastAPI's ``{"detail": "Not Found"}``: what a
#: route answers when the served model does not offer it (``/score`` on a reward model...), as vLLM's do.
NOT_OFFERED_RESPONSES: dict[int | str, dict[str, Any]] = {
    **ERROR_RESPONSES,
    404: {
        "description": 'An unknown `model` (ErrorResponse), or {"detail": "Not Found"} when the served '
        "model does not offer this route (as vLLM).",
        "content": {
            "application/json": {
                "schema": {
                    "anyOf": [
                        {"$ref": "#/components/schemas/ErrorResponse"},
                        {
                            "type": "object",
                            "title": "NotFound",
                            "properties": {"detail": {"type": "string"}},
                            "required": ["detail"],
                            "additionalProperties": False,
                        },
                    ]
                }
            }
        },
    },
}

__all__ = [
    "ERROR_RESPONSES",
    "NOT_OFFERED_RESPONSES",
    "ChatMessage",
    "CommonRequest",
    "CompletionOrChatRequest",
    "EmbedDType",
    "EncodingFormat",
    "EncodingRequest",
    "Endianness",
    "ErrorInfo",
    "ErrorResponse",
    "ParamValueError",
    "RequestRefused",
    "ResponseModel",
    "ScoredList",
    "StrictModel",
    "UsageInfo",
    "absent_if_none",
    "created_now",
    "cache_salt_error",
    "check_generation_prompt",
    "log_ignored_fields",
    "priority_field",
]
