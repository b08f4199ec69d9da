"""RewardFunction / AsyncRewardFunction against LLM.encode on tiny real models (no mocks of the engine)."""

from __future__ import annotations

import asyncio
import math

import pytest
import torch

from rlhf_rewards import LLM, AsyncRewardFunction, LoRARequest, RewardFunction
from rlhf_rewards.reward import RewardFunctionError, RewardInputError, UnscorableCompletionWarning
from rlhf_rewards.workers.colocated import ColocatedWorker
from tests.reward.conftest import COMPLETIONS, PROMPTS, STEP_TAG_ID, TOKEN_ID, conversational
from tests.reward.expected import RAW, close, outcome_expected, prm_steps_expected, tagged
from tests.support.checkpoints import STEP_TAG, build_hf_model


# ---------------------------------------------------------------- outcome
def test_outcome_standard_equals_llm_encode_raw_logits(rm_llm):
    rf = RewardFunction(rm_llm)
    assert rf.kind == "outcome" and rf.pooling_task == "classify"
    got = rf(PROMPTS, COMPLETIONS)
    want = outcome_expected(rm_llm, [p + c for p, c in zip(PROMPTS, COMPLETIONS, strict=True)])
    assert close(got, want)
    # raw logits, not sigmoid probabilities
    probs = [
        float(o.outputs.data[0])
        for o in rm_llm.encode([PROMPTS[0] + COMPLETIONS[0]], pooling_task="classify", use_tqdm=False)
    ]
    assert math.isclose(probs[0], torch.sigmoid(torch.tensor(got[0])).item(), rel_tol=1e-5)


def test_outcome_conversational_uses_the_reward_models_chat_template(rm_llm):
    rf = RewardFunction(rm_llm)
    prompts, completions = conversational(PROMPTS, COMPLETIONS)
    got = rf(prompts, completions)
    ids = rm_llm.render_chat([p + c for p, c in zip(prompts, completions, strict=True)])
    assert "<|im_start|>assistant" in rm_llm.get_tokenizer().decode(ids[0])
    assert close(got, outcome_expected(rm_llm, [{"prompt_token_ids": i} for i in ids]))


def test_chat_template_argument_overrides_the_models(rm_llm, no_template_rm_path):
    template = "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    prompts, completions = conversational(PROMPTS[:2], COMPLETIONS[:2])
    no_template = RewardFunction(no_template_rm_path, name="plain", llm_kwargs={"device": "cpu"})
    with pytest.raises(RewardInputError, match="'plain'.*has no chat template.*chat_template="):
        no_template(prompts, completions)
    assert no_template(PROMPTS, COMPLETIONS) == pytest.approx(
        RewardFunction(rm_llm)(PROMPTS, COMPLETIONS), abs=1e-5
    )
    with_template = RewardFunction(no_template_rm_path, chat_template=template, llm_kwargs={"device": "cpu"})
    texts = [
        f"system: Be brief.\nuser: {p}\nassistant: {c}\n"
        for p, c in zip(PROMPTS[:2], COMPLETIONS[:2], strict=True)
    ]
    ids = [rm_llm.get_tokenizer()(t, add_special_tokens=False)["input_ids"] for t in texts]
    assert close(
        with_template(prompts, completions), outcome_expected(rm_llm, [{"prompt_token_ids": i} for i in ids])
    )


def test_sources_path_llm_and_worker_agree(rm_path, rm_llm):
    by_path = RewardFunction(rm_path, llm_kwargs={"device": "cpu"})
    by_llm = RewardFunction(rm_llm)
    by_worker = RewardFunction(ColocatedWorker(rm_llm))
    want = by_llm(PROMPTS, COMPLETIONS)
    assert close(by_path(PROMPTS, COMPLETIONS), want)
    assert close(by_worker(PROMPTS, COMPLETIONS), want)
    assert by_path.__name__ == by_llm.__name__ == rm_path.name
    with pytest.raises(TypeError, match="source must be"):
        RewardFunction(42)
    with pytest.raises(ValueError, match="llm_kwargs only apply"):
        RewardFunction(rm_llm, llm_kwargs={"device": "cpu"})


