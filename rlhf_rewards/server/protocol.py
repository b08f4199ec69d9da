"""Request and response schemas of the server (pydantic), following vLLM 0.33's where a route mirrors vLLM's.

Request models validate as vLLM's do (pydantic's lax mode: ``"2"`` is the integer 2, ``"yes"`` and ``1`` are
``true``; ``2.5`` is not an integer, ``"maybe"`` is not a boolean, NaN is never a number). Unknown fields are ignored with a logged warning naming them, as vLLM does (its
``OpenAIBaseModel``); vLLM's own fields are accepted, honoured where they apply, and refused with a 400
saying why where they cannot be. Fields marked *extension* are not in vLLM's schema.
"""

from __future__ import annotations

import dataclasses
import logging
import time
import typing
from builtins import float as builtins_float
from typing import Annotated, Any, Generic, Literal, TypeVar

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    create_model,
    field_validator,
    model_validator,
)

from rlhf_rewards.contract import ModelInfo
from rlhf_rewards.pooling.tasks import POOLING_TASKS

logger = logging.getLogger("rlhf_rewards.server")

_TASK_HINT = {
    "score": "classify",
    "reward": "classify (outcome reward models) or token_classify (token/process reward models)",
    "encode": "token_classify or token_embed",
    "embedding": "embed",
}
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
    """A schema error naming vLLM's ``param`` for it (the server's ``ParamError``; kept here, where the
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


#: Task names vLLM 0.32 refuses as removed (its ``_REMOVED_POOLING_TASK_MESSAGES``: a ``BadRequestError``).
_REMOVED_TASKS = {
    "score": "`score` task was removed; use `classify` instead.",
    "encode": "`encode` task was removed; use `token_embed` or `token_classify` instead.",
}


def _check_task(value: Any) -> Any:
    # plugin and embed&token_classify: vLLM's task names, refused by the route (no plugin, no combined task)
    if value is None or value in POOLING_TASKS or value in ("plugin", "embed&token_classify"):
        return value
    if isinstance(value, str) and value in _REMOVED_TASKS:
        raise RequestRefused(_REMOVED_TASKS[value], "task")
    hint = _TASK_HINT.get(str(value))
    suffix = f"; for {value!r} use {hint}" if hint else ""
    raise ValueError(f"{value!r} is not a pooling task; choose one of {list(POOLING_TASKS)}{suffix}")


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
    priority: int = Field(
        default=0,
        ge=-(2**63),
        le=2**63 - 1,
        description="Accepted and unused (as vLLM's pooling server): first come, first served.",
    )
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
        salt = data.get("cache_salt")
        if salt is not None:
            if not isinstance(salt, str) or not salt:
                raise RequestRefused(
                    "Parameter 'cache_salt' must be a non-empty string if provided.", "cache_salt"
                )
            if len(salt) > 128 or any(c in _CACHE_SALT_FORBIDDEN for c in salt):
                raise RequestRefused(
                    "Parameter 'cache_salt' must be at most 128 characters and must not contain "
                    "'@', '/', '\\\\', or NUL.",
                    "cache_salt",
                )
        if data.get("mm_processor_kwargs"):
            raise RequestRefused(
                "Per-request mm_processor_kwargs are refused: this server scores text only (it has "
                "no multimodal processor).",
                "mm_processor_kwargs",
            )
        if data.get("continue_final_message") and data.get("add_generation_prompt"):
            raise RequestRefused(
                "Cannot set both `continue_final_message` and `add_generation_prompt` to True."
            )
        return data


class ScoringRequest(CommonRequest):
    """Fields shared by ``/pooling``, ``/classify`` and ``/v1/embeddings``: one of ``input`` or ``messages``."""

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
    def _one_form(self) -> ScoringRequest:
        if self.input is None and self.messages is None:
            raise ValueError("send one of `input` (completion form) or `messages` (chat form)")
        return self

    def chat_only_fields(self) -> list[str]:
        """Chat-form fields sent with ``input`` (vLLM ignores them there; refused here unless strict)."""
        if self.input is None:
            return []
        names = [n for n in ("chat_template", "chat_template_kwargs") if getattr(self, n) is not None]
        return names + [n for n in ("add_generation_prompt", "continue_final_message") if getattr(self, n)]


class EncodingRequest(ScoringRequest):
    """``encoding_format`` and its options (vLLM's ``EncodingRequestMixin``)."""

    encoding_format: EncodingFormat = Field(
        default="float",
        description="float (JSON numbers), base64 (each item's bytes), bytes (the binary body, "
        "item offsets in the `metadata` header) or bytes_only (no header).",
    )
    embed_dtype: EmbedDType = "float32"
    endianness: Endianness = "native"


class PoolingRequest(EncodingRequest):
    """``POST /pooling`` (vLLM's completion and chat forms in one schema)."""

    task: str | None = Field(
        default=None,
        description="classify, token_classify, embed or token_embed; default: the model's reward task.",
    )
    dimensions: int | None = Field(
        default=None, gt=0, description="Extension. embed tasks: keep the first n dimensions."
    )
    normalize: bool | None = Field(default=None, description="Extension. embed tasks: L2-normalize.")
    step_tag_id: int | None = Field(
        default=None, ge=0, description="Extension. STEP pooling: keep rows of this token."
    )
    returned_token_ids: list[int] | None = Field(
        default=None, min_length=1, description="Extension. STEP pooling: keep these output columns."
    )
    return_details: bool = Field(
        default=False, description="Extension. Add `prompt_token_ids` and `shape` to each item."
    )

    @field_validator("task", mode="before")
    @classmethod
    def _task_name(cls, value: Any) -> Any:
        return _check_task(value)


class ClassifyRequest(ScoringRequest):
    """``POST /classify`` (vLLM's schema; verl's reward loop sends ``{"model", "input", "use_activation"}``)."""


class EmbeddingRequest(EncodingRequest):
    """``POST /v1/embeddings`` (OpenAI's and vLLM's). On a reward model it answers as SGLang's reward servers do:
    ``embedding`` is the raw score vector (``data[-1]["embedding"][-1]`` is the reward, as verl reads it)."""

    messages: list[ChatMessage] | list[list[ChatMessage]] | None = Field(
        default=None,
        description="One conversation, or several (vLLM's batched chat form); a conversation may "
        "also come in `input`.",
    )
    dimensions: int | None = Field(
        default=None, gt=0, description="Embedding models: keep the first n dimensions."
    )
    normalize: bool | None = Field(default=None, description="Extension. Embedding models: L2-normalize.")

    @model_validator(mode="before")
    @classmethod
    def _conversations_in_input(cls, data: Any) -> Any:
        # vLLM 0.33's EmbeddingChatInputRequest / EmbeddingBatchChatInputRequest: conversations sent in `input`.
        if not isinstance(data, dict) or "messages" in data or not isinstance(data.get("input"), list):
            return data
        value = data["input"]

        def is_message(m: Any) -> bool:
            return isinstance(m, dict) and isinstance(m.get("role"), str)

        one = bool(value) and all(is_message(m) for m in value)
        many = bool(value) and all(isinstance(c, list) and c and all(is_message(m) for m in c) for c in value)
        if one or many:
            data = {k: v for k, v in data.items() if k != "input"}
            data["messages"] = value
        return data

    late_chunking_params: dict[str, Any] | None = Field(
        default=None, description="vLLM's late chunking of token embeddings: refused (not supported here)."
    )

    @model_validator(mode="after")
    def _conversations_not_empty(self) -> EmbeddingRequest:
        if self.batched and not all(self.messages or []):
            raise ValueError("`messages` has an empty conversation: send at least one message in each")
        if self.late_chunking_params is not None:
            raise ValueError(
                "`late_chunking_params` is refused: this server has no late chunking (it returns "
                "one vector per token on token-embedding models; chunk them on the client)"
            )
        return self

    @property
    def batched(self) -> bool:
        """Whether ``messages`` holds several conversations."""
        return bool(self.messages) and isinstance(self.messages[0], list)


class CohereEmbedRequest(StrictModel):
    """``POST /v2/embed`` (Cohere's embed API as vLLM serves it), text inputs."""

    model: str | None = None
    input_type: str | None = Field(
        default=None, description="Accepted; this server has no task instructions."
    )
    texts: list[str] | None = None
    images: list[str] | None = Field(default=None, description="Refused: this server scores text only.")
    inputs: list[dict[str, Any]] | None = Field(
        default=None, description="Content lists; only text parts ({'type': 'text', 'text': ...})."
    )
    output_dimension: int | None = Field(default=None, gt=0)
    embedding_types: list[Literal["float", "binary", "ubinary", "base64"]] | None = None
    truncate: Literal["NONE", "START", "END"] = "END"
    max_tokens: int | None = Field(default=None, gt=0)
    priority: int = 0

    @model_validator(mode="after")
    def _one_input(self) -> CohereEmbedRequest:
        given = [f for f in (self.texts, self.images, self.inputs) if f is not None]
        if len(given) != 1 or not given[0]:
            raise ValueError(
                "Exactly one of texts, images, or inputs must be provided, and it must be non-empty"
            )
        if self.images is not None:
            raise ValueError("`images` are refused: this server scores text only")
        if self.priority != 0:
            raise ValueError("`priority` must be 0: this server does not schedule by priority")
        return self


ScoreInput = str | list[str]


class ScoreFields(CommonRequest):
    """Fields shared by ``/score`` and ``/rerank`` (vLLM's ``ScoringRequestMixin``)."""

    use_activation: bool | None = Field(default=None, description="Apply the sigmoid (default true).")
    max_tokens_per_query: int = Field(
        default=0, ge=0, description="Cut queries to this many tokens (0: no cut)."
    )
    max_tokens_per_doc: int = Field(
        default=0, ge=0, description="Cut documents to this many tokens (0: no cut)."
    )
    instruction: str | None = Field(
        default=None, description="Refused unless the server has a score template."
    )
    chat_template_kwargs: dict[str, Any] | None = Field(
        default=None, description="Refused unless the server has a score template."
    )


class ScoreRequest(ScoreFields):
    """``POST /score``: pairs 1:1, 1:N or N:N under any of vLLM's names (``queries``/``documents``,
    ``queries``/``items``, ``data_1``/``data_2``, ``text_1``/``text_2``)."""

    queries: ScoreInput | None = None
    documents: ScoreInput | None = None
    items: ScoreInput | None = None
    data_1: ScoreInput | None = None
    data_2: ScoreInput | None = None
    text_1: ScoreInput | None = None
    text_2: ScoreInput | None = None

    @model_validator(mode="after")
    def _one_pair(self) -> ScoreRequest:
        forms = [
            (a, b)
            for a, b in (
                ("queries", "documents"),
                ("queries", "items"),
                ("data_1", "data_2"),
                ("text_1", "text_2"),
            )
            if getattr(self, a) is not None and getattr(self, b) is not None
        ]
        if not forms:
            raise ParamValueError(
                "send `queries` and `documents` (or `queries`/`items`, `data_1`/`data_2`, `text_1`/`text_2`)",
                "body.documents",
            )  # vLLM's first missing field
        return self

    def pair(self) -> tuple[list[str], list[str]]:
        """``(data_1, data_2)`` as lists, from whichever names the request used."""
        for a, b in (
            ("queries", "documents"),
            ("queries", "items"),
            ("data_1", "data_2"),
            ("text_1", "text_2"),
        ):
            one, two = getattr(self, a), getattr(self, b)
            if one is not None and two is not None:
                return ([one] if isinstance(one, str) else list(one)), (
                    [two] if isinstance(two, str) else list(two)
                )
        raise AssertionError("validated by _one_pair")


class RerankRequest(ScoreFields):
    """``POST /rerank`` (Jina's and Cohere's rerank API as vLLM serves it)."""

    query: str
    documents: list[str] | str
    top_n: int = Field(default=0, ge=0, description="Keep the n best documents (0: all).")


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
    add_special_tokens: bool | None = Field(
        default=None, description="Default true for `prompt`, false for `messages`."
    )
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


class DetokenizeRequest(StrictModel):
    """``POST /detokenize`` (vLLM's)."""

    model: str | None = None
    tokens: list[Annotated[int, Field(ge=0, le=2**63 - 1)]] = Field(
        description="Token ids; ids outside the vocabulary decode to nothing, as vLLM's."
    )


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


class DetokenizeResponse(ResponseModel):
    """``/detokenize`` response (vLLM's)."""

    prompt: str


class VersionResponse(ResponseModel):
    """``/version`` response (vLLM's shape): this server's version (rlhf-rewards, not vLLM's)."""

    version: str


class TokenizeResponse(ResponseModel):
    """``/tokenize`` response (vLLM's)."""

    count: int
    max_model_len: int
    tokens: list[int]
    token_strs: list[str] | None = Field(default=None, description="With `return_token_strs`; else null.")


class ModelPermission(ResponseModel):
    """vLLM's (OpenAI's legacy) model permission entry."""

    id: str
    object: str = "model_permission"
    created: int = Field(default_factory=_now)
    allow_create_engine: bool = False
    allow_sampling: bool = True
    allow_logprobs: bool = True
    allow_search_indices: bool = False
    allow_view: bool = True
    allow_fine_tuning: bool = False
    organization: str = "*"
    group: str | None = None
    is_blocking: bool = False


class ModelCard(ResponseModel):
    """One entry of ``/v1/models`` (vLLM's fields)."""

    id: str
    object: str = "model"
    created: int = Field(default_factory=_now)
    owned_by: str = "rlhf-rewards"
    root: str | None = None
    parent: str | None = None
    max_model_len: int | None = None
    permission: list[ModelPermission] = Field(default_factory=list)


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
        "ModelInfoResponse",
        __base__=ResponseModel,
        __module__=__name__,
        __doc__="``/v1/model_info`` response: ``ModelInfo.to_dict()`` plus the server's ``server_limits``.",
        **fields,
        server_limits=(ServerLimitsInfo, ...),
    )


