"""Activations applied to classifier logits, following vLLM and the HF ``problem_type``."""

from __future__ import annotations

import torch

from rlhf_rewards.pooling.params import ResolvedPooling


def apply_score_transform(
    logits: torch.Tensor, params: ResolvedPooling, problem_type: str | None
) -> torch.Tensor:
    """``activation((logits - logit_mean) / logit_sigma)``; the activation is skipped when ``use_activation`` is off.

    ``classify``: ``problem_type`` ``regression`` -> identity, ``multi_label_classification`` -> sigmoid,
    ``single_label_classification`` -> softmax; otherwise sigmoid for one label and softmax for more.
    ``token_classify``: sigmoid when fewer than 2 columns remain, softmax over the last dimension otherwise.
    """
    x = logits.float()
    if params.logit_mean is not None:
        x = x - float(params.logit_mean)
    if params.logit_sigma is not None:
        x = x / float(params.logit_sigma)
    if not params.use_activation:
        return x
    num_columns = x.shape[-1]
    if params.task == "classify":
        if problem_type == "regression":
            return x
        if problem_type == "multi_label_classification":
            return torch.sigmoid(x)
        if problem_type == "single_label_classification":
            return torch.softmax(x, dim=-1)
    return torch.sigmoid(x) if num_columns < 2 else torch.softmax(x, dim=-1)
