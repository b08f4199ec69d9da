"""Pooling task names and their levels, as in vLLM's pooling runner."""

from __future__ import annotations

from typing import Literal

from rlhf_rewards.errors import RequestError

PoolingTask = Literal["classify", "token_classify", "embed", "token_embed"]

POOLING_TASKS: tuple[str, ...] = ("classify", "token_classify", "embed", "token_embed")
#: Tasks whose output is one row per token (or per step tag) rather than one per sequence.
TOKEN_TASKS: frozenset[str] = frozenset({"token_classify", "token_embed"})
#: Tasks that run the model's classification head (and an activation).
CLASSIFY_TASKS: frozenset[str] = frozenset({"classify", "token_classify"})

SEQUENCE_POOLING_TYPES: tuple[str, ...] = ("LAST", "CLS", "MEAN")
TOKEN_POOLING_TYPES: tuple[str, ...] = ("ALL", "STEP")
POOLING_TYPES: tuple[str, ...] = SEQUENCE_POOLING_TYPES + TOKEN_POOLING_TYPES


def check_task(task: object, supported: tuple[str, ...] | None = None) -> str:
    """Return ``task`` if it is a pooling task this model supports, else raise a ``RequestError`` (a
    ``ValueError``) on ``pooling_task`` listing the choices."""
    choices = supported or POOLING_TASKS
    if task is None:
        raise RequestError(
            f"is required; this model supports {list(choices)} (for rewards use `classify` or `token_classify`).",
            field="pooling_task")
    if task not in POOLING_TASKS:
        raise RequestError(
            f"{task!r} is not a pooling task; choose one of {list(POOLING_TASKS)} "
            "(for rewards use `classify` or `token_classify`).", field="pooling_task", sep="=")
    if task not in choices:
        raise RequestError(f"{task!r} is not supported by this model; it supports {list(choices)}.",
                           field="pooling_task", sep="=")
    return str(task)
