"""The models shipped in ``rlhf_rewards/assets/models``: they load through the library's native paths, stay
small, and reach the held-out accuracy their reports state (recomputed here from the training seed)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rlhf_rewards import LLM
from rlhf_rewards.assets import (
    DEFAULT_MODELS,
    default_model_path,
    default_policy_path,
    default_prm_path,
    default_reward_model_path,
)
from rlhf_rewards.assets import arithmetic as ar
from rlhf_rewards.assets.evaluation import evaluate_outcome_rm, evaluate_prm
from rlhf_rewards.reward import RewardFunction

ALL = [default_reward_model_path, default_prm_path, default_policy_path]


def report(path: str) -> dict:
    return json.loads((Path(path) / "training_report.json").read_text(encoding="utf-8"))


@pytest.mark.parametrize("path_fn", ALL, ids=lambda f: f.__name__)
def test_shipped_folders_are_complete_and_small(path_fn):
    path = Path(path_fn())
    for name in (
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
        "README.md",
        "training_report.json",
    ):
        assert (path / name).is_file(), name
    size = sum(f.stat().st_size for f in path.iterdir())
    assert size < 8 * 1024 * 1024, f"{path.name} is {size / 2**20:.1f} MiB"
    config = json.loads((path / "config.json").read_text())
    assert "auto_map" not in config  # loads without remote code


def test_unknown_kind_and_paths():
    with pytest.raises(ValueError, match="kind='reward'"):
        default_model_path("reward")
    assert default_model_path() == default_reward_model_path()
    assert Path(default_prm_path()).name == DEFAULT_MODELS["process"]


def test_outcome_rm_is_a_sequence_classifier():
    path = default_reward_model_path()
    assert json.loads((Path(path) / "config.json").read_text())["architectures"] == [
        "LlamaForSequenceClassification"
    ]
    fn = RewardFunction(path, llm_kwargs={"device": "cpu"})
    assert fn.kind == "outcome"
    # The same score as a plain transformers forward pass at the last token.
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
    ref = AutoModelForSequenceClassification.from_pretrained(path, dtype=torch.float32).eval()
    texts = ["What is 9 - 3? 6", "What is 9 - 3? 12"]
    with torch.no_grad():
        expected = [ref(**tok(t, return_tensors="pt")).logits[0, 0].item() for t in texts]
    got = fn(["What is 9 - 3?"] * 2, [" 6", " 12"])
    assert got == pytest.approx(expected, abs=1e-4)
    assert got[0] > got[1]
    fn.close()


def test_prm_loads_natively_as_qwen2_process_reward_model():
    from rlhf_rewards.models.qwen2_reward import Qwen2ForProcessRewardModel

    path = default_prm_path()
    config = json.loads((Path(path) / "config.json").read_text())
    assert config["architectures"] == ["Qwen2ForProcessRewardModel"] and config["model_type"] == "qwen2"
    llm = LLM(path, runner="pooling", device="cpu")
    assert llm.spec.architecture == "Qwen2ForProcessRewardModel" and llm.spec.kind == "process"
    assert isinstance(llm.model.hf_model, Qwen2ForProcessRewardModel)
    text = "Work out 3 + 4 and 6 + 2.\n3 + 4 = 7" + ar.STEP_TAG + "6 + 2 = 9" + ar.STEP_TAG
    (out,) = llm.encode([text], pooling_task="token_classify")
    probs = out.outputs.data
    assert tuple(probs.shape) == (2, 2)  # one row per step tag, softmax over the 2 labels
    assert probs[0, 1] > 0.5 > probs[1, 1]  # 3 + 4 = 7 is right, 6 + 2 = 9 is wrong


def test_outcome_rm_held_out_accuracy_matches_its_report():
    path = default_reward_model_path()
    stated = report(path)
    metrics = evaluate_outcome_rm(path, seed=stated["seed"], n=stated["held_out"]["pairs"])
    assert metrics["pairwise_accuracy"] >= 0.9
    for key in ("pairwise_accuracy", "pairwise_accuracy_conversational", "vs_chatter_accuracy"):
        assert metrics[key] == pytest.approx(stated["held_out"][key], abs=0.005), key


@pytest.fixture(scope="module")
def prm_metrics():
    path = default_prm_path()
    stated = report(path)
    return stated, evaluate_prm(path, seed=stated["seed"], n=stated["held_out"]["solutions"])


def test_prm_held_out_step_accuracy_matches_its_report(prm_metrics):
    stated, metrics = prm_metrics
    for key in ("step_accuracy", "solution_accuracy"):
        assert metrics[key] == pytest.approx(stated["held_out"][key], abs=0.005), key


def test_prm_held_out_step_accuracy_reaches_target(prm_metrics):
    stated, metrics = prm_metrics
    assert metrics["step_accuracy"] >= 0.9
    assert stated["held_out"]["steps"] == metrics["steps"] > 1000


def test_held_out_pairs_and_steps_never_appear_in_training():
    def wrong(exs):
        return {(ex.a, ex.op, ex.b, ex.rejected) for ex in exs}

    train = wrong(ar.outcome_examples(0, 20000, held_out=False))
    test = wrong(ar.outcome_examples(1000, 1000, held_out=True))
    assert len(test) > 300 and not train & test
    assert all(ex.chosen != ex.rejected for ex in ar.outcome_examples(1000, 1000, held_out=True))

    def wrong_steps(exs):
        return {s.text for ex in exs for s in ex.steps if not s.correct}

    steps = wrong_steps(ar.process_examples(0, 20000, held_out=False))
    held = wrong_steps(ar.process_examples(2000, 400, held_out=True))
    assert len(held) > 200 and not steps & held


def test_recipe_rebuilds_the_shipped_tokenizer(tmp_path):
    from scripts.build_assets.data import build_tokenizer

    build_tokenizer(tmp_path, report(default_reward_model_path())["seed"])
    for path_fn in ALL:
        shipped = json.loads((Path(path_fn()) / "tokenizer.json").read_text())
        assert json.loads((tmp_path / "tokenizer.json").read_text())["model"] == shipped["model"]


def test_prm_batch_answer_labels_hold_the_correct_result():
    """The PRM's auxiliary targets are the correct result's digits where the written result is spelled, while
    the written prefix agrees with it; the step labels say right/wrong at the tags."""
    import random

    from transformers import AutoTokenizer

    from scripts.build_assets.data import prm_batch

    tok = AutoTokenizer.from_pretrained(default_prm_path())
    steps = (ar.Step(9, "+", 8, 17), ar.Step(9, "+", 8, 7), ar.Step(9, "+", 8, 18), ar.Step(9, "-", 3, 16))
    b = prm_batch(tok, [ar.ProcessExample(steps)], random.Random(0))
    ids, labels, answers = b["input_ids"][0].tolist(), b["labels"][0].tolist(), b["answer_labels"][0].tolist()
    tags = [i for i, t in enumerate(ids) if t == tok.convert_tokens_to_ids(ar.STEP_TAG)]
    assert [labels[t] for t in tags] == [1, 0, 0, 0]
    marked = [(i, a) for i, a in enumerate(answers) if a != -100]
    # 17: predicts 1 then 7; 7 (correct 17): 1 only; 18: 1 then 7; 16 (correct 6): 6 only.
    assert [a for _, a in marked] == [1, 7, 1, 1, 7, 6]
    assert [i for i, _ in marked] == [
        tags[0] - 3,
        tags[0] - 2,
        tags[1] - 2,
        tags[2] - 3,
        tags[2] - 2,
        tags[3] - 3,
    ]
