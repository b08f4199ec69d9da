"""Request and response schemas of the server (pydantic), following vLLM's where a route mirrors vLLM's.

Request models are strict: a wrong type is an error naming the field (``"1"`` is not an integer, ``1`` is not
a boolean) and an unknown field is an error too, so a typo such as ``use_activaton`` never passes silently.
Fields marked *extension* are not in vLLM's schema; they expose the engine's own ``PoolingParams``.
"""

from __future__ import annotations

import dataclasses
import time
import typing
from typing import Any, Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, create_model, field_validator, model_validator

from rlhf_rewards.contract import ModelInfo
from rlhf_rewards.pooling.tasks import POOLING_TASKS

_TASK_HINT = {
    "score": "classify",
    "reward": "classify (outcome reward models) or token_classify (token/process reward models)",
    "encode": "token_classify or token_embed",
    "embedding": "embed",
}


class StrictModel(BaseModel):
    """Base of request models: strict types, unknown fields rejected."""

    model_config = ConfigDict(extra="forbid", strict=True)


class ChatMessage(BaseModel):
    """One chat message (OpenAI format). Text content parts are joined with newlines, as vLLM does."""

    model_config = ConfigDict(extra="allow", strict=True)

    role: str = Field(min_length=1)
    content: str | list[dict[str, Any]] | None = None

    @field_validator("content")
    @classmethod
    def _text_parts(cls, value: Any) -> Any:
        if isinstance(value, list):
            texts = []
            for i, part in enumerate(value):
                if part.get("type") != "text" or not isinstance(part.get("text"), str):
                    raise ValueError(f"content[{i}] must be a text part {{'type': 'text', 'text': str}}; "
                                     "this server scores text only")
                texts.append(part["text"])
            return "\n".join(texts)
        return value

    def as_dict(self) -> dict[str, Any]:
        """The message as the chat template receives it."""
        return self.model_dump(exclude_none=True)


def _check_input(value: Any) -> Any:
    """``input`` must be a string, a list of strings, a list of ints or a list of lists of ints."""
    expected = "a string, a list of strings, a list of token ids or a list of lists of token ids"
    if isinstance(value, str):
        return value
    if not isinstance(value, list):
        raise ValueError(f"must be {expected}, got {type(value).__name__}")
    if not value:
        raise ValueError("is empty: send at least one prompt")
    if all(isinstance(v, str) for v in value):
        return value
    if all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        return value
    if all(isinstance(v, list) for v in value):
        for i, row in enumerate(value):
            if not all(isinstance(t, int) and not isinstance(t, bool) for t in row):
                raise ValueError(f"[{i}] must be a list of integer token ids")
        return value
    kinds = sorted({type(v).__name__ for v in value})
    what = f"a list of {kinds[0]}" if len(kinds) == 1 else f"a list mixing {kinds}"
    raise ValueError(f"must be {expected}; got {what}")


def _check_task(value: Any) -> Any:
    if value is None or value in POOLING_TASKS:
        return value
    hint = _TASK_HINT.get(str(value))
    suffix = f"; for {value!r} use {hint}" if hint else ""
    raise ValueError(f"{value!r} is not a pooling task; choose one of {list(POOLING_TASKS)}{suffix}")


class ScoringRequest(StrictModel):
    """Fields shared by ``/pooling`` and ``/classify``: one of ``input`` or ``messages``, plus options."""

    model: str | None = Field(default=None, description="Served model name or LoRA module name; default the base model.")
    input: str | list[str] | list[int] | list[list[int]] | None = Field(
        default=None, description="Completion form: a string, strings, token ids, or lists of token ids.")
    messages: list[ChatMessage] | None = Field(
        default=None, description="Chat form: one conversation, rendered with the model's chat template.")
    truncate_prompt_tokens: int | None = Field(
        default=None, ge=-1, description="Keep the last k tokens of each prompt (-1: max_model_len).")
    add_special_tokens: bool | None = Field(
        default=None, description="Add BOS etc. Default true for `input`, false for `messages` (as vLLM).")
    use_activation: bool | None = Field(default=None, description="Apply sigmoid/softmax (classify tasks).")
    add_generation_prompt: bool = False
    continue_final_message: bool = False
    chat_template: str | None = Field(
        default=None, description="A Jinja chat template; refused unless the server runs with "
                                  "--trust-request-chat-template.")
    chat_template_kwargs: dict[str, Any] | None = None
    user: str | None = None
    request_id: str | None = Field(default=None, max_length=256)
    priority: int = Field(default=0, description="Only 0: this server schedules first come, first served.")

    @field_validator("input", mode="before")
    @classmethod
    def _input_shape(cls, value: Any) -> Any:
        return value if value is None else _check_input(value)

    @model_validator(mode="after")
    def _one_form(self) -> ScoringRequest:
        if (self.input is None) == (self.messages is None):
            raise ValueError("send exactly one of `input` (completion form) or `messages` (chat form)")
        if self.messages is not None and not self.messages:
            raise ValueError("`messages` is empty: send at least one message")
        if self.continue_final_message and self.add_generation_prompt:
            raise ValueError("`continue_final_message` and `add_generation_prompt` cannot both be true")
        if self.input is not None:
            chat_only = [n for n in ("chat_template", "chat_template_kwargs") if getattr(self, n) is not None]
            chat_only += [n for n in ("add_generation_prompt", "continue_final_message") if getattr(self, n)]
            if chat_only:
                raise ValueError(f"{chat_only} only apply to the chat form (`messages`), not to `input`")
        if self.priority != 0:
            raise ValueError("`priority` must be 0: this server does not schedule by priority")
        return self


