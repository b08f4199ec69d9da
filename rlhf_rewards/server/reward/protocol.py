"""``POST /get_reward``'s request and response (OpenRLHF's remote reward model schema)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from rlhf_rewards.server.base.protocol import ResponseModel, absent_if_none


class GetRewardRequest(BaseModel):
    """``POST /get_reward`` (OpenRLHF's remote reward model schema). Unknown fields are ignored, as forks add some."""

    model_config = ConfigDict(extra="ignore", strict=True)

    query: list[str] = Field(min_length=1, description="Full texts (prompt + response, template applied).")
    prompts: list[str] | None = None
    labels: list[Any] | None = None


class GetRewardResponse(ResponseModel):
    """``/get_reward`` response (OpenRLHF's). A ``null`` reward has its reason in ``errors``."""

    rewards: list[float | None]
    scores: list[float | None]
    extra_logs: dict[str, Any] = Field(default_factory=dict)
    errors: dict[str, str] | None = absent_if_none("Extension: index -> why it has no reward.")


__all__ = ["GetRewardRequest", "GetRewardResponse"]
