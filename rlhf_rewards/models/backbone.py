"""Base ``*Model`` backbones (``Qwen3Model``, ``LlamaModel``...): ``embed`` and ``token_embed`` on their hidden states.

With ``convert="classify"`` they become classifiers like generative models do (see ``conversion``). Only
transformers base-model classes match: names with ``For`` (``*ForRewardModel``...), ``*LMHeadModel`` (a
generative rule of its own) and ``*PreTrainedModel`` (abstract) are declined.
"""

from __future__ import annotations

import transformers

from rlhf_rewards.models.base import LoadContext, PoolingModel
from rlhf_rewards.models.defaults import embed_defaults, supports_packing
from rlhf_rewards.models.registry import ModelSpec, register_suffix

_NOT_BASE_SUFFIXES = ("LMHeadModel", "PreTrainedModel", "ChatModel")


def load_backbone(ctx: LoadContext, spec: ModelSpec) -> PoolingModel:
    """Load the base model class itself; its forward returns the hidden states."""
    hf_model = ctx.from_pretrained(getattr(transformers, spec.architecture))
    return PoolingModel(hf_model, spec, backbone_name="", head_name=None, num_labels=0)


def _backbone_spec(architecture: str) -> ModelSpec | None:
    cls = getattr(transformers, architecture, None)
    if (
        "For" in architecture
        or architecture.endswith(_NOT_BASE_SUFFIXES)
        or not (isinstance(cls, type) and issubclass(cls, transformers.PreTrainedModel))
    ):
        return None
    return ModelSpec(
        architecture=architecture,
        loader=load_backbone,
        kind="embedding",
        task_defaults=embed_defaults(),
        supports_packing=supports_packing(architecture),
        description="base model: last-token / per-token hidden states (convert='classify' adds a score head)",
    )


register_suffix("Model", _backbone_spec)
