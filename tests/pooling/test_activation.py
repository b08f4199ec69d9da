"""Activations: HF problem_type for classify; sigmoid/softmax by column count for token_classify."""

from __future__ import annotations

import torch

from rlhf_rewards import PoolerConfig, PoolingParams
from rlhf_rewards.pooling import apply_score_transform, resolve_pooling


def _resolved(task, **cfg):
    return resolve_pooling(task, PoolingParams(), PoolerConfig(**cfg))


def test_classify_activation_by_labels_and_problem_type():
    one, two = torch.tensor([[0.3]]), torch.tensor([[0.3, -1.2]])
    r = _resolved("classify", pooling_type="LAST")
    assert torch.allclose(apply_score_transform(one, r, None), torch.sigmoid(one))
    assert torch.allclose(apply_score_transform(two, r, None), torch.softmax(two, -1))
    assert torch.allclose(apply_score_transform(two, r, "regression"), two)
    assert torch.allclose(apply_score_transform(two, r, "multi_label_classification"), torch.sigmoid(two))


def test_token_classify_activation_by_remaining_columns():
    x = torch.tensor([[0.5, 0.1], [2.0, -1.0]])
    r = _resolved("token_classify", pooling_type="ALL")
    assert torch.allclose(apply_score_transform(x, r, "regression"), torch.softmax(x, -1))
    assert torch.allclose(apply_score_transform(x[:, :1], r, None), torch.sigmoid(x[:, :1]))


def test_logit_mean_and_sigma_then_activation():
    x = torch.tensor([[1.5]])
    r = _resolved("classify", pooling_type="LAST", logit_mean=0.5, logit_sigma=2.0)
    assert torch.allclose(apply_score_transform(x, r, None), torch.sigmoid((x - 0.5) / 2.0))
    raw = resolve_pooling("classify", PoolingParams(use_activation=False), PoolerConfig(pooling_type="LAST"))
    assert torch.equal(apply_score_transform(x, raw, None), x)