class PoolingRequest(ScoringRequest):
    """``POST /pooling`` (vLLM's completion and chat forms in one schema)."""

    task: str | None = Field(
        default=None, description="classify, token_classify, embed or token_embed; default: the model's reward task.")
    encoding_format: Literal["float", "base64"] = "float"
    embed_dtype: Literal["float32", "float16", "bfloat16"] = "float32"
    endianness: Literal["native", "little", "big"] = "native"
    dimensions: int | None = Field(default=None, gt=0, description="embed tasks: keep the first n dimensions.")
    normalize: bool | None = Field(default=None, description="Extension. embed tasks: L2-normalize.")
    step_tag_id: int | None = Field(default=None, ge=0, description="Extension. STEP pooling: keep rows of this token.")
    returned_token_ids: list[int] | None = Field(
        default=None, min_length=1, description="Extension. STEP pooling: keep these output columns.")
    return_details: bool = Field(
        default=False, description="Extension. Add `prompt_token_ids` and `shape` to each item.")

    @field_validator("task", mode="before")
    @classmethod
    def _task_name(cls, value: Any) -> Any:
        return _check_task(value)


class ClassifyRequest(ScoringRequest):
    """``POST /classify`` (vLLM's schema; verl's reward loop sends ``{"model", "input", "use_activation"}``)."""


class GetRewardRequest(BaseModel):
    """``POST /get_reward`` (OpenRLHF's remote reward model schema). Unknown fields are ignored, as forks add some."""

    model_config = ConfigDict(extra="ignore", strict=True)

    query: list[str] = Field(min_length=1, description="Full texts (prompt + response, template applied).")
    prompts: list[str] | None = None
    labels: list[Any] | None = None


class TokenizeRequest(StrictModel):
    """``POST /tokenize`` (vLLM's): ``prompt`` or ``messages``."""

    model: str | None = None
    prompt: str | None = None
    messages: list[ChatMessage] | None = None
    add_special_tokens: bool | None = Field(default=None, description="Default true for `prompt`, false for `messages`.")
    add_generation_prompt: bool = Field(default=True, description="Chat form only; vLLM's default is true.")
    continue_final_message: bool = False
    chat_template: str | None = None
    chat_template_kwargs: dict[str, Any] | None = None
    return_token_strs: bool = False

    @model_validator(mode="after")
    def _one_form(self) -> TokenizeRequest:
        if (self.prompt is None) == (self.messages is None):
            raise ValueError("send exactly one of `prompt` or `messages`")
        if self.messages is not None and not self.messages:
            raise ValueError("`messages` is empty: send at least one message")
        if self.continue_final_message and self.add_generation_prompt and self.messages is not None:
            raise ValueError("`continue_final_message` and `add_generation_prompt` cannot both be true")
        return self


# ---------------------------------------------------------------------------------------------- responses
def _now() -> int:
    return int(time.time())


def _is_none(value: Any) -> bool:
    return value is None


def _absent_if_none(description: str | None = None) -> Any:
    """A field left out of the body (not sent as ``null``) when it is ``None``."""
    return Field(default=None, exclude_if=_is_none, description=description)


class ResponseModel(BaseModel):
    """Base of response models: what the routes build and the strict encoder serializes.

    Unknown fields are refused when a route builds a response, and the serialization schema (the one in
    ``/openapi.json``) marks every field the body always carries as required and forbids others, so a route
    cannot add or drop a field without the schema saying so. Fields made with ``_absent_if_none`` are
    left out of the body when unset.
    """

    model_config = ConfigDict(extra="forbid", json_schema_serialization_defaults_required=True)


class UsageInfo(ResponseModel):
    """Token counts of a request."""

    prompt_tokens: int
    total_tokens: int
    completion_tokens: int = 0


ItemT = TypeVar("ItemT", bound=ResponseModel)


class ScoredList(ResponseModel, Generic[ItemT]):
    """A scoring route's answer (vLLM's list shape): one ``data`` item per prompt, in request order.

    ``id`` is ``<prefix>-<request_id>`` (a random hex id without ``request_id``), e.g. ``pool-...``.
    """

    id: str
    object: str = "list"
    created: int = Field(default_factory=_now)
    model: str
    data: list[ItemT]
    usage: UsageInfo


