"""bf16/fp16 backbones keep float32 heads, and their scores stay close to the float32 ones.

Stated tolerance: with a bf16 or fp16 backbone, every raw score is within 5% of the largest float32 score
magnitude of the batch (the tiny random test models are badly conditioned, real checkpoints do better).
Heads and pooling always run in float32: the classifier/LM-head math is float32 on float32 weights.
"""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from rlhf_rewards import LLM, PoolerConfig, PoolingParams
from tests.conftest import MIXED_TEXTS

RAW = PoolingParams(use_activation=False)
TEXTS = [t + " <extra_0>" for t in MIXED_TEXTS]
REL_TOL = 0.05

# architecture -> (task, pooler config, head module names)
CASES = {
    "Qwen3ForSequenceClassification": ("classify", None, ["score"]),
    "LlamaForSequenceClassification": ("classify", None, ["score"]),
    "JambaForSequenceClassification": ("classify", None, ["score"]),
    "Qwen2ForRewardModel": ("token_classify", None, ["score.0", "score.2"]),
    "Qwen2ForProcessRewardModel": ("token_classify", None, ["score.0", "score.2"]),
    "InternLM2ForRewardModel": ("token_classify", None, ["v_head"]),
    "LlamaForCausalLM": (
        "token_classify",
        {"pooling_type": "STEP", "step_tag_id": 3, "returned_token_ids": [16, 18]},
        [],
    ),
}
# Heads of the natively implemented classes load straight into float32 (never rounded to bf16).
EXACT_HEADS = {"Qwen2ForRewardModel", "Qwen2ForProcessRewardModel", "InternLM2ForRewardModel"}


def scores(llm: LLM, task: str) -> torch.Tensor:
    outs = llm.encode(TEXTS, RAW, pooling_task=task)
    assert all(o.outputs.data.dtype == torch.float32 for o in outs)
    return torch.cat([o.outputs.data.flatten() for o in outs])


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
@pytest.mark.parametrize("architecture", sorted(CASES))
def test_low_precision_backbone_keeps_float32_head(checkpoint_factory, architecture, dtype):
    task, pooler, heads = CASES[architecture]
    path = checkpoint_factory(architecture, seed=61)
    config = PoolerConfig.from_any(pooler)
    full = LLM(str(path), device="cpu", pooler_config=config)
    low = LLM(str(path), device="cpu", pooler_config=config, dtype=dtype)
    torch_dtype = getattr(torch, dtype)
    assert low.model.backbone.get_input_embeddings().weight.dtype == torch_dtype
    checkpoint = load_file(str(path / "model.safetensors"))
    for name in heads:
        for pname, param in low.model.hf_model.get_submodule(name).named_parameters():
            assert param.dtype == torch.float32, f"{name}.{pname} is {param.dtype}"
            if architecture in EXACT_HEADS:
                assert torch.equal(param, checkpoint[f"{name}.{pname}"])
    expected, got = scores(full, task), scores(low, task)
    assert got.shape == expected.shape
    error = (got - expected).abs().max().item()
    assert error <= REL_TOL * expected.abs().max().item(), (
        f"{dtype} error {error:.4f} vs scale {expected.abs().max():.3f}"
    )


def test_lm_head_rows_are_multiplied_in_float32(checkpoint_factory):
    """The LM-head path (tied to a bf16 embedding, so not cast in place) computes in float32."""
    path = checkpoint_factory("LlamaForCausalLM", seed=61)
    config = PoolerConfig(pooling_type="STEP", step_tag_id=3, returned_token_ids=[16, 18])
    # No cross-call prefix cache (engine/kv_cache.py, 4e83ed5): the second call would reuse the first's bf16
    # keys/values and compute the rest in a shorter forward, whose bf16 rounding differs (2e-2 here); this test
    # is about the float32 head product, so both calls run the full forward.
    llm = LLM(str(path), device="cpu", dtype="bfloat16", pooler_config=config, enable_prefix_caching=False)
    # The STEP config applies to token_embed too: the bf16 hidden states (as float32) at the step tags (raw:
    # token_embed is L2-normalized by default, as vLLM's).
    hidden = [o.outputs.data for o in llm.encode(TEXTS, RAW, pooling_task="token_embed")]
    raw = llm.encode(TEXTS, RAW, pooling_task="token_classify")
    rows = llm.model.hf_model.lm_head.weight.detach()[[16, 18]]
    assert rows.dtype == torch.bfloat16
    for h, out in zip(hidden, raw, strict=True):
        assert h.shape == (1, 64)
        torch.testing.assert_close(out.outputs.data, h @ rows.float().T, atol=1e-5, rtol=0)
