"""``Qwen2ForRewardModel`` (Qwen2.5-Math-RM) and ``Qwen2ForProcessRewardModel`` (Qwen2.5-Math-PRM), loaded natively.

The tiny checkpoints are written the way the hub ships them (``model_type: qwen2``, an ``auto_map`` into
remote files that do not exist, backbone under ``model.``, head ``score.0`` / ``score.2``). The reference is
independent of the library: transformers' plain ``Qwen2Model`` for the backbone and the head applied by hand
from the checkpoint's tensors.
"""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoConfig, AutoTokenizer, Qwen2Model

from rlhf_rewards import LLM, PoolerConfig, PoolingParams
from rlhf_rewards.models.qwen2_reward import Qwen2ForProcessRewardModel, Qwen2ForRewardModel
from tests.conftest import MIXED_TEXTS
from tests.support.references import make_step_rewards

ATOL = 1e-5
PRM_TEXTS = [
    "Solve 3 * 4 = 12<extra_0>12 - 5 = 7<extra_0>So the result is 7.<extra_0>",
    "One step only<extra_0>",
    "No step tag at all",
    "<extra_0>x<extra_0>" + "The quick brown fox jumps over the lazy dog. " * 4 + "<extra_0>",
]


@pytest.fixture(scope="module")
def rm(checkpoint_factory):
    return checkpoint_factory("Qwen2ForRewardModel", seed=21)


@pytest.fixture(scope="module")
def prm(checkpoint_factory):
    return checkpoint_factory("Qwen2ForProcessRewardModel", seed=22)


def reference_token_logits(path):
    """``[seq, num_labels]`` logits per text: transformers' Qwen2Model + the score MLP written out by hand."""
    backbone = Qwen2Model.from_pretrained(str(path), dtype=torch.float32).eval()
    w = load_file(str(path / "model.safetensors"))
    tok = AutoTokenizer.from_pretrained(str(path))

    @torch.no_grad()
    def forward(text: str) -> tuple[list[int], torch.Tensor]:
        ids = tok(text)["input_ids"]
        hidden = backbone(input_ids=torch.tensor([ids])).last_hidden_state[0]
        h1 = torch.relu(hidden @ w["score.0.weight"].T + w["score.0.bias"])
        return ids, h1 @ w["score.2.weight"].T + w["score.2.bias"]

    return forward


def test_checkpoints_look_like_the_hub_ones(rm, prm):
    for path, arch, labels in ((rm, "Qwen2ForRewardModel", 1), (prm, "Qwen2ForProcessRewardModel", 2)):
        config = json.loads((path / "config.json").read_text())
        assert config["architectures"] == [arch] and config["model_type"] == "qwen2"
        assert config["auto_map"]["AutoModel"] == f"modeling_qwen2_rm.{arch}"
        assert not (path / "modeling_qwen2_rm.py").exists()
        names = set(load_file(str(path / "model.safetensors")))
        assert {"score.0.weight", "score.0.bias", "score.2.weight", "score.2.bias"} <= names
        assert "model.layers.0.self_attn.q_proj.weight" in names
        assert load_file(str(path / "model.safetensors"))["score.2.weight"].shape == (labels, 64)
        # transformers itself reads the config without remote code.
        assert type(AutoConfig.from_pretrained(str(path))).__name__ == "Qwen2Config"


def test_from_pretrained_is_the_real_path_and_keeps_weight_names(rm, prm):
    for path, cls in ((rm, Qwen2ForRewardModel), (prm, Qwen2ForProcessRewardModel)):
        model = cls.from_pretrained(str(path))
        assert set(model.state_dict()) == set(load_file(str(path / "model.safetensors")))


def test_rm_token_classify_raw_scores_match_reference(rm):
    llm = LLM(str(rm), device="cpu", max_num_batched_tokens=128)
    assert llm.pooler_config_for("token_classify").pooling_type == "ALL"
    # Raw scores with use_activation=False (issue 15: vLLM 0.33 applies the activation by default).
    outs = llm.encode(MIXED_TEXTS, PoolingParams(use_activation=False), pooling_task="token_classify")
    reference = reference_token_logits(rm)
    for text, out in zip(MIXED_TEXTS, outs, strict=True):
        ids, logits = reference(text)
        assert out.prompt_token_ids == ids
        assert out.outputs.data.shape == (len(ids), 1)
        torch.testing.assert_close(out.outputs.data, logits, atol=ATOL, rtol=0)
    # The default is the raw score too (vLLM 0.32's Qwen2ForRewardModelConfig sets use_activation=False when the
    # pooler config leaves it unset); use_activation=True gives the sigmoid.
    default = llm.encode(MIXED_TEXTS[:2], pooling_task="token_classify")
    torch.testing.assert_close(default[1].outputs.data, reference(MIXED_TEXTS[1])[1], atol=ATOL, rtol=0)
    act = llm.encode(MIXED_TEXTS[:2], PoolingParams(use_activation=True), pooling_task="token_classify")
    torch.testing.assert_close(
        act[1].outputs.data, torch.sigmoid(reference(MIXED_TEXTS[1])[1]), atol=ATOL, rtol=0
    )
    on = LLM(str(rm), device="cpu", pooler_config={"use_activation": True})
    torch.testing.assert_close(
        on.encode(MIXED_TEXTS[1], pooling_task="token_classify")[0].outputs.data,
        torch.sigmoid(reference(MIXED_TEXTS[1])[1]),
        atol=ATOL,
        rtol=0,
    )


