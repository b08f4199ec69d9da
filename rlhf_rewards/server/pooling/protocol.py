"""``POST /pooling``'s request and response (vLLM's ``PoolingRequest``, its completion and chat forms in one schema)."""

from __future__ import annotations

from typing import Any

from pydantic import Field, field_validator

from rlhf_rewards.pooling.tasks import POOLING_TASKS
from rlhf_rewards.server.base.protocol import (
    EncodingRequest,
    RequestRefused,
    ResponseModel,
    ScoredList,
    absent_if_none,
)

_TASK_HINT = {
    "score": "classify",
    "reward": "classify (outcome reward models) or token_classify (token/process reward models)",
    "encode": "token_classify or token_embed",
    "embedding": "embed",
}

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


class PoolingResponseData(ResponseModel):
    """One pooled prompt. ``data`` is ``null`` and ``error`` is set when the model produced NaN/inf."""

    index: int
    object: str = "pooling"
    data: list[list[float]] | list[float] | str | None
    error: str | None = absent_if_none("Extension: why this item has no result.")
    prompt_token_ids: list[int] | None = absent_if_none("Extension (return_details).")
    shape: list[int] | None = absent_if_none("Extension (return_details).")


class PoolingResponse(ScoredList[PoolingResponseData]):
    """``/pooling`` response."""


__all__ = ["PoolingRequest", "PoolingResponse", "PoolingResponseData"]
