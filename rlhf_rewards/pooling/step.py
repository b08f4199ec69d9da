"""STEP pooling: one output row per reasoning-step tag (process reward models), and every STEP rule.

All of STEP's behaviour is decided here, as small pure functions the other layers call:

- **rows** (:func:`step_rows`): the rows kept are those whose *input* token equals ``step_tag_id`` (all rows
  when it is unset), as vLLM's ``StepPooler``.
- **columns** (:func:`select_columns`, :func:`check_columns`): ``returned_token_ids`` keeps those output
  columns. The selection happens in the head, so an LM-head PRM only computes those vocabulary logits
  instead of the full vocabulary.
- **tag defaults** (:func:`step_tag_id_of`, :func:`default_step_tag_id`): an architecture may name its step
  tag as a token (Qwen2.5-Math-PRM's ``"<extra_0>"``); its id in the model's tokenizer is the default
  ``step_tag_id`` of a STEP config that sets none.
- **which tasks a user's config touches** (:func:`user_config_for_task`): STEP fields given without a
  pooling type (vLLM's ``--pooler-config '{"step_tag_id": ...}'``) configure only the tasks pooled by STEP.
- **kind** (:func:`detect_step_kind`): a model whose ``token_classify`` is STEP-pooled is a process reward
  model, read at its step tag.
- **the reward column** (:func:`step_score_column`): which column of a ``[n_steps, k]`` output is the
  step reward.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from rlhf_rewards.pooling.config import PoolerConfig
from rlhf_rewards.pooling.params import ResolvedPooling
from rlhf_rewards.pooling.tasks import SEQUENCE_POOLING_TYPES, TOKEN_POOLING_TYPES, TOKEN_TASKS

EMBED_TASKS = frozenset({"embed", "token_embed"})
#: The ``step_tag_id`` vLLM 0.32 gives an architecture whose pooler config sets none, whatever its tokenizer
#: (``Qwen2ForProcessRewardModelConfig``: ``<extra_0>`` in Qwen2.5's vocabulary). This library looks the
#: architecture's tag up in the model's tokenizer instead (:func:`default_step_tag_id`), which gives the same
#: id on the real model; ``LLM(..., strict_vllm_compat=True)`` uses these.
VLLM_DEFAULT_STEP_TAG_IDS: dict[str, int] = {"Qwen2ForProcessRewardModel": 151651}


class StepPooler:
    """Keeps the states at step-tag positions."""

    pooling_type = "STEP"

    def positions(self, token_ids: torch.Tensor, params: ResolvedPooling) -> torch.Tensor:
        """The positions of the step tags in ``token_ids`` (see :func:`step_rows`)."""
        return step_rows(token_ids, params.step_tag_id)

    def reduce(self, states: torch.Tensor) -> torch.Tensor:
        """Every gathered row is an output row."""
        return states


# ---------------------------------------------------------------------- rows and columns
def step_rows(token_ids: torch.Tensor, step_tag_id: int | None) -> torch.Tensor:
    """Positions (``long``, 1-D) of ``token_ids`` equal to ``step_tag_id``; every position when it is ``None``."""
    if step_tag_id is None:
        return torch.arange(token_ids.numel(), dtype=torch.long)
    return torch.nonzero(token_ids.flatten() == step_tag_id, as_tuple=False).flatten()


def check_columns(
    columns: Sequence[int], width: int, what: str = "the head has {width} output columns"
) -> None:
    """Raise ``ValueError`` naming ``returned_token_ids`` if a column is not below ``width``.

    ``what`` describes the limit (``{width}`` is filled in), e.g. ``"the vocabulary has {width} rows"``.
    """
    bad = [c for c in columns if c >= width]
    if bad:
        raise ValueError(f"returned_token_ids {bad} are out of range: {what.format(width=width)}.")


def select_columns(logits: torch.Tensor, columns: Sequence[int] | None) -> torch.Tensor:
    """``logits[..., columns]`` (all of ``logits`` when ``columns`` is ``None``), checked against the width."""
    if columns is None:
        return logits
    check_columns(columns, logits.shape[-1])
    return logits[..., list(columns)]


# ---------------------------------------------------------------------- tag defaults
def step_tag_id_of(tokenizer: Any, tag: str, owner: str) -> int:
    """The id of the single token ``tag`` in ``tokenizer``.

    Raises ``ValueError`` (naming ``owner`` and how to set ``step_tag_id``) when the tokenizer has no such
    token, so a PRM never silently scores every token instead of its steps.
    """
    token_id = None
    if tokenizer is not None:
        token_id = tokenizer.convert_tokens_to_ids(tag)
        if (
            token_id is not None
            and token_id == getattr(tokenizer, "unk_token_id", None)
            and tag != tokenizer.unk_token
        ):
            token_id = None
    if token_id is None:
        raise ValueError(
            f"{owner} marks steps with the token {tag!r}, but the tokenizer has no such token; "
            "pass pooler_config={'tok_pooling_type': 'STEP', 'step_tag_id': <id of your step tag>}."
        )
    return int(token_id)


def default_step_tag_id(
    config: PoolerConfig, default_tag: str | None, tokenizer: Any, owner: str
) -> int | None:
    """The ``step_tag_id`` of an effective task config: its own, else the id of the architecture's
    ``default_tag`` when the task is STEP-pooled (looked up only then: see :func:`step_tag_id_of`)."""
    if not config.is_step or config.step_tag_id is not None or not default_tag:
        return config.step_tag_id
    return step_tag_id_of(tokenizer, default_tag, owner)


def user_config_for_task(
    user: PoolerConfig, task: str, task_defaults: Mapping[str, PoolerConfig]
) -> PoolerConfig:
    """The part of the user's pooler config that applies to ``task`` (to be merged over its default).

    ``seq_pooling_type`` reaches the sequence tasks and ``tok_pooling_type`` the token tasks by
    construction (:meth:`PoolerConfig.type_for`); the ``pooling_type`` alias configures the tasks of its
    own level only. STEP fields given without a token pooling type (a PRM's ``step_tag_id``) configure
    the tasks pooled by STEP, when the model has one. The fields that fit every task (activation, logit
    scaling, embedding settings) always apply.
    """
    default = task_defaults[task]
    level_types = TOKEN_POOLING_TYPES if task in TOKEN_TASKS else SEQUENCE_POOLING_TYPES
    has_step_default = any(c.is_step for c in task_defaults.values())
    step_fields_apply = user.tok_pooling_type is not None or not has_step_default or default.is_step
    alias_applies = user.pooling_type is None or user.pooling_type in level_types
    changes: dict[str, Any] = {}
    if task in EMBED_TASKS and user.use_activation is not None and user.normalize is None:
        # vLLM 0.33: use_activation is the embedding tasks' normalization (over the default's ``normalize``).
        changes["normalize"] = user.use_activation
    if step_fields_apply and alias_applies:
        return dataclasses.replace(user, **changes) if changes else user
    changes.update(step_tag_id=None, returned_token_ids=None)
    if not alias_applies:
        changes["pooling_type"] = None
        # The alias filled the other level's field; keep it only if the user also named that field.
        other = "tok_pooling_type" if user.pooling_type in TOKEN_POOLING_TYPES else "seq_pooling_type"
        changes[other] = None
    return dataclasses.replace(user, **changes)


# ---------------------------------------------------------------------- kind and reward column
def detect_step_kind(kind: str, token_classify: PoolerConfig | None) -> tuple[str, int | None]:
    """The reward kind and step tag id of a model whose architecture's kind is ``kind``.

    STEP pooling on ``token_classify`` makes any model a ``"process"`` reward model read at its
    ``step_tag_id``; otherwise the kind is unchanged and there is no step tag.
    """
    if token_classify is not None and token_classify.is_step:
        return "process", token_classify.step_tag_id
    return kind, None


def step_tag_text(tokenizer: Any, step_tag_id: int | None) -> str | None:
    """The text of the step tag token (``None`` without a tokenizer or a tag)."""
    if tokenizer is None or step_tag_id is None:
        return None
    return tokenizer.decode([step_tag_id])


def step_score_column(
    k: int, *, returned_token_ids: Sequence[int] | None = None, override: int | None = None
) -> int:
    """The column of a ``[n_steps, k]`` STEP output that holds the step reward.

    ``override`` (a reward function's ``step_score_column``) wins. Otherwise: column 0 when the pooler
    config sets ``returned_token_ids`` (the first id is the "good" token, as math-shepherd's
    ``[good, bad]``), column 1 for a two-label head without them (Qwen2.5-Math-PRM: label 1 is
    "correct"), column 0 for a one-column output. Raises ``ValueError`` naming ``step_score_column`` for
    any other width, or when the column is not below ``k``.
    """
    if override is not None:
        col = override
    elif returned_token_ids:
        col = 0
    elif k == 2:
        col = 1
    elif k == 1:
        col = 0
    else:
        raise ValueError(
            f"the STEP output has {k} columns and no returned_token_ids; pass "
            "step_score_column=... to say which column is the step reward."
        )
    if col >= k:
        raise ValueError(f"step_score_column={col} but the STEP output has {k} columns.")
    return col


__all__ = [
    "VLLM_DEFAULT_STEP_TAG_IDS",
    "StepPooler",
    "check_columns",
    "default_step_tag_id",
    "detect_step_kind",
    "select_columns",
    "step_rows",
    "step_score_column",
    "step_tag_id_of",
    "step_tag_text",
    "user_config_for_task",
]