ModelInfoResponse = _model_info_response()


class HealthResponse(ResponseModel):
    """``/health`` response: ``ok`` (with the model and the queue depth), ``draining`` or ``engine stopped``."""

    status: str
    model: str | None = _absent_if_none()
    queue_depth: int | None = _absent_if_none("Prompts waiting for the engine.")


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


class EmbeddingResponseData(ResponseModel):
    """One embedded prompt (``null`` with ``error`` set when the model produced NaN/inf)."""

    index: int
    object: str = "embedding"
    embedding: list[float] | list[list[float]] | str | None = Field(
        description="A vector; one vector per token on a token-embedding model (vLLM's TokenEmbeddingResponse); "
        "base64 with encoding_format base64; null with `error`."
    )
    error: str | None = _absent_if_none("Extension: why this item has no result.")


class EmbeddingResponse(ScoredList[EmbeddingResponseData]):
    """``/v1/embeddings`` response (OpenAI's and vLLM's)."""


class CohereApiVersion(ResponseModel):
    """Cohere's API version block."""

    version: str = "2"


class CohereBilledUnits(ResponseModel):
    """Cohere's token counts."""

    input_tokens: int
    image_tokens: int = 0


class CohereMeta(ResponseModel):
    """Cohere's ``meta`` block."""

    api_version: CohereApiVersion = Field(default_factory=CohereApiVersion)
    billed_units: CohereBilledUnits


