"""``InternLM2ForRewardModel`` implemented natively, against a forward written out by hand in this test.

The tiny checkpoint is written the way the hub ships one: ``model_type: internlm2`` (unknown to
transformers), an ``auto_map`` into remote files that do not exist, a tokenizer config naming the remote
``InternLM2Tokenizer``, and the original weight names with ``wqkv`` packed as ``[num_kv_heads, groups + 2,
head_dim]``. The reference below uses nothing from the library or from transformers' modeling code.
"""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from transformers import AutoConfig, AutoTokenizer

from rlhf_rewards import LLM, PoolingParams
from rlhf_rewards.models.internlm2 import InternLM2Config, InternLM2ForRewardModel
from tests.conftest import MIXED_TEXTS

ATOL = 1e-5


@pytest.fixture(scope="module", params=[False, True], ids=["no-bias", "bias"])
def rm(request, checkpoint_factory):
    return checkpoint_factory("InternLM2ForRewardModel", seed=31, bias=request.param)


def _rms(x: torch.Tensor, w: torch.Tensor, eps: float) -> torch.Tensor:
    return w * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def reference_scores(path):
    """Per-token ``v_head`` scores of one unpadded sequence, computed from the raw tensors."""
    cfg = json.loads((path / "config.json").read_text())
    w = load_file(str(path / "model.safetensors"))
    h, n_heads, n_kv = cfg["hidden_size"], cfg["num_attention_heads"], cfg["num_key_value_heads"]
    hd, groups, eps = h // n_heads, n_heads // n_kv, cfg["rms_norm_eps"]

    @torch.no_grad()
    def forward(ids: list[int]) -> torch.Tensor:
        t = len(ids)
        x = w["model.tok_embeddings.weight"][torch.tensor(ids)]
        inv_freq = 1.0 / (cfg["rope_theta"] ** (torch.arange(0, hd, 2, dtype=torch.float32) / hd))
        angles = torch.outer(torch.arange(t, dtype=torch.float32), inv_freq)
        cos, sin = torch.cat((angles, angles), -1).cos(), torch.cat((angles, angles), -1).sin()
        causal = torch.full((t, t), float("-inf")).triu(1)
        for i in range(cfg["num_hidden_layers"]):
            p = f"model.layers.{i}."
            a = _rms(x, w[p + "attention_norm.weight"], eps)
            qkv = a @ w[p + "attention.wqkv.weight"].T
            if cfg["bias"]:
                qkv = qkv + w[p + "attention.wqkv.bias"]
            qkv = qkv.view(t, n_kv, groups + 2, hd)
            q = qkv[:, :, :groups].reshape(t, n_heads, hd)
            k = qkv[:, :, -2].repeat_interleave(groups, dim=1)  # query head j uses KV head j // groups
            v = qkv[:, :, -1].repeat_interleave(groups, dim=1)
            q = q * cos[:, None] + _rotate_half(q) * sin[:, None]
            k = k * cos[:, None] + _rotate_half(k) * sin[:, None]
            att = torch.einsum("qhd,khd->hqk", q, k) / hd**0.5 + causal
            out = torch.einsum("hqk,khd->qhd", att.softmax(-1), v).reshape(t, h)
            out = out @ w[p + "attention.wo.weight"].T
            if cfg["bias"]:
                out = out + w[p + "attention.wo.bias"]
            x = x + out
            f = _rms(x, w[p + "ffn_norm.weight"], eps)
            gate, up = f @ w[p + "feed_forward.w1.weight"].T, f @ w[p + "feed_forward.w3.weight"].T
            x = x + (F.silu(gate) * up) @ w[p + "feed_forward.w2.weight"].T
        return _rms(x, w["model.norm.weight"], eps) @ w["v_head.weight"].T

    return forward


def test_checkpoint_looks_like_the_hub_one(rm):
    config = json.loads((rm / "config.json").read_text())
    assert config["model_type"] == "internlm2" and config["architectures"] == ["InternLM2ForRewardModel"]
    assert config["auto_map"]["AutoModel"] == "modeling_internlm2.InternLM2ForRewardModel"
    assert not (rm / "modeling_internlm2.py").exists()
    tok_config = json.loads((rm / "tokenizer_config.json").read_text())
    assert tok_config["tokenizer_class"] == "InternLM2Tokenizer"
    names = set(load_file(str(rm / "model.safetensors")))
    assert {
        "model.tok_embeddings.weight",
        "model.layers.1.attention.wqkv.weight",
        "model.layers.1.attention.wo.weight",
        "model.layers.0.feed_forward.w1.weight",
        "model.layers.0.feed_forward.w2.weight",
        "model.layers.0.feed_forward.w3.weight",
        "model.layers.0.attention_norm.weight",
        "model.layers.0.ffn_norm.weight",
        "model.norm.weight",
        "v_head.weight",
    } <= names


