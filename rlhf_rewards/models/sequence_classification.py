"""Sequence (outcome) reward models: any transformers ``*ForSequenceClassification`` with a ``score`` head.

Covers Skywork-Reward-V2 (``Qwen3ForSequenceClassification``, ``LlamaForSequenceClassification``) and
``JambaForSequenceClassification``. The score is read at the last real token of each sequence, which is
what transformers does via ``pad_token_id`` but without depending on a pad token being configured.
"""

from __future__ import annotations

import transformers

from rlhf_rewards.models.base import LoadContext, PoolingModel
from rlhf_rewards.models.defaults import classifier_defaults
from rlhf_rewards.models.registry import ModelSpec, register_suffix

# Architectures with recurrent (SSM) layers carry state across a packed row, so they are only padded.
_NO_PACKING_PREFIXES = ("Jamba", "Mamba", "FalconH1", "Zamba", "Bamba", "NemotronH", "GraniteMoeHybrid")


def load_sequence_classifier(ctx: LoadContext, spec: ModelSpec) -> PoolingModel:
    """Load with the architecture's own transformers class and keep its ``score`` head in float32."""
    cls = getattr(transformers, spec.architecture, None) or transformers.AutoModelForSequenceClassification
    hf_model = cls.from_pretrained(ctx.model, **ctx.from_pretrained_kwargs())
    head_name = "score"
    if not hasattr(hf_model, head_name):
        raise ValueError(
            f"{spec.architecture} has no `score` head; only decoder classifiers with a linear `score` head on "
            "the final hidden states are supported."
        )
    return PoolingModel(
        hf_model,
        spec,
        backbone_name=hf_model.base_model_prefix,
        head_name=head_name,
        num_labels=int(hf_model.config.num_labels),
        problem_type=getattr(hf_model.config, "problem_type", None),
    )


def _sequence_classifier_spec(architecture: str) -> ModelSpec | None:
    if not hasattr(transformers, architecture):
        return None
    return ModelSpec(
        architecture=architecture,
        loader=load_sequence_classifier,
        kind="outcome",
        task_defaults=classifier_defaults(),
        supports_packing=not architecture.startswith(_NO_PACKING_PREFIXES),
        description="sequence classifier, score at the last token",
    )


def _token_classifier_spec(architecture: str) -> ModelSpec | None:
    if not hasattr(transformers, architecture):
        return None
    defaults = classifier_defaults()
    del defaults["classify"]
    return ModelSpec(
        architecture=architecture,
        loader=load_sequence_classifier,
        kind="token",
        task_defaults=defaults,
        supports_packing=not architecture.startswith(_NO_PACKING_PREFIXES),
        description="token classifier, one score per token",
    )


register_suffix("ForSequenceClassification", _sequence_classifier_spec)
register_suffix("ForTokenClassification", _token_classifier_spec)
