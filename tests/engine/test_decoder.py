"""The direct decoder loop (``engine/decoder.py``): row chunks, every direct family, sliding windows.

The loop drives each decoder layer by hand (projections and MLP in row chunks, attention over the whole
packed row), so every family it accepts is checked here against plain transformers with chunks much
smaller than the row, in every packed path.
"""

from __future__ import annotations

import pytest
import torch

from rlhf_rewards.engine import decoder
from rlhf_rewards.engine.runner import ModelRunner
from rlhf_rewards.models.loader import load_pooling_model
from tests.engine.test_runner_paths import (
    CPU,
    PATHS,
    POOLINGS,
    Reference,
    _check,
    _requests,
    _sequences,
    qwen3,  # noqa: F401  (fixture)
)
from tests.support.checkpoints import build_hf_model

FAMILIES = {
    "Qwen2ForSequenceClassification": "Qwen2Config",  # q/k/v biases
    "MistralForSequenceClassification": "MistralConfig",
    "LlamaForSequenceClassification": "LlamaConfig",
}


@pytest.fixture(scope="module", params=list(FAMILIES))
def family(request, tmp_path_factory):
    arch = request.param
    extra = {"sliding_window": None} if arch.startswith("Mistral") else {}
    path = build_hf_model(
        arch, tmp_path_factory.mktemp(arch), config_cls=FAMILIES[arch], num_labels=2, seed=7, **extra
    )
    model = load_pooling_model(str(path), dtype=torch.float32, device=CPU)
    return model, Reference(path, arch)


@pytest.mark.parametrize("chunk", [37, 4096])
@pytest.mark.parametrize("path_name", ["packed+prefix", "packed+prefix+prune"])
def test_direct_families_in_row_chunks(family, monkeypatch, chunk, path_name):
    model, reference = family
    monkeypatch.setattr(decoder, "CPU_ROW_CHUNK", chunk)
    assert decoder.supports_direct(model.backbone)
    runner = ModelRunner(model, CPU, 4096, **PATHS[path_name])
    requests = _requests(_sequences(seed=4), POOLINGS)
    _check(runner.run(requests), requests, reference)
    assert runner.packing_disabled_reason is None
    if chunk == 37:
        assert len(decoder._chunks(runner.last_stats.tokens_run, CPU)) > 3


def test_qwen3_row_chunks_with_a_small_budget(qwen3, monkeypatch):  # noqa: F811
    _, model, reference = qwen3
    monkeypatch.setattr(decoder, "CPU_ROW_CHUNK", 50)
    runner = ModelRunner(model, CPU, 300)
    requests = _requests(_sequences(seed=5), POOLINGS)
    _check(runner.run(requests), requests, reference)
    assert runner.last_stats.forwards > 1


def test_sliding_window_model_falls_back_to_padding(tmp_path):
    # Segment attention does not implement sliding windows: the runner must notice and pad instead of
    # silently attending over the whole row.
    path = build_hf_model(
        "MistralForSequenceClassification",
        tmp_path / "m",
        config_cls="MistralConfig",
        num_labels=2,
        seed=8,
        sliding_window=5,
    )
    model = load_pooling_model(str(path), dtype=torch.float32, device=CPU)
    reference = Reference(path, "MistralForSequenceClassification")
    runner = ModelRunner(model, CPU, 4096)
    requests = _requests(_sequences(seed=6), POOLINGS[:1])
    outputs = runner.run(requests)
    assert runner.packing_disabled_reason is not None and "sliding_window" in runner.packing_disabled_reason
    _check(outputs, requests, reference)


@pytest.mark.slow
def test_compiled_row_blocks_match_reference(qwen3, monkeypatch):  # noqa: F811
    # enforce_eager=False: torch.compile on the row-wise halves of each layer; one graph serves all layers.
    from torch._dynamo.utils import counters

    _, model, reference = qwen3
    # A chunk size equal to a weight dimension would be duck-sized with it and specialised (one extra compile).
    monkeypatch.setattr(decoder, "CPU_ROW_CHUNK", 50)
    counters.clear()
    runner = ModelRunner(model, CPU, 4096, compile=True)
    for seed in (7, 8):  # new row counts must not recompile
        requests = _requests(_sequences(seed=seed), POOLINGS)
        _check(runner.run(requests), requests, reference)
    assert counters["stats"]["unique_graphs"] == 2
    assert not counters["recompiles"]


def test_enforce_eager_must_be_a_bool(qwen3):  # noqa: F811
    from rlhf_rewards import LLM

    path, _, _ = qwen3
    with pytest.raises(ValueError, match="enforce_eager"):
        LLM(str(path), enforce_eager="no")
    assert LLM(str(path), enforce_eager=False).runner.compile
