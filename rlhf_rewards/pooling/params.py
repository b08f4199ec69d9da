"""``PoolingParams``: per-request pooling settings that override the model's ``PoolerConfig``."""

from __future__ import annotations

import copy
import dataclasses
import warnings
from dataclasses import dataclass
from typing import Any

from rlhf_rewards.checks import is_int
from rlhf_rewards.errors import RequestError
from rlhf_rewards.pooling.config import PoolerConfig, check_step_fields
from rlhf_rewards.pooling.tasks import CLASSIFY_TASKS, TOKEN_TASKS, check_removed_pooling_task

# Which request fields belong to which task (vLLM 0.33's ``valid_parameters``; ``normalize`` is this
# library's extension). The STEP fields are checked against the pooling type (vLLM's ``_verify_step_pooling``).
_TASK_FIELDS: dict[str, tuple[str, ...]] = {
    "embed": ("dimensions", "use_activation", "normalize"),
    "token_embed": ("dimensions", "use_activation", "normalize"),
    "classify": ("use_activation",),
    "token_classify": ("use_activation", "step_tag_id", "returned_token_ids"),
}
_TASK_SPECIFIC = ("dimensions", "normalize", "use_activation", "step_tag_id", "returned_token_ids")
_warned: set[str] = set()


def _warn_once(key: str, message: str) -> None:
    if key not in _warned:
        _warned.add(key)
        warnings.warn(message, DeprecationWarning, stacklevel=4)


@dataclass
class PoolingParams:
    """Per-request pooling parameters (vLLM 0.33's ``PoolingParams``). Unset fields come from the ``PoolerConfig``.

    Args:
        use_activation: Apply the task's activation: sigmoid/softmax for ``classify``/``token_classify``, L2
            normalization for ``embed``/``token_embed``. Default ``None`` (the config's, else True; for
            ``token_embed`` this library keeps raw hidden states unless asked).
        dimensions: ``embed``/``token_embed`` only: truncate vectors to this many dimensions. Default ``None``.
        step_tag_id: ``token_classify`` with STEP pooling only: keep rows whose input token is this id.
        returned_token_ids: ``token_classify`` with STEP pooling only: keep these output columns.
        task: The pooling task; set by the engine to the call's ``pooling_task`` (a different value is an
            error). ``score``/``encode``/``reward`` are errors naming the replacement, as in vLLM 0.33.
        normalize: Extension (vLLM 0.33 removed it): ``embed``/``token_embed`` only, L2-normalize; wins over
            ``use_activation``. Default ``None``.
        truncate_prompt_tokens: Deprecated here, as vLLM moved it to the request: pass ``truncate_prompt_tokens``
            (or ``tokenization_kwargs={"truncate_prompt_tokens": k}``) to ``encode``. Still honoured (it wins
            over the call's value); keep the last k prompt tokens, ``-1``: ``max_model_len``.
        activation: Old name of ``use_activation`` (one ``DeprecationWarning``).
        extra_kwargs: vLLM's free-form extras; ``LLM.score`` reads ``max_tokens_per_doc`` and
            ``max_tokens_per_query`` (documents and queries are cut to that many tokens). Others are ignored.
        requires_token_ids: Accepted for vLLM compatibility; outputs always carry ``prompt_token_ids``.
        skip_reading_prefix_cache: Accepted for vLLM compatibility; prefix sharing here is exact for every
            pooler, so there is nothing to skip.
    """

    truncate_prompt_tokens: int | None = None
    dimensions: int | None = None
    normalize: bool | None = None
    use_activation: bool | None = None
    step_tag_id: int | None = None
    returned_token_ids: list[int] | None = None
    task: str | None = None
    activation: bool | None = None
    extra_kwargs: dict[str, Any] | None = None
    requires_token_ids: bool = False
    skip_reading_prefix_cache: bool | None = None

    def __post_init__(self) -> None:
        check_removed_pooling_task(self.task)
        if self.activation is not None:
            if self.use_activation is not None and self.use_activation != self.activation:
                raise RequestError(
                    f"activation={self.activation!r} and use_activation={self.use_activation!r} "
                    "disagree; `activation` is the old name of `use_activation`.",
                    field="activation",
                )
            _warn_once(
                "activation",
                "PoolingParams(activation=...) is deprecated; use use_activation=... (vLLM's name).",
            )
            self.use_activation, self.activation = self.activation, None
        t = self.truncate_prompt_tokens
        if t is not None and not (is_int(t) and (t == -1 or t >= 1)):
            raise RequestError(
                f"must be a positive integer or -1, got {t!r}.", field="truncate_prompt_tokens"
            )
        if self.extra_kwargs is not None and not isinstance(self.extra_kwargs, dict):
            raise RequestError(
                f"must be a dict, got {type(self.extra_kwargs).__name__}.", field="extra_kwargs"
            )
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

    @property
    def all_parameters(self) -> list[str]:
        """vLLM's list of the task-specific parameters (plus this library's ``normalize``)."""
        return list(_TASK_SPECIFIC)

    @property
    def valid_parameters(self) -> dict[str, list[str]]:
        """The parameters each task takes (vLLM's ``valid_parameters``, STEP fields and ``normalize`` added)."""
        return {task: list(fields) for task, fields in _TASK_FIELDS.items()}

    def verify(self, task: str) -> None:
        """Raise ``RequestError`` if a field is set that ``task`` does not take (vLLM's rule)."""
        if self.task is not None and self.task != task:
            raise RequestError(
                f"You cannot overwrite task={self.task!r} with pooling_task={task!r}!",
                field="pooling_params",
                sep=": ",
                param="task",
            )
        allowed = _TASK_FIELDS[task]
        bad = [name for name in _TASK_SPECIFIC if getattr(self, name) is not None and name not in allowed]
        if bad:
            raise RequestError(
                f"{task!r} only supports the parameters {list(allowed)}, not {bad}.",
                field="pooling_task",
                sep="=",
                param=bad[0],
            )

    def clone(self, **changes: Any) -> PoolingParams:
        """A copy with ``changes`` applied (nested values copied, as vLLM's deep-copying ``clone``)."""
        return dataclasses.replace(copy.deepcopy(self), **changes)


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
    pooling_type = config.type_for(task) or ("ALL" if task in TOKEN_TASKS else "LAST")
    step_tag_id = params.step_tag_id if params.step_tag_id is not None else config.step_tag_id
    returned = (
        params.returned_token_ids if params.returned_token_ids is not None else config.returned_token_ids
    )
    if task not in TOKEN_TASKS:  # the config's STEP fields configure its token tasks only
        step_tag_id = returned = None
    check_step_fields("pooling_params", pooling_type, params.step_tag_id, params.returned_token_ids)
    check_step_fields("pooler_config", pooling_type, step_tag_id, returned)
    use_activation = params.use_activation if params.use_activation is not None else config.use_activation
    # Embedding tasks: vLLM 0.33's use_activation is the L2 normalization; this library's normalize wins.
    normalize = (
        next(
            (
                v
                for v in (params.normalize, params.use_activation, config.normalize, config.use_activation)
                if v is not None
            ),
            None,
        )
        if task not in CLASSIFY_TASKS
        else None
    )
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
