"""Workers: where the engine runs (colocated, remote, Ray), behind one interface.

``RayWorkerPool`` is imported lazily: Ray is an optional extra (``pip install rlhf-rewards[ray]``).
"""

from typing import Any

from rlhf_rewards.workers.base import ModelInfo, RewardWorker, WorkerHealth, WorkerStats
from rlhf_rewards.workers.colocated import ColocatedWorker
from rlhf_rewards.workers.remote import RemoteWorker

_LAZY = {
    "RayWorkerPool": "rlhf_rewards.workers.ray_pool",
    "RayWorkerPoolError": "rlhf_rewards.workers.ray_replica",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "ColocatedWorker",
    "ModelInfo",
    "RayWorkerPool",
    "RayWorkerPoolError",
    "RemoteWorker",
    "RewardWorker",
    "WorkerHealth",
    "WorkerStats",
]
