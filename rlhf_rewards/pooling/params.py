"""``PoolingParams``: per-request pooling settings that override the model's ``PoolerConfig``."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from rlhf_rewards.errors import RequestError
from rlhf_rewards.pooling.config import PoolerConfig, check_step_fields
from rlhf_rewards.pooling.tasks import CLASSIFY_TASKS, TOKEN_TASKS

# Which request fields belong to which task (vLLM rejects the others).
_TASK_FIELDS: dict[str, tuple[str, ...]] = {
    "embed": ("dimensions", "normalize"),
    "token_embed": ("dimensions", "normalize"),
    "classify": ("use_activation",),
    "token_classify": ("use_activation", "step_tag_id", "returned_token_ids"),
}
_TASK_SPECIFIC = ("dimensions", "normalize", "use_activation", "step_tag_id", "returned_token_ids")


@dataclass
class PoolingParams:
    """Per-request pooling parameters (vLLM's ``PoolingParams``). Unset fields come from the ``PoolerConfig``.

    Args:
        truncate_prompt_tokens: Keep only the last k prompt tokens (``-1``: the model's ``max_model_len``).
            Default ``None``: a prompt over ``max_model_len`` is an error.
        dimensions: ``embed``/``token_embed`` only: truncate vectors to this many dimensions. Default ``None``.
        normalize: ``embed``/``token_embed`` only: L2-normalize. Default ``None`` (config, then True for embed).
        use_activation: ``classify``/``token_classify`` only: apply sigmoid/softmax. Default ``None`` (config).
        step_tag_id: ``token_classify`` with STEP pooling only: keep rows whose input token is this id.
        returned_token_ids: ``token_classify`` with STEP pooling only: keep these output columns.
        task: Set by the engine to the call's ``pooling_task``; leave ``None``.
    """

    truncate_prompt_tokens: int | None = None
    dimensions: int | None = None
    normalize: bool | None = None
    use_activation: bool | None = None
    step_tag_id: int | None = None
    returned_token_ids: list[int] | None = None
    task: str | None = None

    def __post_init__(self) -> None:
        t = self.truncate_prompt_tokens
        if t is not None and (isinstance(t, bool) or not isinstance(t, int) or (t < 1 and t != -1)):
            raise RequestError(f"must be a positive integer or -1, got {t!r}.", field="truncate_prompt_tokens")
        # Reuse PoolerConfig's field validation for the shared fields, reported under this class's names.
        try:
            PoolerConfig(
                step_tag_id=self.step_tag_id,
                returned_token_ids=self.returned_token_ids,
                dimensions=self.dimensions,
                use_activation=self.use_activation,
                normalize=self.normalize,
            )
        except RequestError as exc:
            field = exc.field or ""
            raise exc.located(field=field.removeprefix("pooler_config.")) from None

    def verify(self, task: str) -> None:
        """Raise ``RequestError`` if a field is set that ``task`` does not take (vLLM's rule)."""
        allowed = _TASK_FIELDS[task]
        bad = [name for name in _TASK_SPECIFIC if getattr(self, name) is not None and name not in allowed]
        if bad:
            raise RequestError(f"{task!r} only supports the parameters {list(allowed)}, not {bad}.",
                               field="pooling_task", sep="=", param=bad[0])

    def clone(self, **changes: Any) -> PoolingParams:
        """A copy with ``changes`` applied."""
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True)
class ResolvedPooling:
    """The effective pooling settings of one request: task, config defaults and request overrides merged."""

    task: str
    pooling_type: str
    use_activation: bool
    logit_mean: float | None
    logit_sigma: float | None
    step_tag_id: int | None
    returned_token_ids: tuple[int, ...] | None
    dimensions: int | None
    normalize: bool

    @property
    def token_level(self) -> bool:
        """True when the output has one row per kept token."""
        return self.task in TOKEN_TASKS

    @property
    def runs_head(self) -> bool:
        """True when the classification head (and activation) runs."""
        return self.task in CLASSIFY_TASKS


def resolve_pooling(task: str, params: PoolingParams, config: PoolerConfig) -> ResolvedPooling:
    """Merge request ``params`` over the model's task-level ``config`` (which already holds arch defaults)."""
    params.verify(task)
    pooling_type = config.pooling_type or ("ALL" if task in TOKEN_TASKS else "LAST")
    step_tag_id = params.step_tag_id if params.step_tag_id is not None else config.step_tag_id
    returned = params.returned_token_ids if params.returned_token_ids is not None else config.returned_token_ids
    check_step_fields("pooling_params", pooling_type, params.step_tag_id, params.returned_token_ids)
    check_step_fields("pooler_config", pooling_type, step_tag_id, returned)
    use_activation = params.use_activation if params.use_activation is not None else config.use_activation
    normalize = params.normalize if params.normalize is not None else config.normalize
    dimensions = params.dimensions if params.dimensions is not None else config.dimensions
    return ResolvedPooling(
        task=task,
        pooling_type=pooling_type,
        use_activation=True if use_activation is None else use_activation,
        logit_mean=config.logit_mean,
        logit_sigma=config.logit_sigma,
        step_tag_id=step_tag_id,
        returned_token_ids=tuple(returned) if returned is not None else None,
        dimensions=dimensions,
        normalize=(task == "embed") if normalize is None else normalize,
    )


__all__ = ["PoolingParams", "ResolvedPooling", "resolve_pooling"]
