"""Every rank runs the same micro-batches, in the same order: each call's requests reach every rank.

The driver's engine tokenizes, validates and builds the :class:`~rlhf_rewards.engine.request.EngineRequest` s as
it does in one process; :meth:`LockstepRunner.run` hands them to every rank, and every rank calls the same
:class:`~rlhf_rewards.engine.runner.ModelRunner` ``run`` on them. The runner's schedule (prefix forest, packing,
budgets, the padded fallback) is a pure function of the requests, so all ranks cut the same forwards and meet in
the same collectives (tensor-parallel all-reduces, pipeline sends). The output rank (tensor shard 0 of the last
pipeline stage) returns the scores.

* Engine-started (:class:`~rlhf_rewards.parallel.worker_pool.WorkerPool`): the driver sends the requests down each
  worker's pipe; the workers run them (:meth:`LockstepRunner.serve`) and answer, the output rank with the
  outputs and a progress message per micro-batch. The driver's wait is bounded and watches the processes.
* torchrun (:class:`~rlhf_rewards.parallel.spmd.SpmdGroup`): rank 0 broadcasts them over the engine's control
  group; with pipeline stages the last stage's outputs are broadcast back. An error raised by the runner is raised
  on every rank.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from typing import Any

import torch

from rlhf_rewards.engine.request import EngineRequest
from rlhf_rewards.parallel.group import ParallelGroup, WorkerFailed
from rlhf_rewards.parallel.messages import RemoteError, pack_outputs
from rlhf_rewards.parallel.spmd import SpmdGroup, handshake
from rlhf_rewards.parallel.worker import WorkerGroup
from rlhf_rewards.parallel.worker_pool import WorkerPool

logger = logging.getLogger(__name__)


class LockstepRunner:
    """A :class:`~rlhf_rewards.engine.runner.ModelRunner` run on every rank of ``group`` at once.

    Attribute reads (``last_stats``, ``packing``...) go to this process's own runner; on a driver, ``last_stats``
    is the output rank's, copied back after each call.
    """

    def __init__(self, runner: Any, group: ParallelGroup) -> None:
        self.runner = runner
        self.group = group

    def __getattr__(self, name: str) -> Any:
        return getattr(self.__dict__["runner"], name)

    def ready(self, error: BaseException | None = None) -> None:
        """Wait until every rank has built its shard; a failure anywhere is raised here (and the workers stopped)."""
        if isinstance(self.group, WorkerPool):
            if error is None:
                self.group.wait_ready()
        elif isinstance(self.group, SpmdGroup):
            handshake(self.group, error)

    def run(
        self, requests: list[EngineRequest], on_batch_done: Callable[[int], None] | None = None
    ) -> list[torch.Tensor]:
        """The driver's (or, under torchrun, rank 0's) ``requests`` run on every rank; the outputs (float32 CPU
        tensors, request order)."""
        group = self.group
        if isinstance(group, WorkerPool):
            outputs, stats = group.call(requests, on_batch_done)
            self.runner.last_stats = stats
            return outputs
        if not isinstance(group, SpmdGroup):
            raise RuntimeError("a spawned worker runs the calls its driver sends (serve()), not its own.")
        if group.closed:
            raise RuntimeError("this split engine was closed (shutdown()); build a new LLM to score again.")
        message = group.broadcast(("run", requests))
        return self._step(group, message[1], on_batch_done if group.is_driver else None)

    def _step(
        self, group: SpmdGroup, requests: list[EngineRequest], on_batch_done: Callable[[int], None] | None
    ) -> list[torch.Tensor]:
        outcome: Any
        try:
            outcome = self.runner.run(requests, on_batch_done)
        except Exception as exc:  # noqa: BLE001 - every rank fails alike; raised below
            outcome = exc
        config = group.config
        if config.pipeline_parallel_size > 1:
            outcome = group.broadcast(outcome, src=config.output_rank)
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    def serve(self) -> None:
        """A spawned worker's loop: run each call the driver sends, answer it, until stop (or the driver is gone).

        Waiting for the next call has no time limit (an idle server may wait hours); the driver bounds its own
        wait for the answer.
        """
        group = self.group
        if not isinstance(group, WorkerGroup):
            raise RuntimeError("serve() runs in a spawned worker of a split engine.")
        channel = group.channel
        is_output = group.rank == group.config.output_rank
        while True:
            message = channel.receive()
            if message is None or message[0] == "stop":
                return
            _, call_id, requests = message
            progress = (lambda n, c=call_id: channel.send(("progress", c, n))) if is_output else None
            try:
                outputs = self.runner.run(requests, progress)
            except Exception as exc:  # noqa: BLE001 - the driver raises it (or declares the ranks out of step)
                logger.debug("rank %d: call %d failed: %s", group.rank, call_id, exc)
                channel.send(("error", call_id, RemoteError.capture(exc)))
                continue
            if is_output:
                channel.send(
                    ("done", call_id, pack_outputs(outputs), dataclasses.replace(self.runner.last_stats))
                )
            else:
                channel.send(("done", call_id, None, None))

    def close(self) -> None:
        """Stop the workers (driver) or release the control group (torchrun)."""
        self.group.close()


__all__ = ["LockstepRunner", "WorkerFailed"]
