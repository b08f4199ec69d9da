"""Every rank runs the same micro-batches, in the same order: rank 0 broadcasts each call's requests.

Rank 0's engine tokenizes, validates and builds the :class:`~rlhf_rewards.engine.request.EngineRequest` s as
it does in one process; :meth:`LockstepRunner.run` broadcasts them over the control group, then every rank
calls the same :class:`~rlhf_rewards.engine.runner.ModelRunner` ``run`` on them. The runner's schedule
(prefix forest, packing, budgets, the padded fallback) is a pure function of the requests, so all ranks cut
the same forwards and meet in the same collectives (tensor-parallel all-reduces, pipeline sends). The scores
of the last pipeline stage are sent back to rank 0 (with tensor parallelism alone, rank 0 computes them).
An error raised by the runner is raised on rank 0 and swallowed by the workers, which wait for the next call.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import torch

from rlhf_rewards.engine.request import EngineRequest
from rlhf_rewards.parallel.group import ParallelGroup, WorkerFailed, handshake

logger = logging.getLogger(__name__)


class LockstepRunner:
    """A :class:`~rlhf_rewards.engine.runner.ModelRunner` run on every rank of ``group`` at once.

    Attribute reads (``last_stats``, ``packing``...) go to rank 0's own runner.
    """

    def __init__(self, runner: Any, group: ParallelGroup) -> None:
        self.runner = runner
        self.group = group

    def __getattr__(self, name: str) -> Any:
        return getattr(self.__dict__["runner"], name)

    def ready(self, error: BaseException | None = None) -> None:
        """Start-up handshake: every rank reports whether it built its shard; a failure is raised on every rank."""
        handshake(self.group, error)

    def run(self, requests: list[EngineRequest], on_batch_done: Callable[[int], None] | None = None) -> list[torch.Tensor]:
        """Rank 0's ``requests`` run on every rank; the outputs (float32 CPU tensors, request order) on every caller."""
        if self.group.closed:
            raise RuntimeError("this split engine was closed.")
        message = self.group.broadcast(("run", requests))
        return self._step(message[1], on_batch_done if self.group.is_driver else None)

    def _step(self, requests: list[EngineRequest], on_batch_done: Callable[[int], None] | None) -> list[torch.Tensor]:
        outcome: Any
        try:
            outcome = self.runner.run(requests, on_batch_done)
        except Exception as exc:  # noqa: BLE001 - every rank fails alike; rank 0 raises it below
            outcome = exc
        config = self.group.config
        if config.pipeline_parallel_size > 1:
            outcome = self.group.broadcast(outcome, src=config.output_rank)
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    def serve(self) -> None:
        """A spawned worker's loop: run every call rank 0 broadcasts, until it broadcasts stop."""
        while True:
            message = self.group.broadcast(None)
            if message[0] == "stop":
                return
            try:
                self._step(message[1], None)
            except Exception as exc:  # noqa: BLE001 - rank 0 raised the same error to its caller
                logger.debug("rank %d: call failed as on rank 0: %s", self.group.rank, exc)

    def close(self) -> None:
        """Stop the workers (rank 0 of an engine-started group) and tear the process group down."""
        self.group.close()


__all__ = ["LockstepRunner", "WorkerFailed"]
