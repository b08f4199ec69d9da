"""A split the model cannot take fails before any weights load, naming the field and the values it allows."""

from __future__ import annotations

import multiprocessing
import shutil

import pytest
import torch

from rlhf_rewards import LLM
from rlhf_rewards.parallel import ParallelConfig, check_split
from rlhf_rewards.parallel.plan import divisors


@pytest.fixture(scope="module")
def config_only(seq_rm, tmp_path_factory):
    """The sequence RM's config.json without any weights: loading them would fail, so any error is the split's."""
    folder = tmp_path_factory.mktemp("config-only")
    shutil.copy(seq_rm / "config.json", folder / "config.json")
    return folder


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (
            {"tensor_parallel_size": 3},
            r"tensor_parallel_size=3 does not divide the model's num_attention_heads=4; "
            r"allowed tensor_parallel_size values for .*: \[1, 2\]",
        ),
        (
            {"tensor_parallel_size": 4},
            r"tensor_parallel_size=4 does not divide the model's num_key_value_heads=2; "
            r"allowed tensor_parallel_size values for .*: \[1, 2\]",
        ),
        (
            {"pipeline_parallel_size": 3},
            r"pipeline_parallel_size=3 is more than the model's num_hidden_layers=2.*"
            r"allowed pipeline_parallel_size values: 1\.\.2",
        ),
        (
            {"tensor_parallel_size": 2, "enable_lora": True},
            r"enable_lora=True is not supported with "
            r"tensor_parallel_size=2.*tensor_parallel_size=1 and pipeline_parallel_size=1",
        ),
    ],
)
def test_bad_split_fails_before_weights_load(config_only, kwargs, message):
    with pytest.raises(ValueError, match=message):
        LLM(str(config_only), device="cpu", **kwargs)
    assert multiprocessing.active_children() == []  # no worker was started either


def test_architecture_without_a_plan(checkpoint_factory, tmp_path):
    jamba = checkpoint_factory("JambaForSequenceClassification")
    shutil.copy(jamba / "config.json", tmp_path / "config.json")
    with pytest.raises(
        ValueError,
        match=r"pipeline_parallel_size: .*JambaForSequenceClassification, model_type='jamba'\) "
        r"has no tensor/pipeline-parallel plan here; supported model_type values: "
        r"\['llama', 'mistral', 'qwen2', 'qwen3', 'internlm2'\]",
    ):
        LLM(str(tmp_path), device="cpu", pipeline_parallel_size=2)


def test_lm_head_models_take_no_pipeline_split(checkpoint_factory, tmp_path):
    lm = checkpoint_factory("LlamaForCausalLM", seed=51)
    shutil.copy(lm / "config.json", tmp_path / "config.json")
    with pytest.raises(
        ValueError,
        match=r"pipeline_parallel_size=2: LlamaForCausalLM scores with its LM head.*allowed "
        r"for LM-head \(math-shepherd\) models: pipeline_parallel_size=1",
    ):
        LLM(str(tmp_path), device="cpu", pipeline_parallel_size=2)


@pytest.mark.parametrize("bad", [0, -1, True, 2.0, "2"])
@pytest.mark.parametrize("field", ["tensor_parallel_size", "pipeline_parallel_size"])
def test_sizes_are_validated(field, bad):
    with pytest.raises(ValueError, match=rf"{field} must be an integer >= 1, got {bad!r}"):
        ParallelConfig(**{field: bad})


def test_more_ranks_than_cuda_devices(monkeypatch):
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    config = {
        "model_type": "qwen3",
        "architectures": ["Qwen3ForSequenceClassification"],
        "num_attention_heads": 8,
        "num_key_value_heads": 8,
        "num_hidden_layers": 4,
    }
    with pytest.raises(
        ValueError,
        match=r"needs 4 CUDA devices \(one per rank\) but 1 are visible; allowed: "
        r"tensor_parallel_size \* pipeline_parallel_size <= 1",
    ):
        check_split(ParallelConfig(2, 2), config, device=torch.device("cuda"))
    check_split(ParallelConfig(1, 1), config, device=torch.device("cuda"))  # one process: nothing to check


def test_split_shapes_the_model_takes():
    config = {
        "model_type": "llama",
        "architectures": ["LlamaForSequenceClassification"],
        "num_attention_heads": 64,
        "num_key_value_heads": 8,
        "num_hidden_layers": 80,
    }  # Llama-3.1-70B's attention
    for tp in (1, 2, 4, 8):
        check_split(ParallelConfig(tp, 2), config, device=torch.device("cpu"))
    with pytest.raises(ValueError, match=r"allowed tensor_parallel_size values for model: \[1, 2, 4, 8\]"):
        check_split(ParallelConfig(16, 1), config, device=torch.device("cpu"))
    assert divisors(12) == [1, 2, 3, 4, 6, 12]


def test_ray_replica_gpus_must_be_whole_to_span_several(seq_rm):
    pytest.importorskip("ray")
    from rlhf_rewards.workers import RayWorkerPool

    with pytest.raises(ValueError, match=r"num_gpus_per_replica must be a whole number above 1 .* got 1\.5"):
        RayWorkerPool(str(seq_rm), num_gpus_per_replica=1.5)
