"""Workers: where the engine runs (colocated, remote, Ray), behind one interface."""

from rlhf_rewards.workers.base import ModelInfo, RewardWorker, WorkerHealth, WorkerStats
from rlhf_rewards.workers.colocated import ColocatedWorker
from rlhf_rewards.workers.remote import RemoteWorker

__all__ = ["ColocatedWorker", "ModelInfo", "RemoteWorker", "RewardWorker", "WorkerHealth", "WorkerStats"]
