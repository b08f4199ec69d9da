"""Trainer callbacks (transformers ``TrainerCallback``) for training with reward workers.

- :class:`RewardWorkerCallback`: checks worker health when training begins; colocated reward models sleep
  outside scoring, so their accelerator memory is free during the policy's backward pass.
- :class:`RewardMetricsCallback`: per-reward-function latency, throughput, retries/failures and raw-score
  statistics in the trainer's logs.
"""

from rlhf_rewards.callbacks.metrics import RewardMetricsCallback
from rlhf_rewards.callbacks.worker import RewardWorkerCallback

__all__ = ["RewardMetricsCallback", "RewardWorkerCallback"]
