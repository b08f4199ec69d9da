"""What a reward function's ``source`` becomes: the worker it scores with, and its default name."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from rlhf_rewards.contract import ModelInfo
from rlhf_rewards.reward.config import RewardFunctionConfig
from rlhf_rewards.workers.base import RewardWorker


def make_worker(source: Any, config: RewardFunctionConfig) -> tuple[RewardWorker, bool]:
    """The worker for ``source`` and whether the function owns it (and so closes it).

    ``source`` is a :class:`~rlhf_rewards.workers.base.RewardWorker` (used as it is), an
    :class:`~rlhf_rewards.LLM` (wrapped in a colocated worker) or a model path / hub id (loaded with
    ``config.llm_kwargs``, LoRA enabled when ``config.lora`` is set).
    """
    if isinstance(source, RewardWorker):
        if config.llm_kwargs:
            raise ValueError("llm_kwargs only apply when the source is a model path or id, not a worker.")
        return source, False
    from rlhf_rewards.entrypoints.llm import LLM
    from rlhf_rewards.workers.colocated import ColocatedWorker

    if isinstance(source, LLM):
        if config.llm_kwargs:
            raise ValueError("llm_kwargs only apply when the source is a model path or id, not an LLM.")
        return ColocatedWorker(source), False
    if isinstance(source, (str, os.PathLike)) and str(source):
        kwargs = dict(config.llm_kwargs)
        if config.lora is not None:
            kwargs.setdefault("enable_lora", True)
        return ColocatedWorker(str(source), **kwargs), True
    raise TypeError(
        f"source must be a model path or hub id, an rlhf_rewards.LLM or a RewardWorker, got {type(source).__name__}."
    )


def source_recipe(source: Any) -> tuple[str, Any]:
    """How a reward function built from ``source`` comes back in another process (when it is pickled):

    - ``("path", model)``: a model path or hub id, reloaded (lazily, on the first call) in the new process;
    - ``("worker", worker)``: a worker that pickles itself and reconnects there (``RemoteWorker`` to its
      URLs, ``RayWorkerPool`` to its Ray cluster and replicas);
    - ``("in_memory", description)``: an ``LLM`` or a colocated worker around one, which cannot move to
      another process.
    """
    if isinstance(source, (str, os.PathLike)) and str(source):
        return "path", os.fspath(source)
    from rlhf_rewards.workers.colocated import ColocatedWorker

    if isinstance(source, ColocatedWorker):
        return "in_memory", "a ColocatedWorker (its LLM lives in this process)"
    if isinstance(source, RewardWorker):
        return "worker", source
    return "in_memory", f"an in-memory {type(source).__name__}"


def default_name(info: ModelInfo, config: RewardFunctionConfig) -> str:
    """The adapter's name when ``config.lora`` is set, else the last path component of the model's name."""
    if config.lora is not None:
        return config.lora.lora_name  # type: ignore[union-attr]
    return Path(info.model.rstrip("/")).name or info.model


__all__ = ["default_name", "make_worker", "source_recipe"]
