"""Step splitting, aggregation, the config's validation and the STEP column rule (no model needed)."""

from __future__ import annotations

import math

import pytest

from rlhf_rewards import LoRARequest
from rlhf_rewards.reward.aggregation import AGGREGATIONS, aggregate_steps, check_aggregation
from rlhf_rewards.reward.config import RewardFunctionConfig, lora_request_from
from rlhf_rewards.reward.formatting import conversation, detect_format
from rlhf_rewards.reward.steps import split_steps, tag_completion


def test_split_steps_strips_and_drops_empty_steps():
    assert split_steps("a\n\n b \n\n\n\nc\n\n", "\n\n") == ["a", "b", "c"]
    assert split_steps("", "\n\n") == [""]
    assert split_steps("   ", "\n\n") == [""]
    assert split_steps("one step", "\n\n") == ["one step"]


def test_tag_completion_layouts():
    qwen = tag_completion("s1\n\ns2", step_tag="<extra_0>", separator="\n\n")
    assert (qwen.text, qwen.n_steps) == ("s1<extra_0>s2<extra_0>", 2)
    shepherd = tag_completion("Step 1: a\nStep 2: b", step_tag=" ки", separator="\n", keep_separator=True)
    assert (shepherd.text, shepherd.n_steps) == ("Step 1: a ки\nStep 2: b ки", 2)
    empty = tag_completion("", step_tag="<extra_0>", separator="\n\n")
    assert (empty.text, empty.n_steps) == ("<extra_0>", 1)


def test_tag_completion_removes_forged_tags():
    tagged = tag_completion("a<extra_0>b\n\nc", step_tag="<extra_0>", separator="\n\n")
    assert (tagged.text, tagged.n_steps) == ("ab<extra_0>c<extra_0>", 2)


@pytest.mark.parametrize(
    ("how", "want"),
    [("min", 0.2), ("last", 0.5), ("mean", (0.9 + 0.2 + 0.5) / 3), ("prod", 0.9 * 0.2 * 0.5)],
)
def test_aggregations(how, want):
    assert math.isclose(aggregate_steps([0.9, 0.2, 0.5], how), want)


def test_aggregation_callable_and_errors():
    assert aggregate_steps([1.0, 3.0], max) == 3.0
    assert set(AGGREGATIONS) == {"min", "last", "mean", "prod"}
    with pytest.raises(ValueError, match="step_aggregation='median'"):
        check_aggregation("median")
    with pytest.raises(ValueError, match="empty"):
        aggregate_steps([], "min")


@pytest.mark.parametrize(
    ("field", "value", "match"),
    [
        ("kind", "reward", "kind='reward'"),
        ("step_separator", "", "step_separator"),
        ("step_aggregation", "median", "step_aggregation"),
        ("reward_scale", float("nan"), "reward_scale"),
        ("reward_offset", "1", "reward_offset"),
        ("step_score_column", -1, "step_score_column"),
        ("score_column", True, "score_column"),
        ("truncate", "yes", "truncate"),
        ("use_activation", 1, "use_activation"),
        ("name", "", "name"),
        ("chat_template", "", "chat_template"),
        ("lora", 3, "lora"),
    ],
)
def test_config_rejects_bad_values(field, value, match):
    with pytest.raises(ValueError, match=match):
        RewardFunctionConfig(**{field: value})


def test_config_lora_from_path_is_stable():
    cfg = RewardFunctionConfig(lora="/adapters/helpful")
    assert isinstance(cfg.lora, LoRARequest)
    assert cfg.lora.lora_name == "helpful"
    assert cfg.lora == lora_request_from("/adapters/helpful")
    assert cfg.lora.lora_int_id >= 1


def test_detect_format():
    assert detect_format(["p"], ["c"], "rf") == "standard"
    conv = [[{"role": "user", "content": "p"}]]
    assert detect_format(conv, [[{"role": "assistant", "content": "c"}]], "rf") == "conversational"
    with pytest.raises(ValueError, match="rf: got 1 prompts but 2 completions"):
        detect_format(["p"], ["c", "d"], "rf")
    with pytest.raises(ValueError, match="rf: prompts\\[0\\] is a conversation"):
        detect_format(conv, ["c"], "rf")
    with pytest.raises(ValueError, match="rf: item 0"):
        detect_format(["p"], [1], "rf")


def test_conversation_tags_only_assistant_turns():
    def tag(text):
        return tag_completion(text, step_tag="<t>", separator="\n\n")

    prompt = [{"role": "user", "content": "a\n\nb"}]
    msgs, n = conversation(prompt, [{"role": "assistant", "content": "x\n\ny"}], tag)
    assert msgs == [{"role": "user", "content": "a\n\nb"}, {"role": "assistant", "content": "x<t>y<t>"}]
    assert n == 2
    msgs, n = conversation(prompt, [], tag)
    assert msgs[-1] == {"role": "assistant", "content": "<t>"} and n == 1
    assert prompt == [{"role": "user", "content": "a\n\nb"}]  # inputs are not modified