class CohereEmbeddings(ResponseModel):
    """Embeddings by requested type (only the requested types are present)."""

    float: list[list[builtins_float]] | None = _absent_if_none()
    binary: list[list[int]] | None = _absent_if_none()
    ubinary: list[list[int]] | None = _absent_if_none()
    base64: list[str] | None = _absent_if_none()


class CohereEmbedResponse(ResponseModel):
    """``/v2/embed`` response (Cohere's)."""

    id: str
    embeddings: CohereEmbeddings
    texts: list[str] | None = _absent_if_none()
    meta: CohereMeta
    response_type: str = "embeddings_by_type"


class ScoreResponseData(ResponseModel):
    """One scored pair; ``score`` is ``null`` with ``error`` set when the model produced NaN/inf."""

    index: int
    object: str = "score"
    score: float | None
    error: str | None = _absent_if_none("Extension: why this pair has no score.")


class ScoreResponse(ScoredList[ScoreResponseData]):
    """``/score`` response (vLLM's)."""


class RerankDocument(ResponseModel):
    """The document a rerank result is about (``multi_modal`` always null: text-only server, vLLM's field)."""

    text: str
    multi_modal: None = None


class RerankResult(ResponseModel):
    """One reranked document (best first); NaN scores sort last with ``relevance_score`` ``null``."""

    index: int
    document: RerankDocument
    relevance_score: float | None
    error: str | None = _absent_if_none("Extension: why this document has no score.")


class RerankUsage(ResponseModel):
    """Token counts of a rerank request."""

    prompt_tokens: int
    total_tokens: int


class RerankResponse(ResponseModel):
    """``/rerank`` response (vLLM's, Jina's)."""

    id: str
    model: str
    usage: RerankUsage
    results: list[RerankResult]


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
    "NOT_OFFERED_RESPONSES",
    "log_ignored_fields",
    "ERROR_RESPONSES",
    "ChatMessage",
    "ClassificationData",
    "ClassificationResponse",
    "ClassifyRequest",
    "CohereEmbedRequest",
    "DetokenizeRequest",
    "DetokenizeResponse",
    "ParamValueError",
    "RequestRefused",
    "VersionResponse",
    "CohereEmbedResponse",
    "CommonRequest",
    "EmbeddingRequest",
    "EmbeddingResponse",
    "EmbeddingResponseData",
    "EncodingRequest",
    "ErrorInfo",
    "ErrorResponse",
    "ModelPermission",
    "RerankRequest",
    "RerankResponse",
    "RerankResult",
    "ScoreRequest",
    "ScoreResponse",
    "ScoreResponseData",
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
