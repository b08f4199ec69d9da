"""Checkpoints trained by OpenRLHF (``openrlhf.models.get_llm_for_sequence_regression``), loaded natively.

OpenRLHF's ``train_rm`` / PPO critic save ``architectures: ["RewardModel"]`` (or ``["CriticModel"]``) with the
backbone's own ``model_type`` (``llama``, ``qwen2``, ...): the backbone (transformers' ``AutoModel`` class of
that config) sits under its ``base_model_prefix`` and the value head is ``Linear(hidden, 1, bias=False)``
named ``config.value_head_prefix`` (default ``score``). The classes here rebuild exactly that layout, so the
weights load as they are, without OpenRLHF or remote code.

**Normalization.** ``train_rm`` stores the reward ``mean`` and ``std`` of its evaluation set in the config
and ``normalize_reward`` says whether the checkpoint was trained to be served normalized. As in OpenRLHF's
``RewardModel.forward`` (eval mode), a model whose config says ``normalize_reward: true`` gives
``(reward - mean) / std`` (``mean`` 0 and ``std`` 1 when the config has none). The switch is the config field
itself: ``LLM(path, hf_overrides={"normalize_reward": False})`` (``rlhf-rewards serve PATH --hf-overrides
'{"normalize_reward": false}'``) serves raw rewards, ``True`` normalized ones, as OpenRLHF's
``--reward.normalize_enable`` does. ``CriticModel`` checkpoints give one value per token (``token_classify``),
normalized the same way.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import nn
from transformers import AutoModel

from rlhf_rewards.models.base import LoadContext, PoolingModel
from rlhf_rewards.models.defaults import classifier_defaults, embed_defaults
from rlhf_rewards.models.registry import ModelSpec, register
from rlhf_rewards.pooling.config import PoolerConfig

#: OpenRLHF's default ``value_head_prefix``.
DEFAULT_VALUE_HEAD = "score"


class NormalizedValueHead(nn.Linear):
    """OpenRLHF's value head, ``Linear(hidden, 1, bias=False)``, followed by its reward normalization.

    ``mean`` and ``std`` are plain floats (not buffers): they come from the config, never from the weights,
    and a float applied to a float32 tensor rounds exactly as OpenRLHF's float32 ``mean``/``std`` buffers.
    """

    def __init__(
        self, hidden_size: int, *, normalize: bool = False, mean: float = 0.0, std: float = 1.0
    ) -> None:
        super().__init__(hidden_size, 1, bias=False)
        self.normalize = bool(normalize)
        self.mean = float(mean)
        self.std = float(std)

    def forward(self, states: torch.Tensor) -> torch.Tensor:
        """The values of ``states``, de-normalized with the checkpoint's mean and std when it says so."""
        values = super().forward(states)
        if self.normalize:
            values = (values - self.mean) / self.std
        return values

    def extra_repr(self) -> str:
        """The linear layer's repr plus the normalization."""
        return f"{super().extra_repr()}, normalize={self.normalize}, mean={self.mean}, std={self.std}"


def normalization_of(config: Any) -> dict[str, Any]:
    """``normalize``, ``mean`` and ``std`` of an OpenRLHF config (``normalize_reward`` is the switch)."""
    mean = getattr(config, "mean", None)
    std = getattr(config, "std", None)
    if std is not None and float(std) == 0.0:
        raise ValueError(
            "The OpenRLHF checkpoint's config has std=0: normalized rewards would divide by zero."
        )
    return {
        "normalize": bool(getattr(config, "normalize_reward", False)),
        "mean": 0.0 if mean is None else float(mean),
        "std": 1.0 if std is None else float(std),
    }


def value_head_name(config: Any) -> str:
    """The head's module name: ``config.value_head_prefix`` (OpenRLHF prefers it), else ``score``."""
    return str(getattr(config, "value_head_prefix", None) or DEFAULT_VALUE_HEAD)


def openrlhf_class(config: Any, architecture: str) -> type:
    """The ``RewardModel``/``CriticModel`` class for ``config``'s backbone, built as OpenRLHF builds it:
    a subclass of the backbone's ``*PreTrainedModel`` with the backbone under ``base_model_prefix``."""
    try:
        base_class = AutoModel._model_mapping[type(config)]
    except KeyError:
        raise ValueError(
            f"{architecture}: transformers has no base model for model_type="
            f"{getattr(config, 'model_type', None)!r}, so its OpenRLHF backbone cannot be built."
        ) from None
    pretrained = base_class.__base__
    head = value_head_name(config)

    class OpenRLHFModel(pretrained):  # type: ignore[misc, valid-type]
        """OpenRLHF's reward/critic layout: backbone + ``NormalizedValueHead`` (loaded with ``from_pretrained``)."""

        _keep_in_fp32_modules_strict: ClassVar[list[str]] = [head]

        def __init__(self, cfg: Any) -> None:
            super().__init__(cfg)
            setattr(self, self.base_model_prefix, base_class(cfg))
            setattr(self, head, NormalizedValueHead(cfg.hidden_size, **normalization_of(cfg)))
            self.post_init()

        def get_input_embeddings(self) -> nn.Module:
            return getattr(self, self.base_model_prefix).get_input_embeddings()

        def set_input_embeddings(self, value: nn.Module) -> None:
            getattr(self, self.base_model_prefix).set_input_embeddings(value)

    OpenRLHFModel.__name__ = OpenRLHFModel.__qualname__ = architecture
    return OpenRLHFModel


def load_openrlhf(ctx: LoadContext, spec: ModelSpec) -> PoolingModel:
    """Load an OpenRLHF ``RewardModel``/``CriticModel`` checkpoint (every weight must be in it)."""
    cls = openrlhf_class(ctx.config, spec.architecture)
    head = value_head_name(ctx.config)
    hf_model = ctx.from_pretrained(
        cls,
        head=head,
        how_to_fix=(
            "OpenRLHF saves the value head as `<value_head_prefix>.weight`; set value_head_prefix in config.json "
            "if the checkpoint names it otherwise."
        ),
    )
    return PoolingModel(
        hf_model, spec, backbone_name=hf_model.base_model_prefix, head_name=head, num_labels=1
    )


def _critic_defaults() -> dict[str, PoolerConfig]:
    return {"token_classify": PoolerConfig(pooling_type="ALL", use_activation=False), **embed_defaults()}


register(
    ModelSpec(
        architecture="RewardModel",
        loader=load_openrlhf,
        kind="outcome",
        task_defaults=classifier_defaults(),
        description="OpenRLHF reward model (train_rm): value head at the last token, normalized if the config says so",
    )
)
register(
    ModelSpec(
        architecture="CriticModel",
        loader=load_openrlhf,
        kind="token",
        task_defaults=_critic_defaults(),
        description="OpenRLHF critic: one value per token, normalized if the config says so",
    )
)

__all__ = [
    "DEFAULT_VALUE_HEAD",
    "NormalizedValueHead",
    "load_openrlhf",
    "normalization_of",
    "openrlhf_class",
    "value_head_name",
]
