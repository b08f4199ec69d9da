"""``RewardFunctionBase``: what :class:`~rlhf_rewards.reward.RewardFunction` and
:class:`~rlhf_rewards.reward.AsyncRewardFunction` share: construction from a source and a config, and the
bookkeeping around a call (warnings, listeners, TRL's ``log_metric``, error wrapping).
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable
from typing import Any

from rlhf_rewards.contract import ModelInfo
from rlhf_rewards.reward.config import RewardFunctionConfig, resolve_config
from rlhf_rewards.reward.errors import (
    RewardFunctionError,
    RewardInputError,
    UnscorableCompletionWarning,
    wrap_error,
)
from rlhf_rewards.reward.judge import JudgePlan
from rlhf_rewards.reward.kinds import resolve_kind, resolve_step_tag
from rlhf_rewards.reward.plan import ScoringPlan
from rlhf_rewards.reward.readout import ProcessReadout, ScoreResult
from rlhf_rewards.reward.source import default_name, make_worker, source_recipe
from rlhf_rewards.workers.base import RewardWorker


class RewardFunctionBase:
    """Construction and call bookkeeping shared by the sync and async reward functions.

    Args:
        source: A model path or hub id, an :class:`~rlhf_rewards.LLM`, or a
            :class:`~rlhf_rewards.workers.base.RewardWorker` (see :func:`~rlhf_rewards.reward.source.make_worker`).
        config: A :class:`~rlhf_rewards.reward.config.RewardFunctionConfig`. Default ``None``: the defaults.
        **overrides: Fields of the config to set (on a copy of ``config``). An unknown name is a ``TypeError``.
    """

    def __init__(self, source: Any, config: RewardFunctionConfig | None = None, **overrides: Any) -> None:
        self.config: RewardFunctionConfig = resolve_config(config, overrides, f"{type(self).__name__}()")
        self._worker: RewardWorker | None
        self._worker, self._owns_worker = make_worker(source, self.config)
        self._recipe = source_recipe(source)
        self.model_info: ModelInfo = self._worker.model_info()
        self.__name__ = self.config.name or default_name(self.model_info, self.config)
        self.kind = resolve_kind(self.config.kind, self.model_info, self._owner)
        self.step_tag = resolve_step_tag(self.kind, self.config.step_tag, self.model_info, self._owner)
        self._scoring = self._plan()
        self.pooling_task = self._scoring.pooling_task
        self._call_listeners: list[Callable[[list[float | None], float], None]] = []

    @property
    def worker(self) -> RewardWorker:
        """The worker this function scores with (in a process it was unpickled in, a model given by path is
        loaded here, on first use)."""
        if self._worker is None:
            kind, model = self._recipe
            assert kind == "path", kind
            self._worker, self._owns_worker = make_worker(model, self.config)
        return self._worker

    # ------------------------------------------------------------------ pickling (TRL's AsyncGRPOTrainer)
    def __getstate__(self) -> dict[str, Any]:
        """What crosses to another process: the settings and model facts, and how to reach the model.

        TRL's ``AsyncGRPOTrainer`` pickles ``reward_funcs`` into a spawned child process. A function built
        from a model path reloads it there on its first call; one on a ``RemoteWorker`` or ``RayWorkerPool``
        reconnects to the same servers or replicas. Call listeners stay in this process.
        """
        kind, what = self._recipe
        if kind == "in_memory":
            raise TypeError(
                f"{self._owner} cannot be pickled: it scores with {what}, and a model in this process's memory "
                "cannot move to another process (TRL's AsyncGRPOTrainer pickles reward_funcs into a spawned "
                "child). Pass the model path instead (e.g. RewardFunction('path/to/rm', llm_kwargs={...}) reloads "
                "it in the child on first use), or a RemoteWorker / RayWorkerPool, which reconnect there."
            )
        state = dict(self.__dict__)
        state["_call_listeners"] = []
        state.pop("_scoring", None)  # rebuilt from the config and model facts
        if kind == "path":
            state["_worker"], state["_owns_worker"] = None, False
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._scoring = self._plan()

    def _plan(self) -> Any:
        """The scoring plan of the function's kind (a judge's is :class:`~rlhf_rewards.reward.judge.JudgePlan`)."""
        if self.kind == "judge":
            return JudgePlan(self.config, self.model_info)
        return ScoringPlan(self.config, self.model_info, self.kind, self.step_tag)

    @property
    def _owner(self) -> str:
        return f"{type(self).__name__} {self.__name__!r} (model {self.model_info.model})"

    def step_column(self, k: int) -> int:
        """The column of a ``[n_steps, k]`` STEP output that holds the step reward (see ``step_score_column``)."""
        readout = self._scoring.readout
        if not isinstance(readout, ProcessReadout):
            readout = ProcessReadout(self.config, self.model_info, self.step_tag)
        return readout.column(k, self._owner)

    # ------------------------------------------------------------------ around a call
    def _begin(self, return_steps: bool) -> float:
        """Check the call's own options and start its clock (the latency TRL logs)."""
        if return_steps and self.kind != "process":
            raise RewardInputError(
                f"{self._owner}: return_steps=True is only for process reward models (kind={self.kind!r})."
            )
        return time.perf_counter()

    def _wrap(self, exc: Exception) -> RewardFunctionError:
        return wrap_error(exc, self._owner)

    def _finish(
        self,
        result: ScoreResult,
        started: float,
        return_steps: bool,
        kwargs: dict[str, Any],
        stacklevel: int = 3,
    ) -> Any:
        """Warn about unscored completions, notify listeners, log TRL metrics, and shape the return value
        (``stacklevel``: frames from here to the user's call, so the warning names the caller's line)."""
        n = len(result.rewards)
        if result.unscored:
            shown = "; ".join(f"item {i}: {why}" for i, why in sorted(result.unscored.items())[:5])
            more = f" (and {len(result.unscored) - 5} more)" if len(result.unscored) > 5 else ""
            warnings.warn(
                f"{self._owner}: {len(result.unscored)} of {n} completion(s) cannot be scored and get reward "
                f"None: {shown}{more}.",
                UnscorableCompletionWarning,
                stacklevel=stacklevel,
            )
        seconds = time.perf_counter() - started
        for listener in self._call_listeners:
            listener(list(result.rewards), seconds)
        log_metric = kwargs.get("log_metric")
        if callable(log_metric) and n:
            log_metric(f"rewards/{self.__name__}/latency_s", seconds)
            log_metric(f"rewards/{self.__name__}/tokens_scored", float(result.tokens))
            log_metric(f"rewards/{self.__name__}/unscored_frac", len(result.unscored) / n)
        if return_steps:
            return result.rewards, result.steps
        return result.rewards

    # ------------------------------------------------------------------ public helpers
    def add_call_listener(self, listener: Callable[[list[float | None], float], None]) -> None:
        """Call ``listener(rewards, seconds)`` after every successful call: the rewards returned (``None`` for
        unscorable completions) and the call's wall time. Used by
        :class:`~rlhf_rewards.callbacks.RewardMetricsCallback`; listeners run in the calling thread."""
        self._call_listeners.append(listener)

    def close(self) -> None:
        """Close the worker if this function created it (a model loaded from a path)."""
        if self._owns_worker and self._worker is not None:
            self._worker.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.__name__!r}, model={self.model_info.model!r}, kind={self.kind!r})"


__all__ = ["RewardFunctionBase"]