def test_name_scale_offset_and_trl_keyword_arguments(rm_llm):
    base = RewardFunction(rm_llm)
    rf = RewardFunction(rm_llm, name="helpfulness", reward_scale=2.0, reward_offset=-1.0)
    assert rf.__name__ == "helpfulness"
    logged: list[tuple[str, float]] = []
    got = rf(
        prompts=PROMPTS,
        completions=COMPLETIONS,
        completion_ids=[[1, 2]] * 3,
        trainer_state=None,
        log_extra=lambda *a: None,
        log_metric=lambda name, value: logged.append((name, value)),
        answer=["19", "Ada", "7"],
    )
    assert close(got, [2.0 * x - 1.0 for x in base(PROMPTS, COMPLETIONS)])
    names = dict(logged)
    assert set(names) == {
        "rewards/helpfulness/latency_s",
        "rewards/helpfulness/tokens_scored",
        "rewards/helpfulness/unscored_frac",
    }
    assert names["rewards/helpfulness/latency_s"] > 0
    want_tokens = sum(
        len(rm_llm.get_tokenizer()(p + c)["input_ids"]) for p, c in zip(PROMPTS, COMPLETIONS, strict=True)
    )
    assert names["rewards/helpfulness/tokens_scored"] == want_tokens
    assert names["rewards/helpfulness/unscored_frac"] == 0.0


def test_one_encode_call_per_batch(rm_llm):
    class Counting(ColocatedWorker):
        calls = 0

        def encode(self, prompts, *a, **k):
            type(self).calls += 1
            return super().encode(prompts, *a, **k)

    rf = RewardFunction(Counting(rm_llm))
    rf(PROMPTS * 8, COMPLETIONS * 8)
    assert Counting.calls == 1
    assert rf([], []) == []


def test_kind_token_reads_the_last_token(rm_llm):
    # For a sequence classifier, the last row of token_classify (ALL) is the classify score.
    rf = RewardFunction(rm_llm, kind="token")
    assert rf.pooling_task == "token_classify"
    assert close(rf(PROMPTS, COMPLETIONS), RewardFunction(rm_llm)(PROMPTS, COMPLETIONS))


@pytest.fixture(scope="module")
def token_rm_llm(tmp_path_factory, rm_path):
    path = build_hf_model(
        "Qwen3ForTokenClassification",
        tmp_path_factory.mktemp("tok") / "rm",
        config_cls="Qwen3Config",
        num_labels=1,
        seed=14,
        tokenizer_dir=str(rm_path),
    )
    return LLM(str(path), device="cpu")


def test_token_rm_inferred_kind_and_last_token_score(token_rm_llm):
    rf = RewardFunction(token_rm_llm)
    assert rf.kind == "token"
    outs = token_rm_llm.encode(
        [p + c for p, c in zip(PROMPTS, COMPLETIONS, strict=True)],
        RAW,
        pooling_task="token_classify",
        use_tqdm=False,
    )
    assert close(rf(PROMPTS, COMPLETIONS), [float(o.outputs.data[-1, 0]) for o in outs])


