"""Model architectures. Importing this package registers every supported architecture."""

from rlhf_rewards.models import (  # noqa: F401  (registration)
    backbone,
    causal_lm,
    conversion,
    internlm2,
    openrlhf,
    qwen2_reward,
    sequence_classification,
)
from rlhf_rewards.models.base import LoadContext, PoolingModel
from rlhf_rewards.models.registry import ModelSpec, register, resolve_spec, supported_architectures

__all__ = ["LoadContext", "ModelSpec", "PoolingModel", "register", "resolve_spec", "supported_architectures"]
