"""Sequence (outcome) reward models: any transformers ``*ForSequenceClassification`` with a ``score`` head.

Covers Skywork-Reward-V2 (``Qwen3ForSequenceClassification``, ``LlamaForSequenceClassification``) and
``JambaForSequenceClassification``. The score is read at the last real token of each sequence, which is
what transformers does via ``pad_token_id`` but without depending on a pad token being configured.

A checkpoint without the ``score`` weights is refused (transformers would initialize them at random). vLLM's
recipe of loading a generative checkpoint as a classifier (``hf_overrides={"architectures":
["Qwen3ForSequenceClassification"], "classifier_from_token": ["no", "yes"], ...}``) builds the head from
LM-head rows, see :mod:`rlhf_rewards.models.conversion`.
"""

from __future__ import annotations

import transformers

from rlhf_rewards.models.base import LoadContext, PoolingModel
from rlhf_rewards.models.conversion import HOW_TO_SUPPLY_A_HEAD, load_converted_classifier, wants_token_head
from rlhf_rewards.models.defaults import classifier_defaults, transformers_spec
from rlhf_rewards.models.registry import ModelSpec, register_suffix


def load_sequence_classifier(ctx: LoadContext, spec: ModelSpec) -> PoolingModel:
    """Load with the architecture's own transformers class and keep its ``score`` head in float32."""
    if wants_token_head(ctx.config) and spec.architecture.endswith("ForSequenceClassification"):
        generative = spec.architecture.replace("ForSequenceClassification", "ForCausalLM")
        if not hasattr(transformers, generative):
            raise ValueError(
                f"classifier_from_token needs a generative {generative} class, which transformers lacks."
            )
        return load_converted_classifier(ctx, spec, base_cls=getattr(transformers, generative))
    cls = getattr(transformers, spec.architecture, None) or transformers.AutoModelForSequenceClassification
    hf_model = ctx.from_pretrained(cls, head="score", how_to_fix=HOW_TO_SUPPLY_A_HEAD)
    if not hasattr(hf_model, "score"):
        raise ValueError(
            f"{spec.architecture} has no `score` head; only decoder classifiers with a linear `score` head on "
            "the final hidden states are supported."
        )
    return PoolingModel(
        hf_model,
        spec,
        backbone_name=hf_model.base_model_prefix,
        head_name="score",
        num_labels=int(hf_model.config.num_labels),
        problem_type=getattr(hf_model.config, "problem_type", None),
    )


def _sequence_classifier_spec(architecture: str) -> ModelSpec | None:
    return transformers_spec(
        architecture,
        loader=load_sequence_classifier,
        kind="outcome",
        task_defaults=classifier_defaults(),
        description="sequence classifier, score at the last token",
    )


def _token_classifier_spec(architecture: str) -> ModelSpec | None:
    defaults = classifier_defaults()
    del defaults["classify"]
    return transformers_spec(
        architecture,
        loader=load_sequence_classifier,
        kind="token",
        task_defaults=defaults,
        description="token classifier, one score per token",
    )


register_suffix("ForSequenceClassification", _sequence_classifier_spec)
register_suffix("ForTokenClassification", _token_classifier_spec)
