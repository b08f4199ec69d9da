"""``RewardFunction`` and ``AsyncRewardFunction``: a reward model as a TRL ``reward_funcs`` entry.

Both talk to the model only through a :class:`~rlhf_rewards.workers.base.RewardWorker`, so the same
function serves a colocated model, a remote server or a Ray pool. One call scores every completion of the
batch with ONE ``encode`` request (the engine packs them); extra requests happen only for inputs exactly at
or over ``max_model_len`` (to tell a fitting input from an over-long one).

This module is the TRL-facing surface: the call signature TRL uses. The work is done elsewhere in
``rlhf_rewards.reward``:

- :mod:`~rlhf_rewards.reward.config`: :class:`RewardFunctionConfig`, the settings;
- :mod:`~rlhf_rewards.reward.base`: construction and call bookkeeping shared by both classes;
- :mod:`~rlhf_rewards.reward.plan`: the scoring plan, a generator that yields the worker calls it needs,
  run by :mod:`~rlhf_rewards.reward.calls` (blocking for ``RewardFunction``, asyncio for
  ``AsyncRewardFunction``), so the scoring logic is written once;
- :mod:`~rlhf_rewards.reward.readout`: the readout per reward kind (outcome, token, process);
- :mod:`~rlhf_rewards.reward.errors`: the error and warning types.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from rlhf_rewards.reward.base import RewardFunctionBase
from rlhf_rewards.reward.calls import arun_plan, run_plan
from rlhf_rewards.reward.config import RewardFunctionConfig
from rlhf_rewards.reward.errors import RewardFunctionError, RewardInputError, UnscorableCompletionWarning
from rlhf_rewards.reward.readout import ScoreResult


def direct_return_steps(kwargs: dict[str, Any]) -> bool:
    """The older direct-call option ``return_steps=True``: read only when it is a bool. TRL passes every
    dataset column as a keyword whose value is a list (one entry per completion), so a column named
    ``return_steps`` is never taken for the option; it is left in ``kwargs`` and ignored like any column."""
    value = kwargs.get("return_steps")
    if isinstance(value, bool):
        del kwargs["return_steps"]
        return value
    return False


class RewardFunction(RewardFunctionBase):
    """A reward model as a TRL reward function: ``reward_funcs=[RewardFunction("path/to/rm")]``.

    Works with ``trl.GRPOTrainer`` and ``trl.RLOOTrainer`` in both dataset formats. TRL logs its rewards
    as ``rewards/<name>/mean``; latency, tokens scored and the fraction of unscored completions go through
    TRL's ``log_metric`` as ``rewards/<name>/latency_s``, ``.../tokens_scored`` and ``.../unscored_frac``.

    Args:
        source: A model path or hub id (loaded into a :class:`~rlhf_rewards.workers.colocated.ColocatedWorker`
            with ``llm_kwargs``), an :class:`~rlhf_rewards.LLM`, or any
            :class:`~rlhf_rewards.workers.base.RewardWorker` (remote server, Ray pool...).
        config: A :class:`~rlhf_rewards.reward.config.RewardFunctionConfig` with every setting documented.
            Default ``None``: its defaults.
        **overrides: Any field of :class:`~rlhf_rewards.reward.config.RewardFunctionConfig` (``name``,
            ``kind``, ``lora``, ``step_aggregation``, ``truncate``, ``llm_kwargs``...), applied over
            ``config`` on a copy, so ``RewardFunction(src, step_aggregation="min", name="prm")`` works as
            well. An unknown name is a ``TypeError`` that lists the valid fields. The function keeps the
            resulting config as ``.config``.

    Calling it: ``rf(prompts, completions, completion_ids=None, **kwargs) -> list[float | None]``, one value
    per completion; TRL's extra keyword arguments (``trainer_state``, every dataset column...) are accepted and
    ignored, except ``log_metric``. The function has no options of its own among them, so a dataset column
    may have any name (``return_steps``, ``kind``...). Per-step scores of a process reward model come from
    :meth:`score_with_steps`, which returns ``(rewards, steps)`` where ``steps[i]`` is the list of raw step
    scores of completion ``i`` (``None`` for a step cut off by truncation, and ``steps[i]`` is ``None`` when
    the completion got no reward). The older direct call ``rf(..., return_steps=True)`` still works: only
    the boolean ``True``/``False`` is read as that option; TRL passes a column as a list, which is ignored.

    Pickling (TRL's ``AsyncGRPOTrainer`` scores in a spawned child): a function built from a model path
    reloads it in the new process on its first call, one on a ``RemoteWorker`` or ``RayWorkerPool``
    reconnects; one built around an in-memory ``LLM`` or ``ColocatedWorker`` raises a ``TypeError`` saying
    what to pass instead.

    Reward ``None`` means "not applicable" to TRL: it is given, with an :class:`UnscorableCompletionWarning`,
    for a completion the model cannot score (over ``max_model_len`` with ``truncate=False``, non-finite
    model output, step tags lost in tokenization). Every other failure raises a
    :class:`RewardFunctionError` (a :class:`RewardInputError`, also a ``ValueError``, for bad inputs) whose
    message names the function and its model.
    """

    def __call__(
        self,
        prompts: Sequence[Any],
        completions: Sequence[Any],
        completion_ids: Sequence[Sequence[int]] | None = None,
        **kwargs: Any,
    ) -> Any:
        return self._score(prompts, completions, direct_return_steps(kwargs), kwargs)

    def score_with_steps(
        self,
        prompts: Sequence[Any],
        completions: Sequence[Any],
        completion_ids: Sequence[Sequence[int]] | None = None,
        **kwargs: Any,
    ) -> tuple[list[float | None], list[list[float | None] | None]]:
        """``(rewards, steps)`` of a process reward model: the rewards of a call, and each completion's raw
        step scores (``kwargs`` as in a call: ``log_metric`` is used, anything else ignored)."""
        return self._score(prompts, completions, True, kwargs)

    def _score(
        self, prompts: Sequence[Any], completions: Sequence[Any], return_steps: bool, kwargs: dict[str, Any]
    ) -> Any:
        started = self._begin(return_steps)
        try:
            result = run_plan(self._scoring.completions(prompts, completions, self._owner), self.worker)
        except Exception as exc:  # noqa: BLE001 - re-raised with the function's name
            raise self._wrap(exc) from exc
        return self._finish(
            result, started, return_steps, kwargs, stacklevel=4
        )  # via __call__ / score_with_steps

    def score_token_ids(self, token_ids: Sequence[Sequence[int]], **kwargs: Any) -> list[float | None]:
        """Score sequences given as token ids of the reward model's vocabulary (outcome and token kinds).

        The ids are scored as they are (no special tokens added; a token RM's reward token is appended).
        Used by :func:`~rlhf_rewards.reward.trl_compat.as_trl_reward_model`, whose policy shares the tokenizer.
        """
        started = self._begin(False)
        try:
            result = run_plan(self._scoring.token_ids(token_ids, self._owner), self.worker)
        except Exception as exc:  # noqa: BLE001 - re-raised with the function's name
            raise self._wrap(exc) from exc
        return self._finish(result, started, False, kwargs)


class AsyncRewardFunction(RewardFunctionBase):
    """:class:`RewardFunction` with ``async def __call__``: TRL runs it concurrently with other async reward
    functions on its event loop, and the worker's ``aencode`` does the scoring (a thread for a colocated
    model, non-blocking I/O for a remote one). Same arguments, config and results as :class:`RewardFunction`.
    """

    async def __call__(
        self,
        prompts: Sequence[Any],
        completions: Sequence[Any],
        completion_ids: Sequence[Sequence[int]] | None = None,
        **kwargs: Any,
    ) -> Any:
        return await self._score(prompts, completions, direct_return_steps(kwargs), kwargs)

    async def score_with_steps(
        self,
        prompts: Sequence[Any],
        completions: Sequence[Any],
        completion_ids: Sequence[Sequence[int]] | None = None,
        **kwargs: Any,
    ) -> tuple[list[float | None], list[list[float | None] | None]]:
        """``(rewards, steps)`` of a process reward model (see :meth:`RewardFunction.score_with_steps`)."""
        return await self._score(prompts, completions, True, kwargs)

    async def _score(
        self, prompts: Sequence[Any], completions: Sequence[Any], return_steps: bool, kwargs: dict[str, Any]
    ) -> Any:
        started = self._begin(return_steps)
        try:
            result = await arun_plan(
                self._scoring.completions(prompts, completions, self._owner), self.worker
            )
        except Exception as exc:  # noqa: BLE001 - re-raised with the function's name
            raise self._wrap(exc) from exc
        return self._finish(
            result, started, return_steps, kwargs, stacklevel=4
        )  # via __call__ / score_with_steps


__all__ = [
    "AsyncRewardFunction",
    "direct_return_steps",
    "RewardFunction",
    "RewardFunctionConfig",
    "RewardFunctionError",
    "RewardInputError",
    "ScoreResult",
    "UnscorableCompletionWarning",
]
