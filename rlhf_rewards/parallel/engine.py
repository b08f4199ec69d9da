"""``ParallelEngine``: what ``LLM`` does differently when ``tensor_parallel_size * pipeline_parallel_size > 1``.

``LLM.__init__`` calls :meth:`ParallelEngine.start` before loading anything (the split is checked against
``config.json`` first, then the worker processes start), loads the model with :attr:`sharding`, passes it
through :meth:`adopt` and its runner through :meth:`lockstep`; if its own start-up fails it calls
:meth:`abort` so the workers do not wait for it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import torch

from rlhf_rewards.models.base import PoolingModel
from rlhf_rewards.parallel import group as group_module
from rlhf_rewards.parallel.config import ParallelConfig
from rlhf_rewards.parallel.group import ParallelGroup, WorkerFailed, handshake, rank_device, start_group
from rlhf_rewards.parallel.lockstep import LockstepRunner
from rlhf_rewards.parallel.plan import check_split
from rlhf_rewards.parallel.sharding import as_pipeline_stage, resident_parameter_bytes, sharding_kwargs

logger = logging.getLogger(__name__)


class ParallelEngine:
    """One rank's share of a split engine.

    Attributes:
        config: The sizes.
        group: The processes (:class:`~rlhf_rewards.parallel.group.ParallelGroup`).
        device: This rank's device (``cuda:rank`` on CUDA).
        resident_bytes: Bytes of the parameters this rank holds, once the model is adopted.
    """

    def __init__(self, config: ParallelConfig, group: ParallelGroup, device: torch.device) -> None:
        self.config = config
        self.group = group
        self.device = device
        self.resident_bytes: int | None = None

    @classmethod
    def start(cls, config: ParallelConfig, *, model: str, config_dict: dict[str, Any], device: torch.device,
              enable_lora: bool, factory: Callable[..., Any], kwargs: dict[str, Any]) -> ParallelEngine:
        """Check the split (before any weights load), then join or start the ranks' processes."""
        check_split(config, config_dict, device=device, enable_lora=enable_lora, model=model)
        group = start_group(config, device, factory, kwargs)
        group_module.ACTIVE = group
        return cls(config, group, rank_device(device, group.rank))

    @property
    def rank(self) -> int:
        """This process's global rank."""
        return self.group.rank

    @property
    def sharding(self) -> Callable[[type, Any], dict[str, Any]]:
        """The ``sharding`` hook of ``load_pooling_model`` (transformers' ``distributed_config``)."""
        return sharding_kwargs(self.config)

    def adopt(self, model: PoolingModel) -> PoolingModel:
        """The loaded shard, with a pipeline stage's forward when ``pipeline_parallel_size > 1``."""
        if self.config.pipeline_parallel_size > 1:
            model = as_pipeline_stage(model)
        self.resident_bytes = resident_parameter_bytes(model)
        logger.info("rank %d/%d holds %.1f MiB of parameters", self.rank, self.config.world_size,
                    self.resident_bytes / 2**20)
        return model

    def lockstep(self, runner: Any) -> LockstepRunner:
        """``runner`` run on every rank at once; waits until every rank has loaded its shard."""
        wrapped = LockstepRunner(runner, self.group)
        try:
            wrapped.ready()
        except WorkerFailed:
            self.group.close(stop_workers=False)  # every rank learnt of the failure and exits
            raise
        return wrapped

    def abort(self, error: BaseException) -> None:
        """This rank failed to start: tell the others (so none waits for it), then tear the group down."""
        if not self.group.handshake_done:
            try:
                handshake(self.group, error)
            except WorkerFailed:
                pass
            except Exception as exc:  # noqa: BLE001 - the group itself is broken: nothing left to tell
                logger.debug("could not report the start-up failure to the other ranks: %s", exc)
        self.group.close(stop_workers=False)  # the workers failed their start too, or learnt of ours: they exit

    def close(self) -> None:
        """Stop the workers (rank 0 of an engine-started group)."""
        self.group.close()


__all__ = ["ParallelEngine"]
