"""Workers: where the engine runs (colocated, remote, Ray), behind one interface."""

from rlhf_rewards.workers.base import ModelInfo, RewardWorker, WorkerHealth, WorkerStats

__all__ = ["ModelInfo", "RewardWorker", "WorkerHealth", "WorkerStats"]
