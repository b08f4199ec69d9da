"""Model architectures. Importing this package registers every supported architecture."""

from rlhf_rewards.models import causal_lm, sequence_classification  # noqa: F401  (registration)
from rlhf_rewards.models.base import LoadContext, PoolingModel
from rlhf_rewards.models.registry import ModelSpec, register, resolve_spec, supported_architectures

__all__ = ["LoadContext", "ModelSpec", "PoolingModel", "register", "resolve_spec", "supported_architectures"]