def test_rm_forward_returns_the_last_real_token_score(rm):
    """As the remote code does, so the class also works where a sequence classifier is expected."""
    model = Qwen2ForRewardModel.from_pretrained(str(rm)).eval()
    tok = AutoTokenizer.from_pretrained(str(rm))
    batch = tok(MIXED_TEXTS, padding=True, return_tensors="pt")
    reference = reference_token_logits(rm)
    with torch.no_grad():
        logits = model(**batch).logits
    expected = torch.stack([reference(t)[1][-1] for t in MIXED_TEXTS])
    torch.testing.assert_close(logits, expected, atol=ATOL, rtol=0)


def test_prm_step_rewards_match_the_model_card(prm):
    llm = LLM(str(prm), device="cpu", max_num_batched_tokens=128)
    tok = AutoTokenizer.from_pretrained(str(prm))
    step_sep_id = tok.encode("<extra_0>")[0]
    config = llm.pooler_config_for("token_classify")
    assert (config.pooling_type, config.step_tag_id, config.use_activation) == ("STEP", step_sep_id, True)
    info = llm.model_info()
    assert (info.kind, info.step_tag, info.step_tag_id, info.num_labels) == (
        "process",
        "<extra_0>",
        step_sep_id,
        2,
    )

    outs = llm.encode(PRM_TEXTS, pooling_task="token_classify")
    reference = reference_token_logits(prm)
    for text, out in zip(PRM_TEXTS, outs, strict=True):
        ids, logits = reference(text)
        input_ids = torch.tensor([ids])
        (expected,) = make_step_rewards(logits.unsqueeze(0), input_ids == step_sep_id)
        n_steps = text.count("<extra_0>")
        assert out.outputs.data.shape == (n_steps, 2)
        assert out.outputs.data[:, 1].tolist() == pytest.approx(expected, abs=ATOL)
        torch.testing.assert_close(out.outputs.data.sum(-1), torch.ones(n_steps), atol=ATOL, rtol=0)


def test_prm_step_tag_can_be_overridden_and_raw_logits_requested(prm):
    tok = AutoTokenizer.from_pretrained(str(prm))
    other = tok.convert_tokens_to_ids("<|im_end|>")
    text = "a<|im_end|>b<extra_0>c<|im_end|>"
    ids, logits = reference_token_logits(prm)(text)
    # vLLM style: only the step tag is given; the STEP default stays and the other tasks are untouched.
    for config in (PoolerConfig(step_tag_id=other), PoolerConfig(pooling_type="STEP", step_tag_id=other)):
        llm = LLM(str(prm), device="cpu", pooler_config=config)
        (out,) = llm.encode(text, PoolingParams(use_activation=False), pooling_task="token_classify")
        torch.testing.assert_close(out.outputs.data, logits[torch.tensor(ids) == other], atol=ATOL, rtol=0)
        # An explicit token-level type configures every token task (token_embed too); step fields alone don't.
        rows = 2 if config.pooling_type == "STEP" else len(ids)
        assert llm.encode(text, pooling_task="token_embed")[0].outputs.data.shape == (rows, 64)
    # ALL pooling on the PRM gives every token's softmax.
    llm_all = LLM(str(prm), device="cpu", pooler_config={"pooling_type": "ALL"})
    (out,) = llm_all.encode(text, pooling_task="token_classify")
    torch.testing.assert_close(out.outputs.data, torch.softmax(logits, -1), atol=ATOL, rtol=0)


def test_prm_without_a_step_tag_token_is_a_clear_error(tmp_path):
    from tests.support.checkpoints import build_checkpoint, build_tokenizer

    # A tokenizer whose step tag is spelled "<step>": "<extra_0>" is not one of its tokens.
    build_tokenizer(tmp_path / "tok")
    for f in (tmp_path / "tok").iterdir():
        f.write_text(f.read_text().replace("<extra_0>", "<step>"))
    path = build_checkpoint(
        "Qwen2ForProcessRewardModel", tmp_path / "prm", tokenizer_dir=str(tmp_path / "tok")
    )
    assert AutoTokenizer.from_pretrained(str(path)).tokenize("<extra_0>") != ["<extra_0>"]
    with pytest.raises(ValueError, match=r"<extra_0>.*step_tag_id"):
        LLM(str(path), device="cpu")
    # Naming the step tag explicitly works.
    step = AutoTokenizer.from_pretrained(str(path)).convert_tokens_to_ids("<step>")
    llm = LLM(str(path), device="cpu", pooler_config={"pooling_type": "STEP", "step_tag_id": step})
    assert llm.encode("a<step>b<step>", pooling_task="token_classify")[0].outputs.data.shape == (2, 2)
