"""Which reward kind a function reads from its model, and what that kind asks of the model.

- ``outcome``: a sequence classifier, read with the ``classify`` task (one score at the last token);
- ``token``: a token reward model, read with ``token_classify`` at the final token (after the model's
  reward token, if it has one);
- ``process``: a PRM, read with ``token_classify`` under STEP pooling, one row per step tag;
- ``judge``: a causal LM asked a question, read through the next-token probability of its answer
  (``generative_score``, vLLM's ``/generative_scoring``; :mod:`rlhf_rewards.reward.judge`).
"""

from __future__ import annotations

from rlhf_rewards.contract import ModelInfo
from rlhf_rewards.pooling.params import PoolingParams
from rlhf_rewards.reward.config import KINDS, RewardFunctionConfig


def pooling_task_of(kind: str) -> str:
    """The pooling task that reads ``kind``: ``classify`` for outcome rewards, else ``token_classify``."""
    return "classify" if kind == "outcome" else "token_classify"


def resolve_kind(requested: str | None, info: ModelInfo, owner: str) -> str:
    """The kind to read: ``requested`` or the model's own, checked against what the model can do.

    Raises ``ValueError`` (naming ``owner``) when the model is no reward model, lacks the pooling task the
    kind needs, or is read as a PRM without STEP pooling and a step tag.
    """
    kind = requested or info.kind
    if kind not in KINDS:
        raise ValueError(
            f"{owner}: the model's kind is {info.kind!r} ({info.architecture}), not a reward model; "
            "pass kind='outcome', 'token' or 'process' if it does score rewards."
        )
    if kind == "judge":
        if not info.architecture.endswith(("ForCausalLM", "LMHeadModel")) or info.kind != "process":
            raise ValueError(
                f"{owner}: a judge is read through its LM head, but {info.architecture} (kind "
                f"{info.kind!r}) has none; load a *ForCausalLM checkpoint with convert='auto'."
            )
        return kind
    task = pooling_task_of(kind)
    if task not in info.tasks:
        raise ValueError(
            f"{owner}: kind={kind!r} needs the {task!r} pooling task but {info.architecture} supports "
            f"{info.tasks}; use kind={info.kind!r}."
        )
    if kind == "process" and info.step_tag_id is None:
        raise ValueError(
            f"{owner}: process rewards need STEP pooling with a step tag, but {info.architecture} is "
            f"configured with {info.pooler_configs.get('token_classify')}. Load it with "
            "pooler_config={'pooling_type': 'STEP', 'step_tag_id': <id>, 'returned_token_ids': [<good>, <bad>]} "
            "(math-shepherd style), or pass kind='outcome'/'token' for another reading."
        )
    return kind


def resolve_step_tag(kind: str, configured: str | None, info: ModelInfo, owner: str) -> str | None:
    """The text inserted after each step: ``configured`` or the model's step tag (process rewards only)."""
    if kind != "process":
        return None
    tag = configured or info.step_tag
    if not tag:
        raise ValueError(f"{owner}: the model's step tag has no text; pass step_tag=... .")
    return tag


def pooling_params_for(kind: str, config: RewardFunctionConfig) -> PoolingParams:
    """The per-request pooling params: raw logits for outcome and token rewards unless ``use_activation``
    says otherwise (as TRL's built-in reward models), the model's activation for process rewards."""
    use_activation = config.use_activation
    if use_activation is None and kind != "process":
        use_activation = False
    return PoolingParams(use_activation=use_activation)


__all__ = ["pooling_params_for", "pooling_task_of", "resolve_kind", "resolve_step_tag"]
