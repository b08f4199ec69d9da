"""Pooling: configs, per-request params, one module per pooling method, and activations."""

from rlhf_rewards.pooling.activation import apply_score_transform
from rlhf_rewards.pooling.all import AllPooler
from rlhf_rewards.pooling.base import Pooler
from rlhf_rewards.pooling.cls import CLSPooler
from rlhf_rewards.pooling.config import PoolerConfig
from rlhf_rewards.pooling.last import LastPooler
from rlhf_rewards.pooling.mean import MeanPooler
from rlhf_rewards.pooling.params import PoolingParams, ResolvedPooling, resolve_pooling
from rlhf_rewards.pooling.step import StepPooler
from rlhf_rewards.pooling.tasks import POOLING_TASKS, POOLING_TYPES, check_task

POOLERS: dict[str, Pooler] = {
    p.pooling_type: p for p in (LastPooler(), CLSPooler(), MeanPooler(), AllPooler(), StepPooler())
}


def get_pooler(pooling_type: str) -> Pooler:
    """The pooler for ``pooling_type`` (``LAST``, ``CLS``, ``MEAN``, ``ALL`` or ``STEP``)."""
    return POOLERS[pooling_type]


__all__ = [
    "POOLERS",
    "POOLING_TASKS",
    "POOLING_TYPES",
    "Pooler",
    "PoolerConfig",
    "PoolingParams",
    "ResolvedPooling",
    "apply_score_transform",
    "check_task",
    "get_pooler",
    "resolve_pooling",
]