def test_token_rm_appends_the_reward_token(token_rm_llm):
    """InternLM2-style: the model card appends the reward token; the score is read there."""

    class WithRewardToken(ColocatedWorker):
        def model_info(self):
            info = super().model_info()
            info.reward_token = "<|reward|>"
            return info

    rf = RewardFunction(WithRewardToken(token_rm_llm))
    reward_id = TOKEN_ID["<|reward|>"]
    texts = [p + c + "<|reward|>" for p, c in zip(PROMPTS, COMPLETIONS, strict=True)]
    outs = token_rm_llm.encode(texts, RAW, pooling_task="token_classify", use_tqdm=False)
    assert all(o.prompt_token_ids[-1] == reward_id for o in outs)
    assert close(rf(PROMPTS, COMPLETIONS), [float(o.outputs.data[-1, 0]) for o in outs])
    prompts, completions = conversational(PROMPTS, COMPLETIONS)
    ids = [
        i + [reward_id]
        for i in token_rm_llm.render_chat([p + c for p, c in zip(prompts, completions, strict=True)])
    ]
    outs = token_rm_llm.encode(
        [{"prompt_token_ids": i} for i in ids], RAW, pooling_task="token_classify", use_tqdm=False
    )
    assert close(rf(prompts, completions), [float(o.outputs.data[-1, 0]) for o in outs])


# ---------------------------------------------------------------- process
def test_prm_standard_steps_and_aggregations(prm_llm):
    rf = RewardFunction(prm_llm, name="prm")
    assert rf.kind == "process" and rf.step_tag == STEP_TAG
    texts = [p + tagged(c) for p, c in zip(PROMPTS, COMPLETIONS, strict=True)]
    want_steps = prm_steps_expected(prm_llm, texts)
    assert [len(s) for s in want_steps] == [3, 1, 1]
    rewards, steps = rf(PROMPTS, COMPLETIONS, return_steps=True)
    assert all(close(a, b) for a, b in zip(steps, want_steps, strict=True))
    assert close(rewards, [min(s) for s in want_steps])
    for how, fn in [
        ("last", lambda s: s[-1]),
        ("mean", lambda s: sum(s) / len(s)),
        ("prod", math.prod),
        ("min", min),
    ]:
        assert close(
            RewardFunction(prm_llm, step_aggregation=how)(PROMPTS, COMPLETIONS), [fn(s) for s in want_steps]
        )
    # probabilities (softmax over [good, bad]), not logits
    assert all(0.0 < x < 1.0 for s in steps for x in s)


def test_prm_conversational(prm_llm):
    rf = RewardFunction(prm_llm)
    prompts, completions = conversational(PROMPTS, COMPLETIONS)
    convs = [
        p + [{"role": "assistant", "content": tagged(c[0]["content"])}]
        for p, c in zip(prompts, completions, strict=True)
    ]
    ids = prm_llm.render_chat(convs)
    assert [i.count(STEP_TAG_ID) for i in ids] == [3, 1, 1]
    want_steps = prm_steps_expected(prm_llm, [{"prompt_token_ids": i} for i in ids])
    rewards, steps = rf(prompts, completions, return_steps=True)
    assert all(close(a, b) for a, b in zip(steps, want_steps, strict=True))
    assert close(rewards, [min(s) for s in want_steps])


def test_prm_step_score_column_override_and_column_rule(prm_llm):
    rewards, steps = RewardFunction(prm_llm, step_score_column=1, step_aggregation="last")(
        PROMPTS, COMPLETIONS, return_steps=True
    )
    _, default_steps = RewardFunction(prm_llm)(PROMPTS, COMPLETIONS, return_steps=True)
    for s1, s0 in zip(steps, default_steps, strict=True):
        assert close(s1, [1.0 - x for x in s0], tol=1e-4)  # 2-way softmax: bad = 1 - good
    rf = RewardFunction(prm_llm)
    assert rf.step_column(2) == 0  # returned_token_ids set: the first id is "good"
    rf.model_info.pooler_configs["token_classify"].pop("returned_token_ids")
    assert (rf.step_column(2), rf.step_column(1)) == (1, 0)  # Qwen2.5-Math-PRM: label 1 is "correct"
    with pytest.raises(RewardFunctionError, match="step_score_column"):
        rf.step_column(3)


