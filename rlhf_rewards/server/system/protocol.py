"""The system routes' responses: ``/v1/models``, ``/v1/model_info`` and ``/version``."""

from __future__ import annotations

import dataclasses
import typing
from typing import Any

from pydantic import Field, create_model

from rlhf_rewards.contract import ModelInfo
from rlhf_rewards.server.base.protocol import ResponseModel, created_now


class VersionResponse(ResponseModel):
    """``/version`` response (vLLM's shape): this server's version (rlhf-rewards, not vLLM's)."""

    version: str


class ModelPermission(ResponseModel):
    """vLLM's (OpenAI's legacy) model permission entry."""

    id: str
    object: str = "model_permission"
    created: int = Field(default_factory=created_now)
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
    created: int = Field(default_factory=created_now)
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


__all__ = [
    "ModelCard",
    "ModelInfoResponse",
    "ModelList",
    "ModelPermission",
    "ServerLimitsInfo",
    "VersionResponse",
]
