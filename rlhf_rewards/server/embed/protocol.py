"""The embedding routes' requests and responses: ``POST /v1/embeddings`` (OpenAI's and vLLM's) and ``POST
/v2/embed`` (Cohere's, as vLLM serves it)."""

from __future__ import annotations

from builtins import float as builtins_float
from typing import Any, Literal

from pydantic import Field, model_validator

from rlhf_rewards.server.base.protocol import (
    ChatMessage,
    EncodingRequest,
    ResponseModel,
    ScoredList,
    StrictModel,
    absent_if_none,
)


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


class EmbeddingResponseData(ResponseModel):
    """One embedded prompt (``null`` with ``error`` set when the model produced NaN/inf)."""

    index: int
    object: str = "embedding"
    embedding: list[float] | list[list[float]] | str | None = Field(
        description="A vector; one vector per token on a token-embedding model (vLLM's TokenEmbeddingResponse); "
        "base64 with encoding_format base64; null with `error`."
    )
    error: str | None = absent_if_none("Extension: why this item has no result.")


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

    float: list[list[builtins_float]] | None = absent_if_none()
    binary: list[list[int]] | None = absent_if_none()
    ubinary: list[list[int]] | None = absent_if_none()
    base64: list[str] | None = absent_if_none()


class CohereEmbedResponse(ResponseModel):
    """``/v2/embed`` response (Cohere's)."""

    id: str
    embeddings: CohereEmbeddings
    texts: list[str] | None = absent_if_none()
    meta: CohereMeta
    response_type: str = "embeddings_by_type"


__all__ = [
    "CohereApiVersion",
    "CohereBilledUnits",
    "CohereEmbedRequest",
    "CohereEmbedResponse",
    "CohereEmbeddings",
    "CohereMeta",
    "EmbeddingRequest",
    "EmbeddingResponse",
    "EmbeddingResponseData",
]
