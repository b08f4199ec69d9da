"""The architecture registry: one place from ``architectures[0]`` to a loader and default pooler configs."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from rlhf_rewards import LLM
from rlhf_rewards.models import resolve_spec, supported_architectures

# The seed's tables: architecture -> (kind, default task, token_classify or classify default pooling type).
SEED = {
    "Qwen3ForSequenceClassification": ("outcome", "classify", "LAST"),
    "LlamaForSequenceClassification": ("outcome", "classify", "LAST"),
    "JambaForSequenceClassification": ("outcome", "classify", "LAST"),
    "Qwen2ForRewardModel": ("token", "token_classify", "ALL"),
    "InternLM2ForRewardModel": ("token", "token_classify", "ALL"),
    "Qwen2ForProcessRewardModel": ("process", "token_classify", "STEP"),
    "LlamaForCausalLM": ("process", "token_classify", "ALL"),
}


@pytest.mark.parametrize("architecture", sorted(SEED))
def test_every_seed_architecture_resolves_with_its_defaults(architecture):
    spec = resolve_spec(architecture)
    kind, task, pooling_type = SEED[architecture]
    assert (spec.kind, spec.default_task) == (kind, task)
    assert spec.task_defaults[task].pooling_type == pooling_type
    assert {"embed", "token_embed"} <= set(spec.tasks)  # every backbone embeds


def test_token_reward_models_default_activation_as_vllm():
    # vLLM's token_classify applies the activation by default (InternLM2 too), except Qwen2ForRewardModel:
    # its Qwen2ForRewardModelConfig sets use_activation=False (measured against vLLM 0.32 in
    # tests/compat/vllm_live/test_offline_token.py).
    assert resolve_spec("InternLM2ForRewardModel").task_defaults["token_classify"].use_activation is True
    assert resolve_spec("Qwen2ForRewardModel").task_defaults["token_classify"].use_activation is False
    prm = resolve_spec("Qwen2ForProcessRewardModel")
    assert prm.task_defaults["token_classify"].use_activation is True and prm.default_step_tag == "<extra_0>"


def test_unknown_architecture_lists_the_supported_ones_and_how_to_convert(tmp_path, checkpoint_factory):
    path = tmp_path / "unknown"
    path.mkdir()
    config = json.loads((checkpoint_factory("Qwen3ForCausalLM") / "config.json").read_text())
    config["architectures"] = ["FooForRewardModel"]
    (path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError) as err:
        LLM(str(path), device="cpu")
    message = str(err.value)
    assert "'FooForRewardModel' is not supported" in message
    for name in (
        "Qwen2ForRewardModel",
        "InternLM2ForRewardModel",
        "Qwen2ForProcessRewardModel",
        "*ForSequenceClassification",
        "*ForCausalLM",
        "*Model",
    ):
        assert name in message
    assert "convert='classify'" in message and "classifier_from_token" in message and "register()" in message


@pytest.mark.parametrize(
    "architecture, expected",
    [
        ("Qwen3Model", "embedding"),  # a base model: embeddings
        ("GPT2LMHeadModel", "process"),  # *LMHeadModel is generative, not a base *Model
        ("MistralForCausalLM", "process"),
        ("Qwen2ForTokenClassification", "token"),
        ("LlamaPreTrainedModel", None),  # abstract
        ("FooForRewardModel", None),  # "Model" suffix must not swallow unknown reward heads
        ("Qwen3ForRewardModel", None),
        ("NotAModel", None),
    ],
)
def test_suffix_rules_do_not_swallow_each_other(architecture, expected):
    if expected is None:
        with pytest.raises(ValueError, match="is not supported"):
            resolve_spec(architecture)
    else:
        assert resolve_spec(architecture).kind == expected


def test_convert_argument():
    assert resolve_spec("Qwen3ForCausalLM", "classify").default_task == "classify"
    assert resolve_spec("Qwen3Model", "classify").task_defaults["classify"].pooling_type == "LAST"
    assert set(resolve_spec("Qwen3ForSequenceClassification", "embed").tasks) == {"embed", "token_embed"}
    with pytest.raises(ValueError, match="convert='pool'"):
        resolve_spec("Qwen3ForCausalLM", "pool")
    with pytest.raises(ValueError, match="cannot be converted to classify"):
        resolve_spec("InternLM2ForRewardModel", "classify")


def test_readme_table_lists_every_registered_architecture():
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")
    section = readme.split("<!-- section:models -->", 1)[1].split("<!-- /section:models -->", 1)[0]
    rows = re.findall(r"^\| `([^`]+)`", section, flags=re.M)
    for name in supported_architectures():
        assert name in rows, f"README models table lacks {name}"
