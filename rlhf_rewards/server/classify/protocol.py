"""``POST /classify``'s request and response (vLLM's classification API)."""

from __future__ import annotations

from rlhf_rewards.server.base.protocol import (
    CompletionOrChatRequest,
    ResponseModel,
    ScoredList,
    absent_if_none,
)


class ClassifyRequest(CompletionOrChatRequest):
    """``POST /classify`` (vLLM's schema; verl's reward loop sends ``{"model", "input", "use_activation"}``)."""


class ClassificationData(ResponseModel):
    """One classified prompt; ``probs`` is ``null`` and ``error`` set when the model produced NaN/inf."""

    index: int
    label: str | None
    probs: list[float] | None
    num_classes: int
    error: str | None = absent_if_none("Extension: why this item has no result.")


class ClassificationResponse(ScoredList[ClassificationData]):
    """``/classify`` response (vLLM's)."""


__all__ = ["ClassificationData", "ClassificationResponse", "ClassifyRequest"]
