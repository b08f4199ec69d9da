"""TRL 1.16's calling conventions for reward functions: every dataset column arrives as a keyword (so a column
may be named like one of the function's own options), and ``AsyncGRPOTrainer`` pickles ``reward_funcs``."""

from __future__ import annotations

import pickle

import pytest

from rlhf_rewards import LLM, AsyncRewardFunction, RewardFunction
from rlhf_rewards.reward.errors import RewardInputError
from rlhf_rewards.workers import ColocatedWorker, RemoteWorker
from tests.support.server import InProcessServer

PROMPTS = ["What is 12 + 7?", "Name a colour."]
COMPLETIONS = [" Step one: add the units.\n\nStep two: carry the tens.\n\nSo 19.", " Blue."]
#: Dataset columns named like RewardFunction's options and config fields, as TRL passes them (lists).
COLUMNS = {
    "return_steps": [True, False],
    "kind": ["math", "chat"],
    "name": ["a", "b"],
    "step_aggregation": ["x", "y"],
    "truncate": [1, 2],
    "config": [None, None],
}


@pytest.fixture(scope="module")
def rm_llm(qwen3_rm):
    return LLM(str(qwen3_rm), dtype="float32", device="cpu")


@pytest.fixture(scope="module")
def prm_llm(checkpoint_factory):
    return LLM(str(checkpoint_factory("Qwen2ForProcessRewardModel")), dtype="float32", device="cpu")


@pytest.mark.parametrize("which", ["rm_llm", "prm_llm"])
def test_dataset_columns_never_collide_with_options(request, which):
    rf = RewardFunction(request.getfixturevalue(which))
    plain = rf(prompts=PROMPTS, completions=COMPLETIONS)
    with_columns = rf(
        prompts=PROMPTS,
        completions=COMPLETIONS,
        completion_ids=[[1], [2]],
        trainer_state=None,
        log_extra=None,
        **COLUMNS,
    )
    # Equal up to float rounding: the second call reads the first one's prompts from the cross-call prefix cache.
    assert isinstance(with_columns, list) and with_columns == pytest.approx(plain, abs=1e-5)


def test_step_scores_through_their_own_method(prm_llm):
    rf = RewardFunction(prm_llm)
    rewards, steps = rf.score_with_steps(prompts=PROMPTS, completions=COMPLETIONS, **COLUMNS)
    assert rewards == rf(prompts=PROMPTS, completions=COMPLETIONS)
    assert [len(s) for s in steps] == [3, 1] and rewards[0] == min(steps[0])
    # The older direct-call option keeps working when it is the boolean itself.
    assert rf(prompts=PROMPTS, completions=COMPLETIONS, return_steps=True) == (rewards, steps)


def test_return_steps_option_still_checked_for_outcome_models(rm_llm):
    rf = RewardFunction(rm_llm)
    with pytest.raises(RewardInputError, match="process reward models"):
        rf(prompts=PROMPTS, completions=COMPLETIONS, return_steps=True)
    with pytest.raises(RewardInputError, match="process reward models"):
        rf.score_with_steps(prompts=PROMPTS, completions=COMPLETIONS)


async def test_async_function_ignores_columns_too(prm_llm):
    rf = AsyncRewardFunction(prm_llm)
    plain = await rf(prompts=PROMPTS, completions=COMPLETIONS)
    assert await rf(prompts=PROMPTS, completions=COMPLETIONS, **COLUMNS) == plain
    rewards, _ = await rf.score_with_steps(prompts=PROMPTS, completions=COMPLETIONS)
    assert rewards == plain


@pytest.mark.parametrize(
    "make", [lambda llm: llm, lambda llm: ColocatedWorker(llm)], ids=["LLM", "ColocatedWorker"]
)
def test_in_memory_model_explains_why_it_cannot_pickle(rm_llm, make):
    rf = RewardFunction(make(rm_llm))
    with pytest.raises(TypeError, match="cannot be pickled") as err:
        pickle.dumps(rf)
    message = str(err.value)
    assert "model path" in message and "RemoteWorker" in message and "RayWorkerPool" in message


def test_function_from_a_path_reloads_lazily(qwen3_rm, rm_llm):
    rf = RewardFunction(str(qwen3_rm), llm_kwargs={"dtype": "float32", "device": "cpu"})
    clone = pickle.loads(pickle.dumps(rf))
    assert clone._worker is None  # nothing loaded until the first call
    assert clone.__name__ == rf.__name__ and clone.kind == rf.kind
    # rm_llm may score these from its prefix cache (equal up to float rounding); the clone computes them whole.
    assert clone(prompts=PROMPTS, completions=COMPLETIONS) == pytest.approx(
        RewardFunction(rm_llm)(prompts=PROMPTS, completions=COMPLETIONS), abs=1e-5
    )
    assert clone._worker is not None
    clone.close()
    rf.close()


def test_remote_function_reconnects(qwen3_rm, rm_llm):
    with InProcessServer(qwen3_rm, "--dtype", "float32", "--device", "cpu") as server:
        rf = AsyncRewardFunction(RemoteWorker(server.url, timeout=60))
        clone = pickle.loads(pickle.dumps(rf))
        assert clone.worker is not rf.worker and clone.worker.urls == rf.worker.urls
        expected = RewardFunction(rm_llm)(prompts=PROMPTS, completions=COMPLETIONS)
        import asyncio

        got = asyncio.run(clone(prompts=PROMPTS, completions=COMPLETIONS))
        assert max(abs(a - b) for a, b in zip(got, expected, strict=True)) <= 1e-5
        clone.worker.close()
        rf.worker.close()
