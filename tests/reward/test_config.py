"""RewardFunctionConfig: documented fields, validation, and RewardFunction(source, config, **overrides)."""

from __future__ import annotations

import asyncio
import dataclasses
import re

import pytest

from rlhf_rewards import AsyncRewardFunction, LoRARequest, RewardFunction
from rlhf_rewards.reward import RewardFunctionConfig
from rlhf_rewards.reward.config import resolve_config
from tests.reward.conftest import COMPLETIONS, PROMPTS
from tests.reward.expected import close, outcome_expected

FIELDS = [f.name for f in dataclasses.fields(RewardFunctionConfig)]


def test_every_field_is_documented_with_its_type_and_default():
    doc = RewardFunctionConfig.__doc__
    for f in dataclasses.fields(RewardFunctionConfig):
        entry = re.search(rf"^\s+{f.name} \(`[^\n]*\*optional\*, defaults to `([^`]*)`\):\n\s+\S", doc, re.M)
        assert entry, f"{f.name} is not documented as '{f.name} (`type`, *optional*, defaults to `x`):'"
        default = f.default_factory() if f.default is dataclasses.MISSING else f.default
        written = entry.group(1)
        assert written == (
            repr(default).replace("'", '"') if isinstance(default, str) else str(default)
        ).replace("\n", "\\n"), (f.name, written, default)


@pytest.mark.parametrize(
    ("field", "value", "match"),
    [
        ("kind", "reward", r"kind='reward'; choose one of \['outcome', 'token', 'process', 'judge'\]"),
        (
            "step_aggregation",
            "median",
            r"step_aggregation='median'; choose one of \['last', 'mean', 'min', 'prod'\]",
        ),
        ("step_score_column", -1, r"step_score_column must be a non-negative integer or None, got -1"),
        ("score_column", 1.5, r"score_column must be a non-negative integer, got 1.5"),
        ("keep_step_separator", 1, r"keep_step_separator must be True or False, got 1"),
        ("add_special_tokens", None, r"add_special_tokens must be True or False, got None"),
        ("use_activation", "no", r"use_activation must be True, False or None"),
        ("reward_scale", float("inf"), r"reward_scale must be a finite number, got inf"),
        ("step_tag", "", r"step_tag must be a non-empty string or None"),
        ("step_separator", None, r"step_separator must be a non-empty string, got None"),
        ("llm_kwargs", ["device"], r"llm_kwargs must be a dict or None, got list"),
        ("lora", 0, r"lora must be a LoRARequest, an adapter path or name, or None"),
    ],
)
def test_errors_name_the_field_and_what_it_accepts(field, value, match):
    with pytest.raises(ValueError, match=match):
        RewardFunctionConfig(**{field: value})


def test_defaults_and_normalization():
    cfg = RewardFunctionConfig()
    assert (cfg.step_separator, cfg.step_aggregation, cfg.score_column, cfg.llm_kwargs) == (
        "\n\n",
        "min",
        0,
        {},
    )
    cfg = RewardFunctionConfig(reward_scale=2, llm_kwargs=None, lora="/adapters/helpful")
    assert isinstance(cfg.reward_scale, float) and cfg.llm_kwargs == {}
    assert isinstance(cfg.lora, LoRARequest) and cfg.lora.lora_name == "helpful"


def test_overrides_apply_on_a_copy_and_revalidate():
    mine = {"device": "cpu"}
    base = RewardFunctionConfig(name="judge", step_aggregation="last", llm_kwargs=mine)
    assert base.llm_kwargs == mine and base.llm_kwargs is not mine  # never aliases the caller's dict
    derived = resolve_config(base, {"reward_scale": 3.0, "name": "judge-x3"})
    assert (derived.name, derived.reward_scale, derived.step_aggregation) == ("judge-x3", 3.0, "last")
    assert (base.name, base.reward_scale) == ("judge", 1.0)  # the caller's config is untouched
    assert derived.llm_kwargs == base.llm_kwargs and derived.llm_kwargs is not base.llm_kwargs
    copy = resolve_config(base, {})
    assert copy == base and copy is not base
    assert resolve_config(None, {"kind": "outcome"}) == RewardFunctionConfig(kind="outcome")
    assert base.replace(truncate=True).truncate is True
    with pytest.raises(ValueError, match="reward_offset must be a finite number"):
        resolve_config(base, {"reward_offset": float("nan")})


def test_unknown_settings_are_a_type_error_listing_the_fields():
    with pytest.raises(
        TypeError, match=r"\['step_agregation'\].*RewardFunctionConfig fields \['name', 'kind'"
    ):
        resolve_config(None, {"step_agregation": "min"})
    with pytest.raises(TypeError, match=r"replace\(\) got unexpected keyword argument\(s\) \['bogus'\]"):
        RewardFunctionConfig().replace(bogus=1)
    with pytest.raises(TypeError, match="config must be a RewardFunctionConfig or None, got dict"):
        resolve_config({"name": "x"}, {})  # type: ignore[arg-type]
    # Checked before anything is loaded: the path does not exist.
    with pytest.raises(
        TypeError, match=r"RewardFunction\(\) got unexpected keyword argument\(s\) \['scale'\]"
    ):
        RewardFunction("/no/such/model", scale=2.0)
    with pytest.raises(TypeError, match=r"AsyncRewardFunction\(\) got unexpected.*'step_aggregation'"):
        AsyncRewardFunction("/no/such/model", aggregation="min")


def test_reward_function_with_config_and_overrides(rm_llm):
    want = outcome_expected(rm_llm, [p + c for p, c in zip(PROMPTS, COMPLETIONS, strict=True)])
    cfg = RewardFunctionConfig(name="helpful", reward_offset=1.0)
    by_config = RewardFunction(rm_llm, cfg)
    by_keywords = RewardFunction(rm_llm, name="helpful", reward_offset=1.0)
    assert by_config.config == by_keywords.config == cfg and by_config.config is not cfg
    assert by_config.__name__ == "helpful"
    assert close(by_config(PROMPTS, COMPLETIONS), [w + 1.0 for w in want])
    assert close(by_keywords(PROMPTS, COMPLETIONS), [w + 1.0 for w in want])
    scaled = RewardFunction(rm_llm, cfg, reward_scale=2.0, name="helpful-x2")
    assert (scaled.__name__, scaled.config.reward_scale, cfg.reward_scale) == ("helpful-x2", 2.0, 1.0)
    assert close(scaled(PROMPTS, COMPLETIONS), [2.0 * w + 1.0 for w in want])
    async_rf = AsyncRewardFunction(rm_llm, cfg, reward_scale=2.0)
    assert close(asyncio.run(async_rf(PROMPTS, COMPLETIONS)), [2.0 * w + 1.0 for w in want])
