"""``SplitModelPart``: what ``LLM`` does differently when ``tensor_parallel_size * pipeline_parallel_size > 1``.

``LLM.__init__`` calls :meth:`SplitModelPart.start` before loading anything (the split is checked against
``config.json`` first, then the worker processes start), loads the model with :attr:`sharding` on :attr:`device`,
passes it through :meth:`adopt` and its runner through :meth:`lockstep`; if its own start-up fails it calls
:meth:`abort` so the workers do not wait for it.

Three roles (:mod:`rlhf_rewards.parallel.launch`):

* the **driver** (a plain process, the default): starts one worker process per rank, loads the model on the
  ``meta`` device only (config, heads' shapes and the tokenizer: what scheduling needs, no weights), and sends
  each call to the workers;
* a spawned **worker**: loads its shard and runs the calls it is sent;
* a **torchrun** rank: loads its shard and runs every call itself, in step with the other ranks.
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Callable
from typing import Any

import torch

from rlhf_rewards.models.base import PoolingModel
from rlhf_rewards.parallel.config import ParallelConfig
from rlhf_rewards.parallel.group import ParallelGroup, WorkerFailed, rank_device
from rlhf_rewards.parallel.launch import start_group
from rlhf_rewards.parallel.lockstep import LockstepRunner
from rlhf_rewards.parallel.plan import check_split
from rlhf_rewards.parallel.sharding import as_pipeline_stage, resident_parameter_bytes, sharding_kwargs
from rlhf_rewards.parallel.spmd import SpmdGroup, handshake
from rlhf_rewards.parallel.worker_pool import WorkerPool

logger = logging.getLogger(__name__)

_META = torch.device("meta")


def _meta_load(cls: type, config: Any) -> dict[str, Any]:
    """The driver's ``from_pretrained`` arguments: the model's structure on ``meta``, no weights read.

    ``use_kernels=False``: the hub-kernel pass refuses the ``meta`` device, and the driver never runs the model.
    """
    return {"device_map": "meta", "use_kernels": False}


class SplitModelPart:
    """This process's part of a model split over several processes (its rank's shard, or the driver's schedule).

    Attributes:
        config: The sizes and time bounds.
        group: The processes (:class:`~rlhf_rewards.parallel.group.ParallelGroup`).
        device: Where this process loads its part: the rank's device on a worker or torchrun rank, ``meta`` on
            the driver (it holds no weights).
        user_device: The device the engine was asked for (what ``LLM.device`` reports).
        resident_bytes: Bytes of the parameters this process holds, once the model is adopted (0 on the driver).
        rank_resident_bytes: On the driver: each rank's ``resident_bytes``, rank order, once started.
    """

    def __init__(
        self, config: ParallelConfig, group: ParallelGroup, device: torch.device, user_device: torch.device
    ) -> None:
        self.config = config
        self.group = group
        self.device = device
        self.user_device = user_device
        self.resident_bytes: int | None = None
        self.rank_resident_bytes: list[int] = []
        if isinstance(group, WorkerPool):
            # Garbage collection of the LLM, and interpreter exit, stop the workers too. The finalizer holds the
            # pool, never this object or the LLM, so it does not keep them alive.
            self._finalizer = weakref.finalize(self, group.close)

    @classmethod
    def start(
        cls,
        config: ParallelConfig,
        *,
        model: str,
        config_dict: dict[str, Any],
        device: torch.device,
        enable_lora: bool,
        factory: Callable[..., Any],
        kwargs: dict[str, Any],
    ) -> SplitModelPart:
        """Check the split (before any weights load), then join or start the ranks' processes."""
        check_split(config, config_dict, device=device, enable_lora=enable_lora, model=model)
        group = start_group(config, device, factory, kwargs, model=model)
        if isinstance(group, WorkerPool):
            return cls(config, group, _META, device)
        rank_dev = rank_device(device, group.rank)
        return cls(config, group, rank_dev, rank_dev)

    @property
    def rank(self) -> int:
        """This process's rank (the driver counts as 0)."""
        return self.group.rank

    @property
    def is_driver_only(self) -> bool:
        """Whether this process only schedules (an engine-started driver) and holds no shard."""
        return isinstance(self.group, WorkerPool)

    @property
    def sharding(self) -> Callable[[type, Any], dict[str, Any]]:
        """The ``sharding`` hook of ``load_pooling_model``: transformers' ``distributed_config`` on a rank, a
        ``meta`` load on the driver."""
        return _meta_load if self.is_driver_only else sharding_kwargs(self.config)

    def adopt(self, model: PoolingModel) -> PoolingModel:
        """The loaded shard, with a pipeline stage's forward when ``pipeline_parallel_size > 1``."""
        if self.is_driver_only:
            self.resident_bytes = 0
            return model
        if self.config.pipeline_parallel_size > 1:
            model = as_pipeline_stage(model)
        self.resident_bytes = resident_parameter_bytes(model)
        logger.info(
            "rank %d/%d holds %.1f MiB of parameters",
            self.rank,
            self.config.world_size,
            self.resident_bytes / 2**20,
        )
        return model

    def lockstep(self, runner: Any) -> LockstepRunner:
        """``runner`` run on every rank at once; waits until every rank has loaded its shard."""
        wrapped = LockstepRunner(runner, self.group)
        try:
            wrapped.ready()
        except WorkerFailed:
            self.group.close()  # the driver has stopped its workers; a torchrun rank releases its control group
            raise
        if isinstance(self.group, WorkerPool):
            self.rank_resident_bytes = [
                int(info.get("resident_bytes") or 0) for info in self.group.ready_info
            ]
        return wrapped

    def abort(self, error: BaseException) -> None:
        """This process failed to start: stop the workers (driver), or tell the other torchrun ranks so none waits
        for it; then tear the group down."""
        group = self.group
        if isinstance(group, WorkerPool):
            group.close(graceful=False)
            return
        if isinstance(group, SpmdGroup) and not group.handshake_done:
            try:
                handshake(group, error)
            except WorkerFailed:
                pass
            except Exception as exc:  # noqa: BLE001 - the group itself is broken: nothing left to tell
                logger.debug("could not report the start-up failure to the other ranks: %s", exc)
        group.close()

    def close(self) -> None:
        """Stop the workers (driver) or release this engine's control group (torchrun); idempotent."""
        self.group.close()


__all__ = ["SplitModelPart"]
