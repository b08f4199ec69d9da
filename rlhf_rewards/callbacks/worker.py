"""``RewardWorkerCallback``: reward workers that get out of the policy's way during training.

A colocated reward model shares the accelerator with the policy. It is only needed while completions are
scored, but by default its weights stay resident through the policy's forward and backward passes, where
memory is tightest. The callback puts such workers to sleep when training begins and wakes each one only for
the duration of its scoring calls: ``wake_up()`` right before the worker's ``encode``, ``sleep()`` as soon as
the last concurrent call returns. So the reward model is resident while TRL scores a generation batch, and
its memory is free again before the policy's loss is computed and backpropagated.

Workers without ``sleep``/``wake_up`` (remote servers, Ray pools) are not touched that way; for every worker
the callback checks ``health()`` when training begins, so a reward server that is down fails the run at once
with its URL instead of after the first (slow) generation batch.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import threading
from typing import Any

from transformers import TrainerCallback

from rlhf_rewards.checks import check_bool
from rlhf_rewards.workers.base import RewardWorker

logger = logging.getLogger(__name__)


def resolve_workers(sources: Any) -> list[RewardWorker]:
    """The distinct workers behind ``sources``: a worker, an object exposing ``.worker`` (such as a
    ``RewardFunction``), or an iterable of those. Plain callables and models (no worker) are skipped, so a
    trainer's whole ``reward_funcs`` list can be passed."""
    if sources is None:
        return []
    items = [sources] if isinstance(sources, RewardWorker) or hasattr(sources, "worker") else list(sources)
    workers: list[RewardWorker] = []
    for item in items:
        worker = item if isinstance(item, RewardWorker) else getattr(item, "worker", None)
        if worker is not None and not any(w is worker for w in workers):
            workers.append(worker)
    return workers


def describe_worker(worker: Any) -> str:
    """A short name for messages: the worker's URL(s) when it has them, else its class and model."""
    for attr in ("url", "base_url", "urls"):
        value = getattr(worker, attr, None)
        if value:
            return ", ".join(map(str, value)) if isinstance(value, list | tuple) else str(value)
    try:
        model = worker.model_info().model
    except Exception:  # noqa: BLE001 - only for a message
        model = None
    return f"{type(worker).__name__}({model})" if model else type(worker).__name__


def _reason(details: dict[str, Any], endpoint: str) -> str:
    """Why ``endpoint`` is down, from a ``WorkerHealth.details`` dict (per-URL entries for remote workers)."""
    entry = details.get(endpoint) if isinstance(details, dict) else None
    if isinstance(entry, dict):
        if entry.get("error"):
            return str(entry["error"])
        if entry.get("marked_down"):
            return "marked down after failing requests"
        if "http_status" in entry:
            return f"/health answered HTTP {entry['http_status']}"
    return str(details) if details else "down"


def is_sleepable(worker: Any) -> bool:
    """Whether ``worker`` can release its accelerator memory (``sleep``/``wake_up``, as ``ColocatedWorker``)."""
    return callable(getattr(worker, "sleep", None)) and callable(getattr(worker, "wake_up", None))


class _ScoringGuard:
    """Wraps one worker's ``encode``/``aencode`` so it is awake exactly while calls are running.

    Calls are counted, so concurrent scoring (TRL runs async reward functions together) wakes the worker
    once and puts it back to sleep only after the last call returns.
    """

    def __init__(self, worker: Any) -> None:
        self.worker = worker
        self.active = 0
        self.lock = threading.Lock()
        self.patched: list[str] = []

    def enter(self) -> None:
        with self.lock:
            if self.active == 0 and self.worker.is_sleeping:
                self.worker.wake_up()
            self.active += 1

    def exit(self) -> None:
        with self.lock:
            self.active -= 1
            if self.active == 0 and not self.worker.is_sleeping:
                self.worker.sleep()

    def install(self) -> None:
        worker = self.worker
        encode = worker.encode

        @functools.wraps(encode)
        def guarded_encode(*args: Any, **kwargs: Any) -> Any:
            self.enter()
            try:
                return encode(*args, **kwargs)
            finally:
                self.exit()

        worker.encode = guarded_encode
        self.patched.append("encode")
        # The base class's aencode runs self.encode in a thread (already guarded); an own one is wrapped too.
        if type(worker)._aencode is not RewardWorker._aencode:
            aencode = worker.aencode

            @functools.wraps(aencode)
            async def guarded_aencode(*args: Any, **kwargs: Any) -> Any:
                await asyncio.to_thread(self.enter)  # waking moves weights: keep the event loop free
                try:
                    return await aencode(*args, **kwargs)
                finally:
                    await asyncio.to_thread(self.exit)

            worker.aencode = guarded_aencode
            self.patched.append("aencode")

    def uninstall(self) -> None:
        for name in self.patched:
            self.worker.__dict__.pop(name, None)
        self.patched.clear()


