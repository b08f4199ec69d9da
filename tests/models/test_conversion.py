"""Generative models converted into classifiers (``convert="classify"``), and embeddings on any backbone.

References are real transformers components: ``*ForSequenceClassification`` loaded from the same weights
(for a saved ``score`` head), the LM's own next-token logits (for ``classifier_from_token``), and the base
model's ``last_hidden_state`` (for embeddings).
"""

from __future__ import annotations

import json
import shutil

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from transformers import AutoModel, AutoModelForCausalLM, AutoTokenizer, Qwen3ForSequenceClassification

from rlhf_rewards import LLM, PoolingParams
from tests.conftest import MIXED_TEXTS

ATOL = 1e-5
RAW = PoolingParams(use_activation=False)


def with_tensors(src, dst, **tensors):
    """A copy of checkpoint ``src`` in ``dst`` with extra tensors in its safetensors file."""
    shutil.copytree(src, dst)
    weights = load_file(str(dst / "model.safetensors"))
    weights.update({k.replace("__", "."): v for k, v in tensors.items()})
    save_file(weights, str(dst / "model.safetensors"), metadata={"format": "pt"})
    return dst


def data(outs) -> torch.Tensor:
    return torch.stack([o.outputs.data for o in outs])


@pytest.fixture(scope="module")
def lm_untied(checkpoint_factory):
    return checkpoint_factory("Qwen3ForCausalLM", seed=41, tie_word_embeddings=False)


@pytest.fixture(scope="module")
def lm_tied(checkpoint_factory):
    return checkpoint_factory("Qwen3ForCausalLM", seed=42, tie_word_embeddings=True)


def next_token_logits(path, texts: list[str]) -> torch.Tensor:
    """The LM's logits at the last token of each (unpadded) text, ``[n, vocab]``."""
    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(str(path))
    with torch.no_grad():
        return torch.stack([model(**tok(t, return_tensors="pt")).logits[0, -1] for t in texts])


@pytest.mark.parametrize("architecture", ["Qwen3ForCausalLM", "Qwen3Model"])
def test_saved_score_head_equals_transformers_sequence_classifier(checkpoint_factory, tmp_path, architecture):
    src = checkpoint_factory(architecture, seed=43)
    gen = torch.Generator().manual_seed(0)
    path = with_tensors(src, tmp_path / "with-score", score__weight=0.2 * torch.randn(3, 64, generator=gen))
    llm = LLM(str(path), device="cpu", convert="classify", max_num_batched_tokens=128)
    assert llm.supported_tasks[0] == "classify" and llm.model_info().kind == "outcome"
    reference = Qwen3ForSequenceClassification.from_pretrained(
        str(path), num_labels=3, dtype=torch.float32
    ).eval()
    tok = AutoTokenizer.from_pretrained(str(path))
    with torch.no_grad():
        expected = torch.cat([reference(**tok(t, return_tensors="pt")).logits for t in MIXED_TEXTS])
    torch.testing.assert_close(
        data(llm.encode(MIXED_TEXTS, RAW, pooling_task="classify")), expected, atol=ATOL, rtol=0
    )
    # 3 labels: the default activation is a softmax.
    act = data(llm.encode(MIXED_TEXTS, pooling_task="classify"))
    torch.testing.assert_close(act, torch.softmax(expected, -1), atol=ATOL, rtol=0)
    # The checkpoint's own weight names are kept (peft adapters trained on it apply); a converted
    # *ForCausalLM also has transformers' sequence-classifier names (its untied LM head is released).
    names = set(llm.model.hf_model.state_dict())
    assert {k for k in load_file(str(path / "model.safetensors")) if not k.startswith("lm_head.")} <= names
    if architecture.endswith("ForCausalLM"):
        assert set(reference.state_dict()) <= names


@pytest.mark.parametrize("architecture", ["Qwen3ForCausalLM", "Qwen3Model"])
def test_missing_score_head_says_how_to_supply_one(checkpoint_factory, architecture):
    path = checkpoint_factory(architecture, seed=43)
    with pytest.raises(
        ValueError, match=r"no `score` head.*save a trained `score` head.*classifier_from_token.*method"
    ):
        LLM(str(path), device="cpu", convert="classify")


@pytest.mark.parametrize("fixture", ["lm_untied", "lm_tied"])
def test_from_2_way_softmax(request, fixture):
    path = request.getfixturevalue(fixture)
    tok = AutoTokenizer.from_pretrained(str(path))
    false_tok, true_tok = "-", "+"
    f, t = tok.convert_tokens_to_ids([false_tok, true_tok])
    llm = LLM(
        str(path),
        device="cpu",
        convert="classify",
        max_num_batched_tokens=128,
        hf_overrides={"classifier_from_token": [false_tok, true_tok], "method": "from_2_way_softmax"},
    )
    logits = next_token_logits(path, MIXED_TEXTS)
    raw = data(llm.encode(MIXED_TEXTS, RAW, pooling_task="classify"))
    torch.testing.assert_close(raw, (logits[:, t] - logits[:, f]).unsqueeze(-1), atol=ATOL, rtol=0)
    # The default (sigmoid) output is the LM's probability of the true token against the false one.
    prob = data(llm.encode(MIXED_TEXTS, pooling_task="classify"))
    torch.testing.assert_close(prob[:, 0], torch.softmax(logits[:, [f, t]], -1)[:, 1], atol=ATOL, rtol=0)
    hf_model = llm.model.hf_model
    if fixture == "lm_untied":
        assert hf_model.lm_head is None  # an untied LM head is released once the score head is built
    else:
        assert hf_model.lm_head.weight is hf_model.model.embed_tokens.weight