def test_token_classify_raw_scores_match_the_hand_written_forward(rm):
    llm = LLM(str(rm), device="cpu", max_num_batched_tokens=128)
    assert llm.pooler_config_for("token_classify").pooling_type == "ALL"
    # Raw scores with use_activation=False (issue 15: vLLM 0.33 applies the activation by default).
    outs = llm.encode(MIXED_TEXTS, PoolingParams(use_activation=False), pooling_task="token_classify")
    reference = reference_scores(rm)
    for out in outs:
        expected = reference(out.prompt_token_ids)
        assert out.outputs.data.shape == (len(out.prompt_token_ids), 1)
        torch.testing.assert_close(out.outputs.data, expected, atol=ATOL, rtol=0)
    (default,) = llm.encode(MIXED_TEXTS[:1], pooling_task="token_classify")
    torch.testing.assert_close(
        default.outputs.data, torch.sigmoid(reference(default.prompt_token_ids)), atol=ATOL, rtol=0
    )


def test_reward_token_scoring_as_on_the_model_card(rm):
    """The card appends ``reward_token_id`` to the rendered conversation and reads the last score."""
    llm = LLM(str(rm), device="cpu")
    info = llm.model_info()
    tok = llm.get_tokenizer()
    reward_token_id = json.loads((rm / "config.json").read_text())["reward_token_id"]
    assert info.reward_token == "<|reward|>" == tok.decode([reward_token_id])
    chats = [
        [{"role": "user", "content": "What is 12 + 7?"}, {"role": "assistant", "content": "19"}],
        [
            {"role": "user", "content": "Hello"},
            {"role": "assistant", "content": "Hello, my name is Ada and I like poetry."},
        ],
    ]
    prompts = [{"prompt_token_ids": ids + [reward_token_id]} for ids in llm.render_chat(chats)]
    outs = llm.encode(prompts, PoolingParams(use_activation=False), pooling_task="token_classify")
    model = InternLM2ForRewardModel.from_pretrained(str(rm)).eval()
    reference = reference_scores(rm)
    for prompt, out in zip(prompts, outs, strict=True):
        ids = prompt["prompt_token_ids"]
        with torch.no_grad():  # the class's own forward: the score at the reward token
            card_score = model(input_ids=torch.tensor([ids])).logits[0, 0]
        assert float(out.outputs.data[-1, 0]) == pytest.approx(float(card_score), abs=ATOL)
        assert float(out.outputs.data[-1, 0]) == pytest.approx(float(reference(ids)[-1, 0]), abs=ATOL)


def test_native_loading_keeps_the_original_weight_names(rm):
    """``from_pretrained`` is the real path and names match the checkpoint, so peft adapters for it apply."""
    model = InternLM2ForRewardModel.from_pretrained(str(rm))
    assert set(model.state_dict()) == set(load_file(str(rm / "model.safetensors")))
    assert isinstance(model.config, InternLM2Config) and model.config.reward_token_id is not None
    # transformers' AutoConfig knows the model type too, without trust_remote_code.
    assert isinstance(AutoConfig.from_pretrained(str(rm)), InternLM2Config)
    # The tokenizer config names a remote-code class; the library still gets a working tokenizer.
    llm = LLM(str(rm), device="cpu")
    assert (
        llm.get_tokenizer()("Hello")["input_ids"]
        == AutoTokenizer.from_pretrained(str(rm))("Hello")["input_ids"]
    )


def test_peft_targets_the_original_module_names(rm):
    from peft import LoraConfig, get_peft_model

    llm = LLM(str(rm), device="cpu")
    targets = ["wqkv", "wo", "w1", "w2", "w3"]
    peft_model = get_peft_model(llm.model.hf_model, LoraConfig(r=2, target_modules=targets))
    wrapped = {name.rsplit(".", 1)[-1] for name, m in peft_model.named_modules() if hasattr(m, "lora_A")}
    assert wrapped == set(targets)
