"""``RewardMetricsCallback``: per-reward-function latency, throughput, retries and score distribution in the logs.

TRL logs ``rewards/<name>/mean`` and ``/std`` per reward function. What it cannot see is how the reward
*service* behaves: how long scoring took, how fast the worker went, whether requests were retried or failed,
and how many completions got no score at all. This callback adds, at every logging step and for every reward
function ``<name>`` (TRL's name for it: ``__name__``, else the class name):

============================== =================================================================
``rewards/<name>/latency_s``    mean wall time of one reward-function call (one generation batch)
``rewards/<name>/tokens_per_s`` tokens the worker scored per second of its busy time
``rewards/<name>/retries``      attempts the worker retried after a failure (remote/Ray workers)
``rewards/<name>/failures``     requests that failed after all retries (failed attempts not retried)
``rewards/<name>/raw_mean``     mean of the raw scores returned to the trainer (``None`` excluded)
``rewards/<name>/raw_std``      their sample standard deviation
``rewards/<name>/raw_min``      their minimum
``rewards/<name>/raw_max``      their maximum
``rewards/<name>/raw_none_frac`` fraction of completions that got ``None`` or NaN instead of a score
============================== =================================================================

Figures cover everything since the previous log, summed or pooled over all processes of a distributed run.
A key already in the logs is left alone: ``RewardFunction`` logs its own ``latency_s`` (and
``tokens_scored``, ``unscored_frac``) per call through TRL's ``log_metric``, so for it the callback adds the
rest.
Worker figures come from the worker's :class:`~rlhf_rewards.workers.WorkerStats` counters (so reward
functions sharing one worker report the same worker figures). Call figures (latency, raw scores) come from
the reward function's call listeners: :meth:`rlhf_rewards.reward.RewardFunction.add_call_listener`.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
import sys
import threading
from collections.abc import Sequence
from typing import Any

from transformers import TrainerCallback
from transformers.trainer_callback import CallbackHandler, DefaultFlowCallback

from rlhf_rewards.workers.base import WorkerStats

_STAT_FIELDS = ("requests", "tokens", "retries", "failures", "busy_seconds")


def reward_function_name(func: Any) -> str:
    """The name TRL logs a reward function under (``rewards/<name>/mean``): ``__name__``, else the class name."""
    from trl.trainer.utils import get_callable_name

    return get_callable_name(func)


class _Tracked:
    """What one reward function did since the last log (on this process)."""

    def __init__(self, func: Any) -> None:
        self.func = func
        self.name = reward_function_name(func)
        self.worker = getattr(func, "worker", None)
        self.lock = threading.Lock()
        self.calls = 0
        self.seconds = 0.0
        self.scores: list[float] = []  # None becomes NaN
        self.baseline = self._stats()

    def _stats(self) -> WorkerStats | None:
        stats = getattr(self.worker, "stats", None)
        return dataclasses.replace(stats) if isinstance(stats, WorkerStats) else None

    def on_call(self, scores: Sequence[float | None], seconds: float) -> None:
        # Called by the reward function after each call, from whatever thread ran it (TRL awaits async
        # reward functions on its own event-loop thread).
        values = [math.nan if s is None else float(s) for s in scores]
        with self.lock:
            self.calls += 1
            self.seconds += seconds
            self.scores.extend(values)

    def drain(self) -> dict[str, Any]:
        """This process's figures since the last drain, as a picklable dict (counters are reset)."""
        with self.lock:
            out: dict[str, Any] = {"calls": self.calls, "seconds": self.seconds, "scores": self.scores}
            self.calls, self.seconds, self.scores = 0, 0.0, []
        now = self._stats()
        if now is not None and self.baseline is not None:
            out.update({f: getattr(now, f) - getattr(self.baseline, f) for f in _STAT_FIELDS})
            self.baseline = now
        return out


def summarize(name: str, parts: Sequence[dict[str, Any]]) -> dict[str, float]:
    """Log entries for reward function ``name`` from the drained figures of every process."""
    calls = sum(p["calls"] for p in parts)
    seconds = sum(p["seconds"] for p in parts)
    scores = [s for p in parts for s in p["scores"]]
    has_worker = any("tokens" in p for p in parts)
    busy = sum(p.get("busy_seconds", 0.0) for p in parts)
    requests = sum(p.get("requests", 0) for p in parts)
    logs: dict[str, float] = {}
    prefix = f"rewards/{name}/"
    if calls:
        logs[prefix + "latency_s"] = seconds / calls
    elif requests:
        logs[prefix + "latency_s"] = busy / requests
    if has_worker and (requests or calls):
        if busy > 0:
            logs[prefix + "tokens_per_s"] = sum(p.get("tokens", 0) for p in parts) / busy
        retries = sum(p.get("retries", 0) for p in parts)
        logs[prefix + "retries"] = float(retries)
        # WorkerStats.failures counts failed attempts; every retry follows one, so the attempts that were not
        # retried are the requests that failed for good.
        logs[prefix + "failures"] = float(max(0, sum(p.get("failures", 0) for p in parts) - retries))
    if scores:
        valid = [s for s in scores if not math.isnan(s)]
        logs[prefix + "raw_none_frac"] = 1.0 - len(valid) / len(scores)
        if valid:  # no NaN in logs: JSON loggers reject it, and TRL drops empty metrics the same way
            logs[prefix + "raw_mean"] = statistics.fmean(valid)
            logs[prefix + "raw_std"] = statistics.stdev(valid) if len(valid) > 1 else 0.0
            logs[prefix + "raw_min"] = min(valid)
            logs[prefix + "raw_max"] = max(valid)
    return logs


