"""``SpmdGroup``: a rank of a ``torchrun`` launch (SPMD, as vLLM's ``external_launcher``), and its start-up
:func:`handshake`."""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any

import torch.distributed as dist

from rlhf_rewards.parallel.config import ParallelConfig
from rlhf_rewards.parallel.group import ParallelGroup, WorkerFailed

logger = logging.getLogger(__name__)


class SpmdGroup(ParallelGroup):
    """A rank of a ``torchrun`` launch: the default group is the user's (or torchrun's); calls travel on a
    ``gloo`` control group of this engine's own, destroyed with it.

    Args:
        config: The sizes and time bounds.
        rank: ``torch.distributed``'s rank.
        control: This engine's control group.
        destroy_default_on_close: Whether this engine initialized ``torch.distributed`` itself (from torchrun's
            environment) and so tears it down on close.
    """

    spmd = True

    def __init__(
        self, config: ParallelConfig, rank: int, control: Any, destroy_default_on_close: bool
    ) -> None:
        super().__init__(config, rank)
        self.control = control
        self.destroy_default_on_close = destroy_default_on_close
        #: Whether this rank took part in the start-up handshake (it happens once).
        self.handshake_done = False

    def broadcast(self, obj: Any, src: int = 0) -> Any:
        """``obj`` from rank ``src`` on every rank (pickled, over the control group)."""
        box = [obj if self.rank == src else None]
        dist.broadcast_object_list(box, src=src, group=self.control)
        return box[0]

    def close(self) -> None:
        """Destroy this engine's control group, and the default group only if this engine created it."""
        if self.closed:
            return
        self.closed = True
        if not dist.is_initialized():
            return
        try:
            dist.destroy_process_group(self.control)
        except Exception as exc:  # noqa: BLE001 - already gone with the default group
            logger.debug("could not destroy the control group: %s", exc)
        if self.destroy_default_on_close:
            dist.destroy_process_group()


def handshake(group: SpmdGroup, error: BaseException | None = None) -> None:
    """torchrun start-up: every rank reports whether it built its shard; all raise the first failure."""
    group.handshake_done = True
    reports: list[Any] = [None] * group.world_size
    dist.all_gather_object(
        reports, None if error is None else f"{type(error).__name__}: {error}", group=group.control
    )
    failed = [(rank, msg) for rank, msg in enumerate(reports) if msg is not None]
    if failed:
        rank, msg = failed[0]
        raise WorkerFailed(f"rank {rank} of the split engine failed to start: {msg}")
    # Started: a call waits for the other ranks' calls, not for their loading.
    from torch.distributed import distributed_c10d

    distributed_c10d._set_pg_timeout(
        timedelta(seconds=float(group.config.call_timeout_s or 0)), group.control
    )


__all__ = ["SpmdGroup", "handshake"]
