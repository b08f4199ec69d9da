"""The system routes' answers: health (``/health``, SageMaker's ``/ping``), the model list (``/v1/models``), the
served model's description (``/v1/model_info``) and the server's version (``/version``)."""

from __future__ import annotations

import time
import uuid

from fastapi.responses import Response

from rlhf_rewards.server.base.api_utils import json_response
from rlhf_rewards.server.base.serving import ServedModel
from rlhf_rewards.server.system.protocol import (
    ModelCard,
    ModelInfoResponse,
    ModelList,
    ModelPermission,
    VersionResponse,
)


def health(served: ServedModel) -> Response:
    """200 when the server takes requests; 503 while it drains for shutdown (``Retry-After``) or if its batching
    loop stopped. The body is empty, as vLLM's."""
    if served.draining:
        return Response(status_code=503, headers={"Retry-After": "1"})
    if not served.batcher.alive:
        return Response(status_code=503)
    return Response(status_code=200)


def model_list(served: ServedModel) -> Response:
    """One card per served model name (``--served-model-name`` aliases, the first is the one reported) and
    one per LoRA module (``--lora-modules``), as vLLM lists them. ``root`` is the model as the server was
    started with it; a LoRA card's ``root`` is its name (adapter paths never leave the server)."""
    created = int(time.time())
    max_len = served.llm.max_model_len
    root = str(served.llm.model_name)
    cards = [
        ModelCard(
            id=alias,
            created=created,
            root=root,
            parent=None,
            max_model_len=max_len,
            permission=_permission(created),
        )
        for alias in served.served_model_names
    ]
    cards += [
        ModelCard(
            id=name,
            created=created,
            root=name,
            parent=served.model_name,
            max_model_len=max_len,
            permission=_permission(created),
        )
        for name in served.lora_names
    ]
    return json_response(ModelList(data=cards))


def _permission(created: int) -> list[ModelPermission]:
    return [ModelPermission(id=f"modelperm-{uuid.uuid4().hex}", created=created)]


def model_info(served: ServedModel) -> Response:
    """``ModelInfo.to_dict()`` of the served model (what ``RemoteWorker.model_info()`` returns), plus the
    server's request limits under ``server_limits``."""
    return json_response(ModelInfoResponse(**served.info.to_dict(), server_limits=served.limits.to_dict()))


def version() -> Response:
    """This server's version (vLLM's route and shape; the number is rlhf-rewards', not a vLLM release)."""
    from rlhf_rewards import __version__

    return json_response(VersionResponse(version=__version__))


__all__ = ["health", "model_info", "model_list", "version"]