class RewardMetricsCallback(TrainerCallback):
    """Adds per-reward-function service figures and raw-score statistics to the trainer's logs.

    The entries (see the module docstring for the list) are added to ``logs`` in ``on_log`` and to the
    matching ``state.log_history`` entry, so they reach the console, ``trainer.state.log_history`` and every
    reporting integration (wandb, tensorboard, trackio...). Integrations only see entries added before they
    run, so the first time the trainer calls it, the callback moves itself right after the trainer's
    ``DefaultFlowCallback``, ahead of them.

    In a distributed run every process's figures are gathered at each log (all processes log together), so
    the numbers cover the whole run, not just the main process. Evaluation logs get the ``eval_`` prefix.

    Args:
        reward_funcs: The trainer's reward functions (or a subset). Reward functions with call listeners
            (``RewardFunction``) give latency and raw scores; any with a ``.worker`` gives worker figures.
            Other entries (model ids, plain functions) are ignored.
        gather: Pool figures across processes when training is distributed. Default True.

    Example::

        reward = RewardFunction("Skywork/Skywork-Reward-V2-Qwen3-0.6B")
        trainer = GRPOTrainer(..., reward_funcs=[reward], callbacks=[RewardMetricsCallback([reward])])
    """

    def __init__(self, reward_funcs: Any, *, gather: bool = True) -> None:
        funcs = reward_funcs if isinstance(reward_funcs, list | tuple) else [reward_funcs]
        self.tracked: list[_Tracked] = []
        for func in funcs:
            add_listener = getattr(func, "add_call_listener", None)
            if not callable(add_listener) and getattr(func, "worker", None) is None:
                continue
            tracked = _Tracked(func)
            if callable(add_listener):
                add_listener(tracked.on_call)
            self.tracked.append(tracked)
        self.gather = gather

    # ------------------------------------------------------------------ ordering
    def _move_ahead_of_loggers(self) -> None:
        # Our caller is CallbackHandler.call_event; reorder its list (a new list, so the loop running now is
        # undisturbed) to put us right after DefaultFlowCallback, before the reporting integrations.
        frame = sys._getframe(1)
        for _ in range(3):
            if frame is None:
                return
            handler = frame.f_locals.get("self")
            if isinstance(handler, CallbackHandler):
                break
            frame = frame.f_back
        else:
            return
        others = [cb for cb in handler.callbacks if cb is not self]
        position = 0
        for i, cb in enumerate(others):
            if isinstance(cb, DefaultFlowCallback):
                position = i + 1
        handler.callbacks = others[:position] + [self] + others[position:]

    def on_init_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        """Run before the trainer's loggers, so they log this callback's figures."""
        self._move_ahead_of_loggers()

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        """Run before the trainer's loggers, so they log this callback's figures."""
        self._move_ahead_of_loggers()  # also covers trainer.add_callback after construction

    # ------------------------------------------------------------------ logging
    def collect(self) -> dict[str, float]:
        """Drain every tracked function's figures (gathering across processes) into log entries."""
        local = [t.drain() for t in self.tracked]
        per_process = [local]
        if self.gather and self.tracked:
            import torch.distributed as dist

            if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
                gathered: list[Any] = [None] * dist.get_world_size()
                dist.all_gather_object(gathered, local)
                per_process = gathered
        logs: dict[str, float] = {}
        for i, tracked in enumerate(self.tracked):
            logs.update(summarize(tracked.name, [p[i] for p in per_process]))
        return logs

    def on_log(
        self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kwargs: Any
    ) -> None:
        """Add the reward workers' figures to ``logs``."""
        if logs is None:
            return
        entries = self.collect()
        if not entries:
            return
        if any(key.startswith("eval_") for key in logs):
            entries = {f"eval_{key}": value for key, value in entries.items()}
        # A figure the reward function already logs itself (RewardFunction's latency_s, through TRL's
        # log_metric) is kept as it is.
        entries = {key: value for key, value in entries.items() if key not in logs}
        logs.update(entries)
        # Trainer.log stored a copy of `logs` in log_history before calling us: update it too.
        if state.log_history and state.log_history[-1].get("step") == state.global_step:
            state.log_history[-1].update(entries)
