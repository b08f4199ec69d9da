"""rlhf-rewards: serve reward models to RLHF training.

The public API is exported here, once:

- ``LLM``: the offline pooling engine (vLLM's ``LLM(..., runner="pooling").encode`` API).
- ``PoolingParams``, ``PoolerConfig``, ``LoRARequest``, ``PoolingRequestOutput``, ``PoolingOutput`` and
  vLLM's other offline output types; ``EngineArgs`` (vLLM's, for ``LLM.from_engine_args`` and the examples).
- ``RewardFunction``, ``AsyncRewardFunction``: reward models as TRL ``reward_funcs``, configured by a
  ``RewardFunctionConfig``;
  ``as_trl_reward_model``: one as PPOTrainer's ``reward_model``.
"""

from rlhf_rewards import models as _models  # noqa: F401  (registers architectures)
from rlhf_rewards.entrypoints.cli_args import EngineArgs
from rlhf_rewards.entrypoints.generative_scoring import GenerativeScoringOutput
from rlhf_rewards.entrypoints.llm import LLM
from rlhf_rewards.lora.request import LoRARequest
from rlhf_rewards.outputs import (
    ClassificationRequestOutput,
    EmbeddingRequestOutput,
    PoolingOutput,
    PoolingRequestOutput,
    ScoringRequestOutput,
)
from rlhf_rewards.parallel.group import WorkerFailed
from rlhf_rewards.pooling.config import PoolerConfig
from rlhf_rewards.pooling.params import PoolingParams
from rlhf_rewards.reward import AsyncRewardFunction, RewardFunction, RewardFunctionConfig, as_trl_reward_model
from rlhf_rewards.reward.judge_config import JudgeConfig

__version__ = "0.1.0"

__all__ = [
    "LLM",
    "AsyncRewardFunction",
    "ClassificationRequestOutput",
    "EmbeddingRequestOutput",
    "EngineArgs",
    "GenerativeScoringOutput",
    "JudgeConfig",
    "LoRARequest",
    "PoolerConfig",
    "PoolingOutput",
    "PoolingParams",
    "PoolingRequestOutput",
    "RewardFunction",
    "ScoringRequestOutput",
    "RewardFunctionConfig",
    "WorkerFailed",
    "__version__",
    "as_trl_reward_model",
]
