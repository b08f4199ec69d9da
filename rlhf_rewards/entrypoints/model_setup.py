"""What ``LLM`` resolves once, when it is built: each task's pooler config, the length limit, and vLLM's
removed ``task=`` engine argument."""

from __future__ import annotations

import dataclasses
import warnings
from typing import Any

from rlhf_rewards.entrypoints.engine_args import IgnoredEngineArgWarning
from rlhf_rewards.models.registry import ModelSpec
from rlhf_rewards.pooling import PoolerConfig
from rlhf_rewards.pooling.step import VLLM_DEFAULT_STEP_TAG_IDS, default_step_tag_id, user_config_for_task
from rlhf_rewards.pooling.tasks import POOLING_TASKS, REMOVED_POOLING_TASKS


def task_configs(
    spec: ModelSpec, user_config: PoolerConfig, tokenizer: Any, *, strict_vllm_compat: bool
) -> dict[str, PoolerConfig]:
    """The effective pooler config of each task ``spec``'s model supports: the user's fields merged over the
    architecture's defaults, with the step tag resolved (the STEP rules live in :mod:`rlhf_rewards.pooling.step`)."""
    defaults = spec.task_defaults
    configs: dict[str, PoolerConfig] = {}
    for task, default in defaults.items():
        config = user_config_for_task(user_config, task, defaults).merged_over(default).for_task(task)
        vllm_tag = VLLM_DEFAULT_STEP_TAG_IDS.get(spec.architecture)
        if strict_vllm_compat and config.is_step and config.step_tag_id is None and vllm_tag is not None:
            config.step_tag_id = vllm_tag  # vLLM's fixed id, whatever the tokenizer
        else:
            config.step_tag_id = default_step_tag_id(
                config, spec.default_step_tag, tokenizer, spec.architecture
            )
        configs[task] = config
    return configs


def vllm_supported_tasks(spec: ModelSpec) -> tuple[str, ...]:
    """The tasks vLLM 0.32's pooler lists for ``spec``'s model: a classifier or reward model has no embedding
    tasks there (its ``embed``/``token_embed`` here are this library's extension)."""
    if spec.kind == "embedding":
        return spec.tasks
    return tuple(t for t in spec.tasks if t not in ("embed", "token_embed")) or spec.tasks


def resolve_max_model_len(model_config: Any, requested: int | None) -> int:
    """``requested``, checked against the model's ``max_position_embeddings`` (its default when unset)."""
    text_config = model_config.get_text_config() if hasattr(model_config, "get_text_config") else model_config
    limit = getattr(text_config, "max_position_embeddings", None)
    if requested is None:
        return int(limit) if limit else 8192
    if limit and requested > limit:
        raise ValueError(f"max_model_len={requested} is over the model's max_position_embeddings={limit}.")
    return requested


def pooler_config_with_task(config: PoolerConfig, task: Any) -> PoolerConfig:
    """Old vLLM's ``LLM(task=...)`` engine argument, as the ``PoolerConfig.task`` it became (one warning)."""
    if task is None or task == "auto":
        return config
    if task in REMOVED_POOLING_TASKS or task not in POOLING_TASKS:
        hint = REMOVED_POOLING_TASKS.get(task, f"{task!r} is not a pooling task")
        warnings.warn(
            f"LLM(task={task!r}) is ignored: the `task` engine argument was removed from vLLM; {hint} "
            "Pass pooling_task=... to encode().",
            IgnoredEngineArgWarning,
            stacklevel=3,
        )
        return config
    warnings.warn(
        f"LLM(task={task!r}): the `task` engine argument was removed from vLLM; used as "
        f"PoolerConfig(task={task!r}).",
        IgnoredEngineArgWarning,
        stacklevel=3,
    )
    return dataclasses.replace(config, task=task) if config.task is None else config


class RawConfigDtype:
    """The ``dtype`` of a raw ``config.json`` dict, as an attribute (dtype resolution before the model loads)."""

    def __init__(self, data: dict[str, Any]) -> None:
        self.dtype = data.get("dtype") or data.get("torch_dtype")


__all__ = [
    "RawConfigDtype",
    "pooler_config_with_task",
    "resolve_max_model_len",
    "task_configs",
    "vllm_supported_tasks",
]