def test_prm_tag_that_does_not_tokenize_to_the_step_id_raises(prm_llm):
    # "[STEP]" is plain text, not token <extra_0>: no input has a step row. (The engine may also reject a batch
    # with no STEP rows at all; either way the error names the reward function.)
    rf = RewardFunction(prm_llm, name="bad_tag", step_tag="[STEP]")
    with pytest.raises(RewardFunctionError, match="'bad_tag'"):
        rf(PROMPTS, COMPLETIONS)


def test_return_steps_only_for_process(rm_llm):
    with pytest.raises(RewardInputError, match="return_steps"):
        RewardFunction(rm_llm)(PROMPTS, COMPLETIONS, return_steps=True)


def test_causal_lm_without_step_pooling_is_a_clear_error(prm_path):
    with pytest.raises(ValueError, match="STEP pooling"):
        RewardFunction(LLM(str(prm_path), device="cpu"))


# ---------------------------------------------------------------- async
def test_async_reward_function_matches_sync(rm_llm, prm_llm):
    from trl.trainer.utils import is_async_callable

    arf = AsyncRewardFunction(rm_llm, name="rm_async")
    assert is_async_callable(arf) and not is_async_callable(RewardFunction(rm_llm))
    assert close(asyncio.run(arf(PROMPTS, COMPLETIONS)), RewardFunction(rm_llm)(PROMPTS, COMPLETIONS))
    prompts, completions = conversational(PROMPTS, COMPLETIONS)
    aprm = AsyncRewardFunction(prm_llm)
    got = asyncio.run(aprm(prompts, completions, return_steps=True))
    want = RewardFunction(prm_llm)(prompts, completions, return_steps=True)
    assert close(got[0], want[0]) and all(close(a, b) for a, b in zip(got[1], want[1], strict=True))


# ---------------------------------------------------------------- None and errors
@pytest.fixture(scope="module")
def short_llm(rm_path):
    return LLM(str(rm_path), device="cpu", max_model_len=12)


def test_over_long_completion_gets_none_with_a_warning(short_llm):
    rf = RewardFunction(short_llm, name="short")
    prompts = ["Hi", "Hello, my name is Ada and I like"]
    completions = [" ok", " mathematics, poetry and long walks."]
    with pytest.warns(UnscorableCompletionWarning, match="'short'.*1 of 2.*item 1.*max_model_len=12"):
        got = rf(prompts, completions)
    assert got[1] is None
    assert close(got[:1], outcome_expected(short_llm, [prompts[0] + completions[0]]))
    conv_p, conv_c = conversational(prompts, completions)
    with pytest.warns(UnscorableCompletionWarning):
        assert rf(conv_p, conv_c) == [None, None]  # the chat template makes both over 12 tokens
    logged = {}
    with pytest.warns(UnscorableCompletionWarning):
        rf(prompts, completions, log_metric=logged.__setitem__)
    assert logged["rewards/short/unscored_frac"] == 0.5


def test_truncate_keeps_the_end(short_llm):
    rf = RewardFunction(short_llm, truncate=True)
    prompts = ["Hi", "Hello, my name is Ada and I like"]
    completions = [" ok", " mathematics, poetry and long walks."]
    want = [
        float(o.outputs.data[0])
        for o in short_llm.encode(
            [p + c for p, c in zip(prompts, completions, strict=True)],
            RAW,
            pooling_task="classify",
            tokenization_kwargs={"truncate_prompt_tokens": -1, "truncation_side": "left"},
            use_tqdm=False,
        )
    ]
    assert close(rf(prompts, completions), want)
    # LLM.encode's default (vLLM's) keeps the first tokens: a different score for the cut text.
    first = short_llm.encode(
        prompts[1] + completions[1], RAW, pooling_task="classify", truncate_prompt_tokens=-1, use_tqdm=False
    )[0]
    assert not close([float(first.outputs.data[0])], want[1:])


def test_text_exactly_at_max_model_len_is_scored(rm_path, rm_llm):
    text = "Hello, my name is Ada and I like mathematics"
    n = len(rm_llm.get_tokenizer()(text)["input_ids"])
    exact = LLM(str(rm_path), device="cpu", max_model_len=n)
    got = RewardFunction(exact)([text[:5]], [text[5:]])
    assert close(got, outcome_expected(rm_llm, [text]))


