"""PoolerConfig / PoolingParams validation and merging follow vLLM's rules."""

from __future__ import annotations

import pytest

from rlhf_rewards import PoolerConfig, PoolingParams
from rlhf_rewards.pooling.params import resolve_pooling


def test_pooler_config_from_dict_and_json_are_equal():
    a = PoolerConfig.from_any({"pooling_type": "step", "step_tag_id": 5, "returned_token_ids": [1, 2]})
    b = PoolerConfig.from_any('{"pooling_type": "STEP", "step_tag_id": 5, "returned_token_ids": [1, 2]}')
    assert a == b
    assert a.pooling_type == "STEP"


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"pooling_type": "LAST", "step_tag_id": 3}, "step_tag_id"),
        ({"pooling_type": "ALL", "returned_token_ids": [1]}, "returned_token_ids"),
        ({"pooling_type": "FIRST"}, "pooling_type"),
        ({"step_tag_id": -1}, "step_tag_id"),
        ({"returned_token_ids": []}, "returned_token_ids"),
        ({"logit_sigma": 0.0}, "logit_sigma"),
        ({"dimensions": 0}, "dimensions"),
    ],
)
def test_pooler_config_rejects_bad_fields(kwargs, field):
    with pytest.raises(ValueError, match=field):
        PoolerConfig(**kwargs)


def test_pooler_config_unknown_field_lists_valid_ones():
    with pytest.raises(ValueError, match="valid fields"):
        PoolerConfig.from_any({"pooling": "LAST"})
    with pytest.raises(ValueError, match="JSON"):
        PoolerConfig.from_any("{not json")


def test_params_override_config_and_unset_fields_fall_back():
    config = PoolerConfig(pooling_type="STEP", step_tag_id=7, returned_token_ids=[3, 4], use_activation=True)
    r = resolve_pooling("token_classify", PoolingParams(use_activation=False), config)
    assert (r.pooling_type, r.step_tag_id, r.returned_token_ids, r.use_activation) == (
        "STEP",
        7,
        (3, 4),
        False,
    )
    r = resolve_pooling("token_classify", PoolingParams(step_tag_id=9), config)
    assert r.step_tag_id == 9 and r.use_activation is True


@pytest.mark.parametrize(
    "task, params, bad",
    [
        ("classify", PoolingParams(dimensions=4), "dimensions"),
        ("classify", PoolingParams(normalize=True), "normalize"),
        # vLLM 0.33: embed takes use_activation (the L2 normalization); the task it rejects it for is none,
        # so the case is a token task's STEP field on classify instead.
        ("classify", PoolingParams(returned_token_ids=[1]), "returned_token_ids"),
        ("classify", PoolingParams(step_tag_id=3), "step_tag_id"),
        ("token_embed", PoolingParams(returned_token_ids=[1]), "returned_token_ids"),
    ],
)
def test_params_that_do_not_belong_to_the_task_are_rejected(task, params, bad):
    with pytest.raises(ValueError, match=bad):
        resolve_pooling(
            task, params, PoolerConfig(pooling_type="ALL" if task.startswith("token") else "LAST")
        )


def test_step_params_without_step_pooling_are_rejected():
    with pytest.raises(ValueError, match="STEP"):
        resolve_pooling("token_classify", PoolingParams(step_tag_id=3), PoolerConfig(pooling_type="ALL"))


def test_truncate_prompt_tokens_validation():
    with pytest.raises(ValueError, match="truncate_prompt_tokens"):
        PoolingParams(truncate_prompt_tokens=0)
    assert PoolingParams(truncate_prompt_tokens=-1).truncate_prompt_tokens == -1
