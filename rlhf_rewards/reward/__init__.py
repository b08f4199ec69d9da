"""Reward functions for TRL trainers (``RewardFunction``, ``AsyncRewardFunction``, configured by a
``RewardFunctionConfig``) and the PPO adapter ``as_trl_reward_model``.

Modules: ``function`` (the TRL-facing classes), ``config`` (the settings), ``base`` (construction and
call bookkeeping), ``plan`` (the scoring plan, a generator of worker calls) run by ``calls`` (sync and
async), ``readout`` (one reading per reward kind), ``kinds`` (which kind and what it needs), ``source``
(the worker behind a source), ``errors``, ``judge`` (the judge kind, with ``judge_config``); ``formatting``, ``steps`` and ``aggregation`` prepare inputs
and combine step scores; ``trl_compat`` backs PPO's ``reward_model``.
"""

from rlhf_rewards.reward.aggregation import AGGREGATIONS, aggregate_steps
from rlhf_rewards.reward.config import RewardFunctionConfig
from rlhf_rewards.reward.function import (
    AsyncRewardFunction,
    RewardFunction,
    RewardFunctionError,
    RewardInputError,
    UnscorableCompletionWarning,
)
from rlhf_rewards.reward.judge_config import JudgeConfig
from rlhf_rewards.reward.trl_compat import as_trl_reward_model

__all__ = [
    "AGGREGATIONS",
    "AsyncRewardFunction",
    "JudgeConfig",
    "RewardFunction",
    "RewardFunctionConfig",
    "RewardFunctionError",
    "RewardInputError",
    "UnscorableCompletionWarning",
    "aggregate_steps",
    "as_trl_reward_model",
]