def test_non_finite_output_is_none_with_a_warning(rm_llm):
    class Poisoned(ColocatedWorker):
        def encode(self, prompts, *a, **k):
            outs = super().encode(prompts, *a, **k)
            outs[0].error = "the model produced non-finite output"
            return outs

    with pytest.warns(UnscorableCompletionWarning, match="non-finite"):
        got = RewardFunction(Poisoned(rm_llm))(PROMPTS, COMPLETIONS)
    assert got[0] is None and got[1] is not None


def test_other_failures_raise_with_the_function_name(rm_llm):
    class Broken(ColocatedWorker):
        def encode(self, *a, **k):
            raise ConnectionError("reward server unreachable")

    with pytest.raises(RewardFunctionError, match="'judge'.*ConnectionError: reward server unreachable"):
        RewardFunction(Broken(rm_llm), name="judge")(PROMPTS, COMPLETIONS)
    with pytest.raises(RewardFunctionError, match="'judge'"):
        asyncio.run(AsyncRewardFunction(Broken(rm_llm), name="judge")(PROMPTS, COMPLETIONS))
    rf = RewardFunction(rm_llm, name="judge")
    with pytest.raises(RewardInputError, match="'judge'.*1 prompts but 2 completions"):
        rf(PROMPTS[:1], COMPLETIONS[:2])
    with pytest.raises(ValueError, match="'judge'"):
        rf([1], ["x"])
    with pytest.raises(RewardFunctionError, match="score_column=3"):
        RewardFunction(rm_llm, name="judge", score_column=3)(PROMPTS, COMPLETIONS)


def test_lora_request_is_passed_to_the_worker(rm_llm):
    seen = []

    class Recording(ColocatedWorker):
        def encode(self, prompts, *a, lora_request=None, **k):
            seen.append(lora_request)
            return super().encode(prompts, *a, **k)

    rf = RewardFunction(Recording(rm_llm), lora="/adapters/helpful")
    assert rf.__name__ == "helpful"
    rf(PROMPTS, COMPLETIONS)
    assert isinstance(seen[0], LoRARequest) and seen[0].lora_path == "/adapters/helpful"


# ---------------------------------------------------------------- the reward architectures (builders from models/)
def _reward_llm(checkpoint_factory, rm_path, architecture):
    from tests.reward.conftest import builder_available

    if not builder_available(architecture):
        pytest.skip(f"no tiny builder for {architecture} yet")
    return LLM(str(checkpoint_factory(architecture, seed=21, tokenizer_dir=str(rm_path))), device="cpu")


def test_qwen2_prm_uses_column_1_of_the_two_label_softmax(checkpoint_factory, rm_path):
    llm = _reward_llm(checkpoint_factory, rm_path, "Qwen2ForProcessRewardModel")
    rf = RewardFunction(llm)
    assert rf.kind == "process" and rf.step_tag == STEP_TAG
    texts = [p + tagged(c) for p, c in zip(PROMPTS, COMPLETIONS, strict=True)]
    outs = llm.encode(texts, pooling_task="token_classify", use_tqdm=False)
    want = [o.outputs.data[:, 1].tolist() for o in outs]  # model card: probs[step_tag_positions, 1]
    rewards, steps = rf(PROMPTS, COMPLETIONS, return_steps=True)
    assert all(close(a, b) for a, b in zip(steps, want, strict=True))
    assert close(rewards, [min(s) for s in want])
    prompts, completions = conversational(PROMPTS, COMPLETIONS)
    convs = [
        p + [{"role": "assistant", "content": tagged(c[0]["content"])}]
        for p, c in zip(prompts, completions, strict=True)
    ]
    outs = llm.encode(
        [{"prompt_token_ids": i} for i in llm.render_chat(convs)],
        pooling_task="token_classify",
        use_tqdm=False,
    )
    assert close(rf(prompts, completions), [min(o.outputs.data[:, 1].tolist()) for o in outs])


