"""Default pooler configurations and loading facts shared by several architectures."""

from __future__ import annotations

from typing import Any

import transformers

from rlhf_rewards.models.registry import ModelSpec
from rlhf_rewards.pooling.config import PoolerConfig

# Architectures with recurrent (SSM) layers carry state across a packed row, so they are only padded.
_NO_PACKING_PREFIXES = ("Jamba", "Mamba", "FalconH1", "Zamba", "Bamba", "NemotronH", "GraniteMoeHybrid")


def supports_packing(architecture: str) -> bool:
    """Whether sequences of ``architecture`` may share a row (False for recurrent/SSM hybrids such as Jamba)."""
    return not architecture.startswith(_NO_PACKING_PREFIXES)


def transformers_spec(architecture: str, **fields: Any) -> ModelSpec | None:
    """The spec of ``architecture`` loaded with its own transformers class (packed where its layers allow), or
    ``None`` when transformers has no class of that name."""
    if not hasattr(transformers, architecture):
        return None
    return ModelSpec(architecture=architecture, supports_packing=supports_packing(architecture), **fields)


def embed_defaults() -> dict[str, PoolerConfig]:
    """``embed`` (last token) and ``token_embed`` (every token) for any backbone, both L2-normalized by default
    as in vLLM (its ``TokenEmbeddingPoolerHead`` normalizes each row unless ``use_activation=False``)."""
    return {
        "embed": PoolerConfig(pooling_type="LAST", normalize=True),
        "token_embed": PoolerConfig(pooling_type="ALL", normalize=True),
    }


def classifier_defaults() -> dict[str, PoolerConfig]:
    """A sequence classifier: ``classify`` on the last token, ``token_classify`` on every token, plus embeds."""
    return {
        "classify": PoolerConfig(pooling_type="LAST", use_activation=True),
        "token_classify": PoolerConfig(pooling_type="ALL", use_activation=True),
        **embed_defaults(),
    }
