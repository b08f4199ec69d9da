"""Pooling task names and their levels, as in vLLM's pooling runner."""

from __future__ import annotations

from typing import Literal, get_args

from rlhf_rewards.errors import RequestError

PoolingTask = Literal["classify", "token_classify", "embed", "token_embed"]

POOLING_TASKS: tuple[str, ...] = get_args(PoolingTask)
#: Tasks whose output is one row per token (or per step tag) rather than one per sequence.
TOKEN_TASKS: frozenset[str] = frozenset({"token_classify", "token_embed"})
#: Tasks that run the model's classification head (and an activation).
CLASSIFY_TASKS: frozenset[str] = frozenset({"classify", "token_classify"})

SEQUENCE_POOLING_TYPES: tuple[str, ...] = ("LAST", "CLS", "MEAN")
TOKEN_POOLING_TYPES: tuple[str, ...] = ("ALL", "STEP")
POOLING_TYPES: tuple[str, ...] = SEQUENCE_POOLING_TYPES + TOKEN_POOLING_TYPES

#: Task names older vLLM releases used, and what replaces them (vLLM 0.33's ``check_removed_pooling_task``
#: names ``score`` and ``encode``; ``reward`` was ``LLM.reward``'s task, removed with it).
REMOVED_POOLING_TASKS: dict[str, str] = {
    "score": "`score` task was removed; use `classify` instead.",
    "encode": "`encode` task was removed; use `token_embed` or `token_classify` instead.",
    "reward": "`reward` task was removed; use `token_classify` (token reward models) or `classify` "
    "(sequence reward models) instead.",
}
#: vLLM 0.33 tasks this engine does not run, and why.
UNSUPPORTED_POOLING_TASKS: dict[str, str] = {
    "plugin": "No IOProcessor plugin installed: IOProcessor plugins (vLLM's `plugin` task, for multimodal "
    "non-text outputs) are not supported; this engine pools text reward models.",
    "embed&token_classify": "`embed&token_classify` (one forward returning both) is not supported; call "
    "encode twice, with pooling_task='embed' and 'token_classify'.",
}


def check_removed_pooling_task(task: object, field: str = "task") -> None:
    """Raise a ``RequestError`` naming the replacement if ``task`` is a removed task name (vLLM's rule)."""
    if isinstance(task, str) and task in REMOVED_POOLING_TASKS:
        raise RequestError(f"{task!r}: {REMOVED_POOLING_TASKS[task]}", field=field, sep="=", param=field)


def check_task(task: object, supported: tuple[str, ...] | None = None) -> str:
    """Return ``task`` if it is a pooling task this model supports, else raise a ``RequestError`` (a
    ``ValueError``) on ``pooling_task`` listing the choices."""
    choices = supported or POOLING_TASKS
    if task is None:
        raise RequestError(
            f"is required; this model supports {list(choices)} (for rewards use `classify` or `token_classify`).",
            field="pooling_task",
        )
    check_removed_pooling_task(task, "pooling_task")
    if isinstance(task, str) and task in UNSUPPORTED_POOLING_TASKS:
        raise RequestError(UNSUPPORTED_POOLING_TASKS[task], field="pooling_task", sep=": ")
    if task not in POOLING_TASKS:
        raise RequestError(
            f"{task!r} is not a pooling task; choose one of {list(POOLING_TASKS)} "
            "(for rewards use `classify` or `token_classify`).",
            field="pooling_task",
            sep="=",
        )
    if task not in choices:
        raise RequestError(
            f"{task!r} is not supported by this model; it supports {list(choices)}.",
            field="pooling_task",
            sep="=",
        )
    return str(task)
