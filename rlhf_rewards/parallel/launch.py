"""The processes of one split engine: started by the engine itself (as vLLM does), or by ``torchrun``.

**Engine-started** (the default). The process that builds ``LLM(..., tensor_parallel_size=N)`` is the *driver*: it
tokenizes, schedules and returns the outputs, holds no weights and joins no process group, so its own
``torch.distributed`` state (a trainer's) is never touched, and any number of split engines can live in it at
once. It starts ``N * M`` worker processes (:class:`~rlhf_rewards.parallel.worker_pool.WorkerPool`, ``spawn``),
one per rank: rank ``r`` runs on ``cuda:r`` (``nccl``) or on the CPU (``gloo``). The workers meet in their own processes' default group, over a
``TCPStore`` the driver owns (one per engine, on ``127.0.0.1`` at a port the OS picks), build the same ``LLM``
(each loading its shard), then serve calls. Each worker has one pipe to the driver for calls and results, and
its stderr piped to the driver, which forwards it and keeps the last lines for error messages.

Every wait of the driver watches the pipes and the processes together (``multiprocessing.connection.wait`` on
both), so a worker that exits is reported at once, with its exit code and the end of its stderr; a worker that
is alive but silent is given up on after :attr:`~rlhf_rewards.parallel.config.ParallelConfig.start_timeout_s`
(start-up) or :attr:`~rlhf_rewards.parallel.config.ParallelConfig.call_timeout_s` (without progress in a call).
A worker waits for the next call without any bound (an idle server), and exits when the driver closes its pipe,
sends stop, or is gone.

**torchrun** (``torchrun --nproc-per-node N script.py``): ``torch.distributed`` is already initialized (by the
user, or here from torchrun's environment) with ``world_size == tensor_parallel_size * pipeline_parallel_size``;
every rank runs the script and calls ``encode`` (SPMD, as vLLM's ``external_launcher``); rank 0's prompts are the
ones scored, and every rank gets the outputs (:class:`~rlhf_rewards.parallel.spmd.SpmdGroup`). The user's group
is used, never destroyed.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from rlhf_rewards.parallel.config import ParallelConfig
from rlhf_rewards.parallel.group import ParallelGroup, bind_device, device_id_kwargs
from rlhf_rewards.parallel.main_guard import check_main_guard
from rlhf_rewards.parallel.spmd import SpmdGroup
from rlhf_rewards.parallel.worker import WORKER_ENV, spawned_group
from rlhf_rewards.parallel.worker_pool import WorkerPool

logger = logging.getLogger(__name__)


def start_group(
    config: ParallelConfig,
    device: torch.device,
    factory: Callable[..., Any],
    kwargs: dict[str, Any],
    model: str = "the model",
) -> ParallelGroup:
    """This process's group: a spawned worker's, a torchrun rank's, or (the default) a driver starting its workers.

    ``factory(**kwargs)`` is what each spawned worker builds (the ``LLM`` class and this engine's arguments).
    """
    backend = "nccl" if device.type == "cuda" else "gloo"
    spawned = spawned_group(config)
    if spawned is not None:
        return spawned
    start_timeout = timedelta(seconds=float(config.start_timeout_s or 0))
    created = False
    if not dist.is_initialized() and _launched_by_torchrun():
        world = int(os.environ["WORLD_SIZE"])
        if world != config.world_size:
            raise ValueError(
                f"torchrun started {world} processes (WORLD_SIZE), but tensor_parallel_size * pipeline_parallel_size "
                f"= {config.world_size}; allowed: torchrun --nproc-per-node {config.world_size}."
            )
        local_rank = int(os.environ.get("LOCAL_RANK", os.environ["RANK"]))
        bind_device(device, local_rank)
        dist.init_process_group(
            backend,
            init_method="env://",
            timeout=start_timeout,
            **device_id_kwargs(device, local_rank, backend),
        )
        created = True
    if dist.is_initialized():
        world = dist.get_world_size()
        if world == config.world_size:
            rank = dist.get_rank()
            bind_device(device, int(os.environ.get("LOCAL_RANK", rank)))
            control = dist.new_group(backend="gloo", timeout=start_timeout)
            return SpmdGroup(config, rank, control, destroy_default_on_close=created)
        # The process's own group (a trainer's) has another size: it is not a launch of this engine's ranks.
        # Leave it alone and start this engine's own workers, as in a plain process.
        logger.info(
            "torch.distributed is initialized with world_size=%d, not tensor_parallel_size * "
            "pipeline_parallel_size = %d: this engine starts its own %d worker processes and leaves that "
            "group alone.",
            world,
            config.world_size,
            config.world_size,
        )
    check_main_guard()
    return WorkerPool(config, backend, factory, kwargs, model)


def _launched_by_torchrun() -> bool:
    """``torchrun`` (or another launcher setting the ``env://`` variables) started this process as one rank."""
    if os.environ.get(WORKER_ENV) is not None:
        return False
    return "TORCHELASTIC_RUN_ID" in os.environ or all(
        k in os.environ for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
    )


__all__ = ["start_group"]