@pytest.mark.parametrize("architecture", ["Qwen2ForRewardModel", "InternLM2ForRewardModel"])
def test_token_reward_models_score_the_final_token(checkpoint_factory, rm_path, architecture):
    llm = _reward_llm(checkpoint_factory, rm_path, architecture)
    rf = RewardFunction(llm)
    assert rf.kind == "token"
    suffix = rf.model_info.reward_token or ""
    assert (suffix == "<|reward|>") == (architecture == "InternLM2ForRewardModel")
    outs = llm.encode(
        [p + c + suffix for p, c in zip(PROMPTS, COMPLETIONS, strict=True)],
        RAW,
        pooling_task="token_classify",
        use_tqdm=False,
    )
    assert close(rf(PROMPTS, COMPLETIONS), [float(o.outputs.data[-1, 0]) for o in outs])
    prompts, completions = conversational(PROMPTS, COMPLETIONS)
    ids = llm.render_chat([p + c for p, c in zip(prompts, completions, strict=True)])
    if suffix:
        ids = [i + [TOKEN_ID[suffix]] for i in ids]  # the model card appends reward_token_id after the chat
    outs = llm.encode(
        [{"prompt_token_ids": i} for i in ids], RAW, pooling_task="token_classify", use_tqdm=False
    )
    assert close(rf(prompts, completions), [float(o.outputs.data[-1, 0]) for o in outs])


def test_call_listeners_see_every_call(rm_llm):
    seen = []
    rf = RewardFunction(rm_llm)
    rf.add_call_listener(lambda rewards, seconds: seen.append((rewards, seconds)))
    got = rf(PROMPTS, COMPLETIONS)
    assert seen[0][0] == got and seen[0][1] > 0


def test_lora_adapter_scores_with_the_adapter(rm_path, tmp_path):
    peft = pytest.importorskip("peft")
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(str(rm_path))
    adapted = peft.get_peft_model(
        model, peft.LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    )
    adapted.save_pretrained(str(tmp_path / "helpful"))
    rf = RewardFunction(rm_path, lora=str(tmp_path / "helpful"), llm_kwargs={"device": "cpu"})
    assert rf.__name__ == "helpful"
    llm = rf.worker.llm
    texts = [p + c for p, c in zip(PROMPTS, COMPLETIONS, strict=True)]
    outs = llm.encode(texts, RAW, pooling_task="classify", lora_request=rf.config.lora, use_tqdm=False)
    got = rf(PROMPTS, COMPLETIONS)
    assert close(got, [float(o.outputs.data[0]) for o in outs])
    assert not close(got, outcome_expected(llm, texts))  # the adapter changes the scores


def test_prm_truncation_drops_the_first_steps(prm_path, prm_llm):
    from tests.reward.conftest import PRM_POOLER

    text = PROMPTS[0] + tagged(COMPLETIONS[0])
    ids = prm_llm.get_tokenizer()(text)["input_ids"]
    first_tag = ids.index(STEP_TAG_ID)
    keep = len(ids) - first_tag - 1  # cuts the first step's tag, keeps the other two
    short = LLM(str(prm_path), device="cpu", pooler_config=PRM_POOLER, max_model_len=keep)
    rewards, steps = RewardFunction(short, truncate=True)(PROMPTS[:1], COMPLETIONS[:1], return_steps=True)
    want = prm_steps_expected(short, [{"prompt_token_ids": ids[-keep:]}])[0]
    assert len(want) == 2 and steps[0][0] is None and close(steps[0][1:], want)
    assert close(rewards, [min(want)])
    with pytest.warns(UnscorableCompletionWarning):
        assert RewardFunction(short)(PROMPTS[:1], COMPLETIONS[:1]) == [None]
