"""The ``judge`` reward kind: a causal LM read through the next-token probability of its answer label.

Rewards are checked against transformers (the judge's input built by hand, the last position's logits,
softmax over the labels), colocated, remote (``/generative_scoring``) and async; plus label values,
pickling, the shared rubric computed once, and the config's checks.
"""

from __future__ import annotations

import asyncio
import pickle

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from rlhf_rewards import LLM
from rlhf_rewards.reward import AsyncRewardFunction, RewardFunction
from rlhf_rewards.reward.judge_config import JudgeConfig
from tests.support.checkpoints import CHATML_TEMPLATE

CAUSAL = {"hidden_size": 128, "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 64}
RUBRIC = "You grade arithmetic. A correct answer gives the exact sum and nothing else. " * 3
TEMPLATE = RUBRIC + "Question: {prompt}\nAnswer: {completion}\nCorrect? "
PROMPTS = ["What is 2 + 3?"] * 3 + ["What is 10 + 1?"] * 3
COMPLETIONS = ["5", "6", "five", "11", "It is 11", "12"]


@pytest.fixture(scope="module")
def judge_path(checkpoint_factory):
    return checkpoint_factory("LlamaForCausalLM", seed=21, **CAUSAL)


@pytest.fixture(scope="module")
def llm(judge_path):
    return LLM(str(judge_path), device="cpu", max_model_len=256)


@pytest.fixture(scope="module")
def reference(judge_path):
    model = AutoModelForCausalLM.from_pretrained(str(judge_path), dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(str(judge_path))

    @torch.no_grad()
    def probs(ids: list[int], labels: list[int]) -> list[float]:
        logits = model(torch.tensor([ids])).logits[0, -1].double()
        return torch.softmax(logits[labels], -1).tolist()

    return tok, probs


def _label_ids(tok, labels):
    ids = [tok.encode(t, add_special_tokens=False) for t in labels]
    assert all(len(i) == 1 for i in ids), ids
    return [i[0] for i in ids]


def test_standard_format_matches_transformers(llm, reference):
    tok, probs = reference
    rf = RewardFunction(
        llm, judge=JudgeConfig(template=TEMPLATE, labels=("Y", "N")), reward_scale=2.0, reward_offset=-1
    )
    assert rf.kind == "judge"
    rewards = rf(PROMPTS, COMPLETIONS)
    labels = _label_ids(tok, ["Y", "N"])
    for p, c, r in zip(PROMPTS, COMPLETIONS, rewards, strict=True):
        ids = tok.encode(TEMPLATE.format(prompt=p, completion=c))  # with the BOS, as add_special_tokens=True
        assert r == pytest.approx(2.0 * probs(ids, labels)[0] - 1, abs=1e-5)
    # The rubric (and each group's question) ran once: far fewer tokens than the inputs hold.
    stats = llm.runner.last_stats
    assert stats.tokens_run < stats.tokens_requested / 3


def test_label_values_and_ids(llm, reference):
    tok, probs = reference
    labels = _label_ids(tok, ["1", "2", "3"])
    rf = RewardFunction(llm, judge={"template": TEMPLATE, "labels": labels, "label_values": [1.0, 2.0, 3.0]})
    rewards = rf(PROMPTS[:2], COMPLETIONS[:2])
    for p, c, r in zip(PROMPTS, COMPLETIONS, rewards, strict=False):
        pr = probs(tok.encode(TEMPLATE.format(prompt=p, completion=c)), labels)
        assert r == pytest.approx(sum(v * x for v, x in zip([1, 2, 3], pr, strict=True)), abs=1e-5)


def test_conversational_format_uses_the_judges_chat_template(llm, reference):
    tok, probs = reference
    template = "Question: {prompt}\nAnswer: {completion}\nCorrect? "
    rf = RewardFunction(
        llm,
        judge=JudgeConfig(template=template, labels=("Y", "N"), system_prompt=RUBRIC),
        chat_template=CHATML_TEMPLATE,
    )
    prompts = [[{"role": "user", "content": p}] for p in PROMPTS]
    completions = [[{"role": "assistant", "content": c}] for c in COMPLETIONS]
    rewards = rf(prompts, completions)
    labels = _label_ids(tok, ["Y", "N"])
    for p, c, r in zip(PROMPTS, COMPLETIONS, rewards, strict=True):
        text = tok.apply_chat_template(
            [
                {"role": "system", "content": RUBRIC},
                {"role": "user", "content": template.format(prompt=p, completion=c)},
            ],
            chat_template=CHATML_TEMPLATE,
            tokenize=False,
            add_generation_prompt=True,
        )
        assert r == pytest.approx(probs(tok.encode(text, add_special_tokens=False), labels)[0], abs=1e-5)


def test_async_and_pickled_path_source(judge_path, llm):
    cfg = {"template": TEMPLATE, "labels": ["Y", "N"]}
    expected = RewardFunction(llm, judge=cfg)(PROMPTS, COMPLETIONS)
    arf = AsyncRewardFunction(llm, judge=cfg)
    assert asyncio.run(arf(PROMPTS, COMPLETIONS)) == pytest.approx(expected, abs=1e-5)
    by_path = RewardFunction(str(judge_path), judge=cfg, llm_kwargs={"device": "cpu", "max_model_len": 256})
    clone = pickle.loads(pickle.dumps(by_path))
    assert clone(PROMPTS, COMPLETIONS) == pytest.approx(expected, abs=1e-5)


def test_remote_through_generative_scoring(judge_path, llm):
    from rlhf_rewards.workers import RemoteWorker
    from tests.support.server import InProcessServer

    cfg = {"template": TEMPLATE, "labels": ["Y", "N"], "label_values": [1.0, 0.0]}
    expected = RewardFunction(llm, judge=cfg)(PROMPTS, COMPLETIONS)
    with InProcessServer(judge_path, "--max-model-len", "256") as server, RemoteWorker(server.url) as worker:
        rf = RewardFunction(worker, judge=cfg)
        assert rf(PROMPTS, COMPLETIONS) == pytest.approx(expected, abs=1e-5)
        assert pickle.loads(pickle.dumps(rf))(PROMPTS, COMPLETIONS) == pytest.approx(expected, abs=1e-5)


def test_over_long_input_is_unscored(llm):
    rf = RewardFunction(llm, judge={"template": TEMPLATE, "labels": ["Y", "N"]})
    with pytest.warns(UserWarning, match="max_model_len - 1"):
        rewards = rf(PROMPTS[:2], ["5", "5 " * 300])
    assert rewards[0] is not None and rewards[1] is None


def test_config_checks(llm, qwen3_rm):
    with pytest.raises(ValueError, match="holding '{completion}'"):
        JudgeConfig(template="no slot")
    with pytest.raises(ValueError, match="one finite number per label"):
        JudgeConfig(template="{completion}", label_values=[1.0])
    with pytest.raises(ValueError, match="kind='judge' needs judge="):
        RewardFunction(llm, kind="judge")
    with pytest.raises(ValueError, match="one token"):
        RewardFunction(llm, judge={"template": "{completion}", "labels": ["Yes definitely not"]})(
            ["q"], ["a"]
        )
    with pytest.raises(ValueError, match="has none"):
        RewardFunction(LLM(str(qwen3_rm), device="cpu"), judge="{completion}")


def test_ray_pool_judge_and_generative_score(judge_path, llm):
    ray = pytest.importorskip("ray")
    from rlhf_rewards.workers import RayWorkerPool

    cfg = {"template": TEMPLATE, "labels": ["Y", "N"], "label_values": [1.0, -1.0]}
    expected = RewardFunction(llm, judge=cfg)(PROMPTS, COMPLETIONS)
    direct = llm.generative_score(RUBRIC, COMPLETIONS, [5, 9, 5])
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        with RayWorkerPool(
            str(judge_path),
            num_replicas=2,
            num_cpus_per_replica=1,
            max_batch_size=4,
            device="cpu",
            max_model_len=256,
        ) as pool:
            got = pool.generative_score(RUBRIC, COMPLETIONS, [5, 9, 5])
            assert [o.index for o in got] == list(range(len(COMPLETIONS)))
            assert [o.score for o in got] == pytest.approx([o.score for o in direct], abs=1e-6)
            rf = RewardFunction(pool, judge=cfg)
            assert rf(PROMPTS, COMPLETIONS) == pytest.approx(expected, abs=1e-5)
            assert pickle.loads(pickle.dumps(rf))(PROMPTS, COMPLETIONS) == pytest.approx(expected, abs=1e-5)
    finally:
        ray.shutdown()