def test_no_post_processing_and_token_ids(lm_untied):
    tok = AutoTokenizer.from_pretrained(str(lm_untied))
    tokens = ["+", "-", "="]
    ids = tok.convert_tokens_to_ids(tokens)
    logits = next_token_logits(lm_untied, MIXED_TEXTS)
    for spec in (tokens, ids):
        llm = LLM(
            str(lm_untied),
            device="cpu",
            convert="classify",
            hf_overrides={"classifier_from_token": spec, "method": "no_post_processing"},
        )
        raw = data(llm.encode(MIXED_TEXTS, RAW, pooling_task="classify"))
        torch.testing.assert_close(raw, logits[:, ids], atol=ATOL, rtol=0)


def test_vllm_qwen3_reranker_recipe(lm_untied):
    """vLLM's documented overrides for Qwen3-Reranker work unchanged (no convert= needed)."""
    overrides = {
        "architectures": ["Qwen3ForSequenceClassification"],
        "classifier_from_token": ["-", "+"],
        "is_original_qwen3_reranker": True,
    }
    llm = LLM(str(lm_untied), device="cpu", hf_overrides=overrides)
    tok = AutoTokenizer.from_pretrained(str(lm_untied))
    f, t = tok.convert_tokens_to_ids(["-", "+"])
    logits = next_token_logits(lm_untied, MIXED_TEXTS)
    prob = data(llm.encode(MIXED_TEXTS, pooling_task="classify"))[:, 0]
    torch.testing.assert_close(prob, torch.softmax(logits[:, [f, t]], -1)[:, 1], atol=ATOL, rtol=0)
    # classifier_from_token alone on a generative checkpoint implies convert="classify".
    auto = LLM(
        str(lm_untied),
        device="cpu",
        hf_overrides={"classifier_from_token": ["-", "+"], "method": "from_2_way_softmax"},
    )
    torch.testing.assert_close(
        data(auto.encode(MIXED_TEXTS, pooling_task="classify"))[:, 0], prob, atol=ATOL, rtol=0
    )


@pytest.mark.parametrize(
    "overrides, match",
    [
        ({"classifier_from_token": ["-", "+"]}, r"'method'=None.*from_2_way_softmax"),
        (
            {"classifier_from_token": ["-", "+", "="], "method": "from_2_way_softmax"},
            r"\[false_token, true_token\]",
        ),
        (
            {"classifier_from_token": ["-", "<not a token>"], "method": "from_2_way_softmax"},
            r"'<not a token>' is not a token",
        ),
        (
            {"classifier_from_token": [1, 10**6], "method": "no_post_processing"},
            r"token id 1000000 is outside",
        ),
        ({"classifier_from_token": [], "method": "no_post_processing"}, r"non-empty list"),
        ({"classifier_from_token": ["+"], "method": "mean"}, r"'method'='mean'"),
    ],
)
def test_bad_classifier_from_token_is_a_clear_error(lm_tied, overrides, match):
    with pytest.raises(ValueError, match=match):
        LLM(str(lm_tied), device="cpu", convert="classify", hf_overrides=overrides)


@pytest.mark.parametrize("architecture", ["Qwen3ForCausalLM", "Qwen3Model", "Qwen2ForRewardModel"])
def test_embed_and_token_embed_on_any_backbone(checkpoint_factory, architecture):
    path = checkpoint_factory(architecture, seed=44)
    llm = LLM(str(path), device="cpu", max_num_batched_tokens=128)
    backbone = AutoModel.from_pretrained(str(path), dtype=torch.float32).eval()  # the plain base model
    assert type(backbone).__name__.endswith("Model") and "For" not in type(backbone).__name__
    emb = llm.encode(MIXED_TEXTS, pooling_task="embed")
    tok_emb = llm.encode(MIXED_TEXTS, pooling_task="token_embed")
    tok_raw = llm.encode(MIXED_TEXTS, RAW, pooling_task="token_embed")
    for e, t, r in zip(emb, tok_emb, tok_raw, strict=True):
        ids = torch.tensor([e.prompt_token_ids])
        with torch.no_grad():
            hidden = backbone(input_ids=ids).last_hidden_state[0]
        # token_embed rows are L2-normalized by default, as vLLM's (use_activation=False: the hidden states)
        torch.testing.assert_close(t.outputs.data, F.normalize(hidden, dim=-1), atol=ATOL, rtol=0)
        torch.testing.assert_close(r.outputs.data, hidden, atol=ATOL, rtol=0)
        torch.testing.assert_close(e.outputs.data, F.normalize(hidden[-1], dim=-1), atol=ATOL, rtol=0)


def test_convert_embed_keeps_only_embedding_tasks(lm_tied):
    llm = LLM(str(lm_tied), device="cpu", convert="embed")
    assert set(llm.supported_tasks) == {"embed", "token_embed"} and llm.model_info().kind == "embedding"
    with pytest.raises(ValueError, match="token_classify"):
        llm.encode("hi", pooling_task="token_classify")


def test_reward_models_are_not_converted(checkpoint_factory):
    with pytest.raises(ValueError, match="cannot be converted to classify"):
        LLM(str(checkpoint_factory("Qwen2ForRewardModel", seed=44)), device="cpu", convert="classify")
    config = json.loads((checkpoint_factory("Qwen3ForSequenceClassification") / "config.json").read_text())
    assert config["architectures"] == ["Qwen3ForSequenceClassification"]
    llm = LLM(str(checkpoint_factory("Qwen3ForSequenceClassification")), device="cpu", convert="classify")
    assert llm.spec.loader.__name__ == "load_sequence_classifier"  # a classifier stays itself