class RewardWorkerCallback(TrainerCallback):
    """Manages reward workers over a training run (any transformers/TRL trainer).

    - ``on_train_begin``: checks ``health()`` of every worker and raises ``RuntimeError`` naming the workers
      (URLs for remote and Ray workers) that cannot serve. Then puts every sleepable worker
      (``ColocatedWorker``) to sleep.
    - While training: a sleeping worker wakes for each scoring call and goes back to sleep when it returns,
      so its accelerator memory is free during the policy's forward/backward passes.
    - ``on_train_end``: wakes the workers and restores them as they were, for scoring after training.

    Args:
        workers: Reward workers, objects exposing ``.worker`` (``RewardFunction``), or a mix; the trainer's
            ``reward_funcs`` list can be passed as is (entries without a worker are ignored).
        sleep: Put sleepable workers to sleep between scoring calls. Default True.
        check_health: Check every worker's health when training begins. Default True.
        require_all_endpoints: Fail when any URL (or replica) of a worker is down, even if the worker could
            still serve through the others. A URL given to the run is meant to work, and a dead one costs a
            failed attempt and a retry on many requests. With ``False`` a partly-down worker only logs a
            warning naming the URLs; a worker with no endpoint up always fails the run. Default True.

    Example::

        reward = RewardFunction("Skywork/Skywork-Reward-V2-Qwen3-0.6B")
        trainer = GRPOTrainer(model=..., reward_funcs=[reward], args=...,
                              callbacks=[RewardWorkerCallback([reward])])
    """

    def __init__(
        self,
        workers: Any,
        *,
        sleep: bool = True,
        check_health: bool = True,
        require_all_endpoints: bool = True,
    ) -> None:
        for flag, value in (
            ("sleep", sleep),
            ("check_health", check_health),
            ("require_all_endpoints", require_all_endpoints),
        ):
            check_bool(flag, value)
        self.workers = resolve_workers(workers)
        self.sleep = sleep
        self.check_health = check_health
        self.require_all_endpoints = require_all_endpoints
        self._guards: list[_ScoringGuard] = []

    def check_workers(self) -> None:
        """Raise ``RuntimeError`` if any worker is unhealthy (or, with ``require_all_endpoints``, has any URL
        down), naming every URL that is down and why."""
        problems = []
        for worker in self.workers:
            try:
                health = worker.health()
            except Exception as exc:  # noqa: BLE001 - an unreachable worker may raise instead of answering
                problems.append(f"{describe_worker(worker)}: {type(exc).__name__}: {exc}")
                continue
            if health.ok and not health.down:
                continue
            down = list(health.down) or [describe_worker(worker)]
            reasons = "; ".join(f"{url} ({_reason(health.details, url)})" for url in down)
            if health.ok and not self.require_all_endpoints:
                logger.warning(
                    "Reward worker %s is serving, but these endpoints are down: %s",
                    describe_worker(worker),
                    reasons,
                )
                continue
            problems.append(reasons)
        if problems:
            raise RuntimeError(
                "Reward worker endpoint(s) down before training (set require_all_endpoints=False to train on "
                "with the URLs that are up): "
                + "; ".join(problems)
                + ". Start the reward server(s) (`rlhf-rewards serve ...`) or fix the URL(s), then retry."
            )

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        """Check the workers' health and start keeping sleepable workers asleep outside scoring."""
        if self.check_health:
            self.check_workers()
        if self.sleep and not self._guards:
            for worker in self.workers:
                if not is_sleepable(worker):
                    continue
                guard = _ScoringGuard(worker)
                guard.install()
                self._guards.append(guard)
                if not worker.is_sleeping:
                    worker.sleep()
            if self._guards:
                logger.info(
                    "Reward workers sleep outside scoring: %s",
                    [describe_worker(g.worker) for g in self._guards],
                )

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        """Remove the guards; wake the workers that were put to sleep."""
        for guard in self._guards:
            guard.uninstall()
            if guard.worker.is_sleeping:
                guard.worker.wake_up()
        self._guards.clear()