class PoolingResponseData(ResponseModel):
    """One pooled prompt. ``data`` is ``null`` and ``error`` is set when the model produced NaN/inf."""

    index: int
    object: str = "pooling"
    data: list[list[float]] | list[float] | str | None
    error: str | None = _absent_if_none("Extension: why this item has no result.")
    prompt_token_ids: list[int] | None = _absent_if_none("Extension (return_details).")
    shape: list[int] | None = _absent_if_none("Extension (return_details).")


class PoolingResponse(ScoredList[PoolingResponseData]):
    """``/pooling`` response."""


class ClassificationData(ResponseModel):
    """One classified prompt; ``probs`` is ``null`` and ``error`` set when the model produced NaN/inf."""

    index: int
    label: str | None
    probs: list[float] | None
    num_classes: int
    error: str | None = _absent_if_none("Extension: why this item has no result.")


class ClassificationResponse(ScoredList[ClassificationData]):
    """``/classify`` response (vLLM's)."""


class GetRewardResponse(ResponseModel):
    """``/get_reward`` response (OpenRLHF's). A ``null`` reward has its reason in ``errors``."""

    rewards: list[float | None]
    scores: list[float | None]
    extra_logs: dict[str, Any] = Field(default_factory=dict)
    errors: dict[str, str] | None = _absent_if_none("Extension: index -> why it has no reward.")


class TokenizeResponse(ResponseModel):
    """``/tokenize`` response (vLLM's)."""

    count: int
    max_model_len: int
    tokens: list[int]
    token_strs: list[str] | None = _absent_if_none("Sent with `return_token_strs`.")


class ModelCard(ResponseModel):
    """One entry of ``/v1/models``."""

    id: str
    object: str = "model"
    created: int = Field(default_factory=_now)
    owned_by: str = "rlhf-rewards"
    root: str | None = None
    parent: str | None = None
    max_model_len: int | None = None


class ModelList(ResponseModel):
    """``/v1/models`` response."""

    object: str = "list"
    data: list[ModelCard]


class ServerLimitsInfo(ResponseModel):
    """The request limits a client must respect (``ServerLimits.to_dict()``)."""

    max_body_bytes: int
    max_client_batch_size: int
    max_queue_size: int


def _model_info_response() -> type[ResponseModel]:
    # The fields are ModelInfo's own (one definition: a field added there appears here and in the schema).
    hints = typing.get_type_hints(ModelInfo)
    fields: dict[str, Any] = {}
    for f in dataclasses.fields(ModelInfo):
        if f.default is not dataclasses.MISSING:
            fields[f.name] = (hints[f.name], f.default)
        elif f.default_factory is not dataclasses.MISSING:
            fields[f.name] = (hints[f.name], Field(default_factory=f.default_factory))
        else:
            fields[f.name] = (hints[f.name], ...)
    return create_model(
        "ModelInfoResponse", __base__=ResponseModel, __module__=__name__,
        __doc__="``/v1/model_info`` response: ``ModelInfo.to_dict()`` plus the server's ``server_limits``.",
        **fields, server_limits=(ServerLimitsInfo, ...))


ModelInfoResponse = _model_info_response()


class HealthResponse(ResponseModel):
    """``/health`` response: ``ok`` (with the model and the queue depth), ``draining`` or ``engine stopped``."""

    status: str
    model: str | None = _absent_if_none()
    queue_depth: int | None = _absent_if_none("Prompts waiting for the engine.")


class ErrorResponse(ResponseModel):
    """Every error (vLLM's shape)."""

    object: str = "error"
    message: str
    type: str
    param: str | None = None
    code: int


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse, "description": desc}
    for code, desc in (
        (400, "A client mistake (including an unknown model or LoRA name); the message names the field and the limit."),
        (401, "Missing or wrong API key."),
        (404, "Unknown route."),
        (413, "Body over --max-body-bytes or more inputs than --max-client-batch-size."),
        (503, "Queue full or server draining; retry after the Retry-After header's seconds."),
    )
}

__all__ = [
    "ERROR_RESPONSES",
    "ChatMessage",
    "ClassificationData",
    "ClassificationResponse",
    "ClassifyRequest",
    "ErrorResponse",
    "GetRewardRequest",
    "GetRewardResponse",
    "HealthResponse",
    "ModelCard",
    "ModelInfoResponse",
    "ModelList",
    "PoolingRequest",
    "PoolingResponse",
    "PoolingResponseData",
    "ResponseModel",
    "ScoredList",
    "ScoringRequest",
    "ServerLimitsInfo",
    "TokenizeRequest",
    "TokenizeResponse",
    "UsageInfo",
]
