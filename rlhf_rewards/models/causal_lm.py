"""Generative models (``*ForCausalLM``, ``*LMHeadModel``) used through their LM head, e.g. math-shepherd-style PRMs.

``token_classify`` runs the LM head as the classifier. With STEP pooling and ``returned_token_ids`` only
those vocabulary rows are multiplied (in float32), so scoring a step costs ``k`` dot products rather than
a full-vocabulary projection. The head is not cast in place because it is often tied to the input
embedding, which must stay in the backbone's dtype.
"""

from __future__ import annotations

from typing import Any

import torch
import transformers

from rlhf_rewards.models.base import LoadContext, PoolingModel
from rlhf_rewards.models.defaults import embed_defaults, transformers_spec
from rlhf_rewards.models.registry import ModelSpec, register_suffix
from rlhf_rewards.pooling.config import PoolerConfig
from rlhf_rewards.pooling.step import check_columns


class LMHeadPoolingModel(PoolingModel):
    """A causal LM whose ``lm_head`` rows serve as classifier columns."""

    def __init__(self, hf_model: torch.nn.Module, spec: ModelSpec, **kwargs: Any) -> None:
        super().__init__(hf_model, spec, head_name=None, **kwargs)
        output = hf_model.get_output_embeddings()
        # Looked up by name at call time (peft may wrap it); usually ``lm_head``.
        self.lm_head_name = next(name for name, module in hf_model.named_modules() if module is output)

    @property
    def head(self) -> torch.nn.Module:
        """The LM head module."""
        return self.hf_model.get_submodule(self.lm_head_name)

    def head_logits(self, states: torch.Tensor, columns: tuple[int, ...] | None = None) -> torch.Tensor:
        """Only the ``columns`` rows of the LM head are multiplied (a PRM reads two of a whole vocabulary)."""
        head = self.head
        weight = head.weight
        bias = getattr(head, "bias", None)
        if columns is not None:
            check_columns(columns, weight.shape[0], "the vocabulary has {width} rows")
            index = torch.tensor(columns, device=weight.device)
            weight = weight.index_select(0, index)
            bias = bias.index_select(0, index) if bias is not None else None
        logits = states.float() @ weight.float().t()
        if bias is not None:
            logits = logits + bias.float()
        return logits


def load_causal_lm(ctx: LoadContext, spec: ModelSpec) -> PoolingModel:
    """Load with the architecture's own transformers class."""
    cls = getattr(transformers, spec.architecture, None) or transformers.AutoModelForCausalLM
    hf_model = ctx.from_pretrained(cls)
    return LMHeadPoolingModel(
        hf_model,
        spec,
        backbone_name=hf_model.base_model_prefix,
        num_labels=int(hf_model.get_output_embeddings().weight.shape[0]),
    )


def _causal_lm_spec(architecture: str) -> ModelSpec | None:
    return transformers_spec(
        architecture,
        loader=load_causal_lm,
        kind="process",
        task_defaults={
            # math-shepherd style: STEP pooling needs step_tag_id/returned_token_ids from the user's config.
            "token_classify": PoolerConfig(pooling_type="ALL", use_activation=True),
            **embed_defaults(),
        },
        description="generative model; LM-head logits as token scores (STEP with returned_token_ids for PRMs)",
    )


register_suffix("ForCausalLM", _causal_lm_spec)
register_suffix("LMHeadModel", _causal_lm_spec)
