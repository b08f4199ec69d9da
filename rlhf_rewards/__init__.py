"""rlhf-rewards: serve reward models to RLHF training.

The public API is exported here, once:

- ``LLM``: the offline pooling engine (vLLM's ``LLM(..., runner="pooling").encode`` API).
- ``PoolingParams``, ``PoolerConfig``, ``LoRARequest``, ``PoolingRequestOutput``, ``PoolingOutput`` and
  vLLM's other offline output types; ``EngineArgs`` (vLLM's, for ``LLM.from_engine_args`` and the examples).
- ``RewardFunction``, ``AsyncRewardFunction``: reward models as TRL ``reward_funcs``, configured by a
  ``RewardFunctionConfig``;
  ``as_trl_reward_model``: one as PPOTrainer's ``reward_model``; ``JudgeConfig`` for a judge read through its
  answer token.
- ``ColocatedWorker``, ``RemoteWorker``, ``RayWorkerPool`` (imported on first use: Ray is an extra), behind
  the ``RewardWorker`` interface; ``RewardWorkerCallback`` and ``RewardMetricsCallback`` for the trainer.
"""

from typing import Any

from rlhf_rewards import models as _models  # noqa: F401  (registers architectures)
from rlhf_rewards.callbacks import RewardMetricsCallback, RewardWorkerCallback
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
from rlhf_rewards.workers import ColocatedWorker, RemoteWorker, RewardWorker

__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    # RayWorkerPool needs the ray extra: imported when first asked for, as rlhf_rewards.workers does.
    if name == "RayWorkerPool":
        from rlhf_rewards.workers import RayWorkerPool

        return RayWorkerPool
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "LLM",
    "AsyncRewardFunction",
    "ClassificationRequestOutput",
    "ColocatedWorker",
    "EmbeddingRequestOutput",
    "EngineArgs",
    "GenerativeScoringOutput",
    "JudgeConfig",
    "LoRARequest",
    "PoolerConfig",
    "PoolingOutput",
    "PoolingParams",
    "PoolingRequestOutput",
    "RayWorkerPool",
    "RemoteWorker",
    "RewardFunction",
    "ScoringRequestOutput",
    "RewardFunctionConfig",
    "RewardMetricsCallback",
    "RewardWorker",
    "RewardWorkerCallback",
    "WorkerFailed",
    "__version__",
    "as_trl_reward_model",
]
