"""OpenRLHF checkpoints (``RewardModel`` / ``CriticModel``), loaded natively (``rlhf_rewards/models/openrlhf.py``).

The tiny checkpoints are written as OpenRLHF's ``save_model`` writes them: the backbone's weights under its
``base_model_prefix`` (``model.``), the value head ``score.weight`` (``[1, hidden]``), ``architectures:
["RewardModel"]`` with the backbone's ``model_type`` and ``normalize_reward``/``mean``/``std`` in the config.
The reference is independent of the library: transformers' plain ``LlamaModel`` / ``Qwen2Model`` and the head
applied by hand. (OpenRLHF's own code saving and scoring such a checkpoint: ``tests/compat/openrlhf``.)
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import transformers
from safetensors.torch import load_file, save_file
from transformers import AutoTokenizer

from rlhf_rewards import LLM, PoolingParams
from tests.conftest import MIXED_TEXTS
from tests.support.checkpoints import build_checkpoint

ATOL = 1e-5
MEAN, STD = -0.4, 1.7


def _openrlhf_checkpoint(
    root: Path, base_arch: str, architecture: str, *, normalize: bool, head: str = "score"
) -> Path:
    """A causal LM checkpoint rewritten into OpenRLHF's reward/critic layout (random value head)."""
    base = build_checkpoint(base_arch, root / f"{base_arch}-base", seed=31)
    out = root / f"{architecture}-{base_arch}-{normalize}-{head}"
    out.mkdir()
    tensors = {k: v for k, v in load_file(base / "model.safetensors").items() if k.startswith("model.")}
    hidden = tensors["model.embed_tokens.weight"].shape[1]
    tensors[f"{head}.weight"] = 0.3 * torch.randn(1, hidden, generator=torch.Generator().manual_seed(5))
    save_file(tensors, out / "model.safetensors")
    config = json.loads((base / "config.json").read_text())
    config.update(architectures=[architecture], normalize_reward=normalize, mean=MEAN, std=STD)
    if head != "score":
        config["value_head_prefix"] = head
    (out / "config.json").write_text(json.dumps(config))
    for f in base.iterdir():
        if f.name.startswith(("tokenizer", "special_tokens", "chat_template")):
            (out / f.name).write_bytes(f.read_bytes())
    return out


def _reference(path: Path, texts: list[str], head: str = "score") -> list[torch.Tensor]:
    """Per-token values ``hidden @ head.T`` from transformers' base model on the checkpoint's weights."""
    config = transformers.AutoConfig.from_pretrained(path)
    base = transformers.AutoModel.from_config(config, dtype=torch.float32)
    tensors = load_file(path / "model.safetensors")
    base.load_state_dict({k.removeprefix("model."): v for k, v in tensors.items() if k.startswith("model.")})
    base.eval()
    tok = AutoTokenizer.from_pretrained(path)
    outs = []
    with torch.no_grad():
        for text in texts:
            ids = torch.tensor([tok(text)["input_ids"]])
            hidden = base(input_ids=ids).last_hidden_state[0]
            outs.append(hidden @ tensors[f"{head}.weight"].T.float())
    return outs


@pytest.mark.parametrize("base_arch", ["LlamaForCausalLM", "Qwen3ForCausalLM"])
@pytest.mark.parametrize("normalize", [True, False])
def test_reward_model_scores_its_last_token(tmp_path, base_arch, normalize):
    path = _openrlhf_checkpoint(tmp_path, base_arch, "RewardModel", normalize=normalize)
    llm = LLM(str(path), dtype="float32", device="cpu")
    info = llm.model_info()
    assert (info.kind, info.default_task) == ("outcome", "classify")
    outs = llm.encode(MIXED_TEXTS, PoolingParams(use_activation=False), pooling_task="classify")
    for out, values in zip(outs, _reference(path, MIXED_TEXTS), strict=True):
        expected = float(values[-1, 0])
        expected = (expected - MEAN) / STD if normalize else expected
        assert abs(float(out.outputs.data.reshape(-1)[0]) - expected) <= ATOL


def test_normalize_switch_is_the_config_field(tmp_path):
    path = _openrlhf_checkpoint(tmp_path, "LlamaForCausalLM", "RewardModel", normalize=True)
    params = PoolingParams(use_activation=False)
    normalized = LLM(str(path), dtype="float32", device="cpu").encode(
        MIXED_TEXTS, params, pooling_task="classify"
    )
    raw = LLM(str(path), dtype="float32", device="cpu", hf_overrides={"normalize_reward": False}).encode(
        MIXED_TEXTS, params, pooling_task="classify"
    )
    for n, r in zip(normalized, raw, strict=True):
        assert abs(float(n.outputs.data[0]) - (float(r.outputs.data[0]) - MEAN) / STD) <= ATOL


def test_value_head_prefix_and_critic_per_token_values(tmp_path):
    path = _openrlhf_checkpoint(
        tmp_path, "Qwen3ForCausalLM", "CriticModel", normalize=True, head="value_head"
    )
    llm = LLM(str(path), dtype="float32", device="cpu")
    assert llm.model_info().kind == "token"
    outs = llm.encode(MIXED_TEXTS, PoolingParams(use_activation=False), pooling_task="token_classify")
    for out, values in zip(outs, _reference(path, MIXED_TEXTS, head="value_head"), strict=True):
        got = out.outputs.data.reshape(values.shape[0], -1)
        assert torch.allclose(got, (values - MEAN) / STD, atol=ATOL)


def test_missing_value_head_is_refused(tmp_path):
    path = _openrlhf_checkpoint(tmp_path, "LlamaForCausalLM", "RewardModel", normalize=False)
    tensors = load_file(path / "model.safetensors")
    del tensors["score.weight"]
    save_file(tensors, path / "model.safetensors")
    with pytest.raises(ValueError, match="score"):
        LLM(str(path), dtype="float32", device="cpu")
