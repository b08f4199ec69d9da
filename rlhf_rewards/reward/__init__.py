"""Reward functions for TRL trainers (``RewardFunction``, ``AsyncRewardFunction``) and the PPO adapter
``as_trl_reward_model``."""

from rlhf_rewards.reward.aggregation import AGGREGATIONS, aggregate_steps
from rlhf_rewards.reward.config import RewardFunctionConfig
from rlhf_rewards.reward.function import (
    AsyncRewardFunction,
    RewardFunction,
    RewardFunctionError,
    RewardInputError,
    UnscorableCompletionWarning,
)
from rlhf_rewards.reward.trl_compat import as_trl_reward_model

__all__ = [
    "AGGREGATIONS",
    "AsyncRewardFunction",
    "RewardFunction",
    "RewardFunctionConfig",
    "RewardFunctionError",
    "RewardInputError",
    "UnscorableCompletionWarning",
    "aggregate_steps",
    "as_trl_reward_model",
]
