"""``POST /score`` and ``/rerank``'s requests and responses (vLLM's Score API, and Jina's and Cohere's rerank
API as vLLM serves it)."""

from __future__ import annotations

from typing import Any

from pydantic import Field, model_validator

from rlhf_rewards.server.base.protocol import (
    CommonRequest,
    ParamValueError,
    ResponseModel,
    ScoredList,
    absent_if_none,
)

ScoreInput = str | list[str]
#: The names a ``/score`` request may give its two sides, in the order they are looked for (vLLM's four forms).
PAIR_NAMES = (("queries", "documents"), ("queries", "items"), ("data_1", "data_2"), ("text_1", "text_2"))


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
        if self._named_pair() is None:
            raise ParamValueError(
                "send `queries` and `documents` (or `queries`/`items`, `data_1`/`data_2`, `text_1`/`text_2`)",
                "body.documents",
            )  # vLLM's first missing field
        return self

    def _named_pair(self) -> tuple[ScoreInput, ScoreInput] | None:
        """The first of :data:`PAIR_NAMES` the request sent both of, or ``None``."""
        for a, b in PAIR_NAMES:
            one, two = getattr(self, a), getattr(self, b)
            if one is not None and two is not None:
                return one, two
        return None

    def pair(self) -> tuple[list[str], list[str]]:
        """``(data_1, data_2)`` as lists, from whichever names the request used."""
        named = self._named_pair()
        if named is None:
            raise AssertionError("validated by _one_pair")
        one, two = named
        return ([one] if isinstance(one, str) else list(one)), ([two] if isinstance(two, str) else list(two))


class RerankRequest(ScoreFields):
    """``POST /rerank`` (Jina's and Cohere's rerank API as vLLM serves it)."""

    query: str
    documents: list[str] | str
    top_n: int = Field(default=0, ge=0, description="Keep the n best documents (0: all).")


class ScoreResponseData(ResponseModel):
    """One scored pair; ``score`` is ``null`` with ``error`` set when the model produced NaN/inf."""

    index: int
    object: str = "score"
    score: float | None
    error: str | None = absent_if_none("Extension: why this pair has no score.")


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
    error: str | None = absent_if_none("Extension: why this document has no score.")


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


__all__ = [
    "PAIR_NAMES",
    "RerankDocument",
    "RerankRequest",
    "RerankResponse",
    "RerankResult",
    "RerankUsage",
    "ScoreFields",
    "ScoreRequest",
    "ScoreResponse",
    "ScoreResponseData",
]
