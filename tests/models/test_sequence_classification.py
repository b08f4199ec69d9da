"""Sequence (outcome) reward models against transformers' own ``*ForSequenceClassification.logits``.

Skywork-Reward-V2 (Qwen3, Llama) and Jamba: raw scores equal transformers' logits to 1e-5 in fp32 for one
mixed-length ``encode`` call, whichever side the tokenizer pads and whether or not the config has a pad token.
The reference is transformers' batched forward (its own padding, its own last-non-pad-token rule) when a pad
token exists, and one unpadded forward per text when it does not (transformers refuses batches then).
"""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from rlhf_rewards import LLM, PoolingParams
from tests.conftest import MIXED_TEXTS

ATOL = 1e-5
ARCHITECTURES = [
    "Qwen3ForSequenceClassification",
    "LlamaForSequenceClassification",
    "JambaForSequenceClassification",
]


def transformers_logits(path, texts: list[str], pad_token: bool) -> torch.Tensor:
    model = AutoModelForSequenceClassification.from_pretrained(str(path), dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(str(path))
    with torch.no_grad():
        if pad_token:
            batch = tok(texts, padding=True, return_tensors="pt")
            assert (batch["attention_mask"] == 0).any(), "the reference batch must actually be padded"
            return model(**batch).logits
        assert model.config.pad_token_id is None and tok.pad_token is None
        return torch.cat([model(**tok(t, return_tensors="pt")).logits for t in texts])


@pytest.mark.parametrize("architecture", ARCHITECTURES)
@pytest.mark.parametrize("padding_side", ["left", "right"])
@pytest.mark.parametrize("pad_token", [True, False], ids=["pad", "no-pad"])
def test_raw_scores_equal_transformers_logits(checkpoint_factory, architecture, padding_side, pad_token):
    path = checkpoint_factory(architecture, padding_side=padding_side, pad_token=pad_token, seed=11)
    llm = LLM(str(path), device="cpu", max_num_batched_tokens=128)  # several micro-batches in one call
    outs = llm.encode(MIXED_TEXTS, PoolingParams(use_activation=False), pooling_task="classify")
    expected = transformers_logits(path, MIXED_TEXTS, pad_token)
    got = torch.stack([o.outputs.data for o in outs])
    assert got.shape == expected.shape == (len(MIXED_TEXTS), 1)
    torch.testing.assert_close(got, expected, atol=ATOL, rtol=0)
    # Default classify output of a 1-label RM is the sigmoid of that logit (vLLM).
    act = torch.stack([o.outputs.data for o in llm.encode(MIXED_TEXTS, pooling_task="classify")])
    torch.testing.assert_close(act, torch.sigmoid(expected), atol=ATOL, rtol=0)
    assert llm.model_info().kind == "outcome" and llm.model_info().default_task == "classify"


def test_jamba_is_never_packed(checkpoint_factory):
    llm = LLM(str(checkpoint_factory("JambaForSequenceClassification", seed=11)), device="cpu")
    assert llm.model.supports_packing is False


def test_a_checkpoint_without_its_score_head_is_refused(checkpoint_factory, tmp_path):
    """transformers would silently initialize a random head; a reward model must not score with one."""
    src = checkpoint_factory("Qwen3ForSequenceClassification", seed=11)
    dst = tmp_path / "headless"
    dst.mkdir()
    for f in src.iterdir():
        (dst / f.name).write_bytes(f.read_bytes())
    weights = load_file(str(dst / "model.safetensors"))
    del weights["score.weight"]
    save_file(weights, str(dst / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(ValueError, match=r"lacks its head \['score.weight'\].*classifier_from_token"):
        LLM(str(dst), device="cpu")
