"""``ParallelGroup``: this process's place in a split engine, the base of its three roles.

The roles: the driver of an engine-started engine (:class:`~rlhf_rewards.parallel.worker_pool.WorkerPool`), one
of its spawned workers (:class:`~rlhf_rewards.parallel.worker.WorkerGroup`) and a ``torchrun`` rank
(:class:`~rlhf_rewards.parallel.spmd.SpmdGroup`); :func:`~rlhf_rewards.parallel.launch.start_group` picks one.
Also here: :class:`WorkerFailed` and where a rank runs (:func:`rank_device`).
"""

from __future__ import annotations

import os
from typing import Any, ClassVar

import torch

from rlhf_rewards.parallel.config import ParallelConfig


class WorkerFailed(RuntimeError):
    """A rank of a split engine failed, died or hung; the message says which, and what to do."""


class ParallelGroup:
    """This process's place in a split engine.

    Args:
        config: The sizes and time bounds.
        rank: This process's rank; the driver of an engine-started engine counts as rank 0 (it schedules).
    """

    #: Launched by ``torchrun``: every rank calls ``encode`` itself (:class:`~rlhf_rewards.parallel.spmd.SpmdGroup`).
    spmd: ClassVar[bool] = False
    #: A worker process the driver spawned (:class:`~rlhf_rewards.parallel.worker.WorkerGroup`): never the driver.
    spawned: ClassVar[bool] = False

    def __init__(self, config: ParallelConfig, rank: int) -> None:
        self.config = config
        self.rank = rank
        self.closed = False

    @property
    def world_size(self) -> int:
        """Ranks in the engine."""
        return self.config.world_size

    @property
    def is_driver(self) -> bool:
        """Whether this process schedules the calls and returns the outputs."""
        return self.rank == 0 and not self.spawned

    def close(self) -> None:
        """Release what this group holds (idempotent)."""
        self.closed = True


def set_rank_env(rank: int, world: int) -> None:
    """Set this process's ``RANK``/``LOCAL_RANK``/``WORLD_SIZE`` (one machine)."""
    # transformers binds each rank's accelerator from LOCAL_RANK when it builds its device mesh.
    os.environ.update(
        RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), LOCAL_WORLD_SIZE=str(world)
    )


def bind_device(device: torch.device, rank: int) -> None:
    """Make ``cuda:rank`` this process's current device (on CUDA)."""
    if device.type == "cuda":
        torch.cuda.set_device(rank)


def device_id_kwargs(device: torch.device, rank: int, backend: str) -> dict[str, Any]:
    """``init_process_group``'s ``device_id`` for NCCL (binds the group to the rank's GPU), else nothing."""
    return {"device_id": torch.device("cuda", rank)} if backend == "nccl" else {}


def rank_device(device: torch.device, rank: int) -> torch.device:
    """Where rank ``rank`` runs: ``cuda:LOCAL_RANK`` (``cuda:rank`` on one machine) on CUDA, else ``device``."""
    return torch.device("cuda", int(os.environ.get("LOCAL_RANK", rank))) if device.type == "cuda" else device


__all__ = ["ParallelGroup", "WorkerFailed", "bind_device", "device_id_kwargs", "rank_device", "set_rank_env"]
