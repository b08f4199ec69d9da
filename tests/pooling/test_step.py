"""The STEP pooler keeps rows whose input token is the step tag."""

from __future__ import annotations

import torch

from rlhf_rewards import PoolerConfig, PoolingParams
from rlhf_rewards.pooling import get_pooler, resolve_pooling


def test_step_positions_follow_input_tokens():
    ids = torch.tensor([5, 9, 3, 9, 9, 1])
    r = resolve_pooling("token_classify", PoolingParams(), PoolerConfig(pooling_type="STEP", step_tag_id=9))
    assert get_pooler("STEP").positions(ids, r).tolist() == [1, 3, 4]
    r_all = resolve_pooling("token_classify", PoolingParams(), PoolerConfig(pooling_type="STEP"))
    assert get_pooler("STEP").positions(ids, r_all).tolist() == list(range(6))
    none = resolve_pooling("token_classify", PoolingParams(step_tag_id=42), PoolerConfig(pooling_type="STEP"))
    assert get_pooler("STEP").positions(ids, none).numel() == 0
