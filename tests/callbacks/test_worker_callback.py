"""``RewardWorkerCallback`` in real ``GRPOTrainer`` runs: a colocated reward model sleeps through the policy's
generation, forward and backward passes and is awake exactly while it scores; a reward server that is down
stops the run at ``on_train_begin`` with its URL."""

from __future__ import annotations

import logging
import math

import pytest
from transformers import TrainerCallback

from rlhf_rewards.callbacks import RewardWorkerCallback
from rlhf_rewards.reward import RewardFunction
from rlhf_rewards.workers import RemoteWorker
from tests.callbacks.conftest import grpo_trainer
from tests.support.server import free_port


class WorkerProbe(TrainerCallback):
    """Records ``worker.is_sleeping`` at each trainer event, inside every scoring call, and during every
    forward and backward pass of the policy."""

    def __init__(self, worker) -> None:
        self.worker = worker
        self.events: list[tuple[str, bool]] = []

    def record(self, phase: str) -> None:
        self.events.append((phase, self.worker.is_sleeping))

    def watch(self, trainer) -> None:
        llm = self.worker.llm
        encode = llm.encode

        def recorded_encode(*args, **kwargs):
            self.record("scoring")
            return encode(*args, **kwargs)

        llm.encode = recorded_encode
        model = trainer.model
        model.register_forward_pre_hook(lambda module, inputs: self.record("policy_forward"))
        param = next(p for p in model.parameters() if p.requires_grad)
        param.register_hook(lambda grad: self.record("policy_backward"))

    def states(self, phase: str) -> list[bool]:
        return [sleeping for p, sleeping in self.events if p == phase]

    def on_train_begin(self, args, state, control, **kwargs):
        self.record("train_begin")

    def on_step_begin(self, args, state, control, **kwargs):
        self.record("step_begin")

    def on_step_end(self, args, state, control, **kwargs):
        self.record("step_end")

    def on_train_end(self, args, state, control, **kwargs):
        self.record("train_end")


def test_colocated_reward_model_sleeps_outside_scoring(policy_path, rm_path, tmp_path):
    reward = RewardFunction(str(rm_path), name="rm", llm_kwargs={"device": "cpu"})
    worker = reward.worker
    probe = WorkerProbe(worker)
    trainer, snapshot = grpo_trainer(policy_path, [reward], [RewardWorkerCallback([reward]), probe], tmp_path)
    probe.watch(trainer)
    assert not worker.is_sleeping  # nothing happens before training starts
    trainer.train()

    assert trainer.state.global_step == 2
    assert probe.states("train_begin") == [True]
    assert probe.states("step_begin") == [True, True]
    assert probe.states("step_end") == [True, True]
    # Awake for every scoring call (one per generation batch), asleep for every policy pass, generation included.
    assert probe.states("scoring") == [False, False]
    forward, backward = probe.states("policy_forward"), probe.states("policy_backward")
    assert len(forward) >= 4 and all(forward)
    assert len(backward) == 2 and all(backward)
    # Phases in order: scoring happens between the step's generation and its backward pass.
    phases = [p for p, _ in probe.events if p in ("step_begin", "scoring", "policy_backward", "step_end")]
    assert phases == ["step_begin", "scoring", "policy_backward", "step_end"] * 2
    # Training over: awake again, with the plain encode back.
    assert probe.states("train_end") == [False]
    assert not worker.is_sleeping and "encode" not in vars(worker)

    # The scores TRL trained on are the reward model's, although it was put to sleep and woken each step.
    reference = RewardFunction(str(rm_path), name="reference", llm_kwargs={"device": "cpu"})
    logged = [h for h in trainer.state.log_history if "rewards/rm/mean" in h]
    assert len(logged) == 2
    for step, log in zip(snapshot.steps, logged, strict=True):
        want = reference(step["prompt"], step["completion"])
        assert step["rewards"]["rm"] == pytest.approx(want, abs=1e-4)
        assert math.isclose(log["rewards/rm/mean"], sum(want) / len(want), abs_tol=1e-4)


def test_without_sleep_the_reward_model_stays_resident(policy_path, rm_path, tmp_path):
    reward = RewardFunction(str(rm_path), name="rm", llm_kwargs={"device": "cpu"})
    probe = WorkerProbe(reward.worker)
    trainer, _ = grpo_trainer(
        policy_path, [reward], [RewardWorkerCallback([reward], sleep=False), probe], tmp_path, steps=1
    )
    probe.watch(trainer)
    trainer.train()
    assert probe.events and not any(sleeping for _, sleeping in probe.events)


def test_a_dead_reward_server_stops_training_at_begin_with_its_url(policy_path, tmp_path):
    dead = f"http://127.0.0.1:{free_port()}"
    calls: list[int] = []

    def length_reward(completions, **kwargs):
        calls.append(len(completions))
        return [float(len(c)) for c in completions]

    worker = RemoteWorker(dead, timeout=5, max_retries=0)
    try:
        trainer, _ = grpo_trainer(policy_path, [length_reward], [RewardWorkerCallback([worker])], tmp_path)
        with pytest.raises(RuntimeError, match=f"{dead}.*ConnectError"):
            trainer.train()
        assert trainer.state.global_step == 0 and calls == []  # failed before the first generation batch
    finally:
        worker.close()


def test_one_dead_url_of_two(policy_path, tmp_path, caplog):
    from tests.workers.fake_server import FakeServer

    dead = f"http://127.0.0.1:{free_port()}"
    with FakeServer("ok") as live:
        worker = RemoteWorker([live.url, dead], timeout=5, max_retries=1)
        try:
            reward = RewardFunction(worker, name="fake")
            trainer, _ = grpo_trainer(
                policy_path, [reward], [RewardWorkerCallback([reward])], tmp_path, steps=1
            )
            with pytest.raises(RuntimeError) as info:
                trainer.train()
            assert dead in str(info.value) and live.url not in str(info.value)
            assert trainer.state.global_step == 0

            # Opting out: the run goes on through the live URL, with a warning naming the dead one.
            callback = RewardWorkerCallback([reward], require_all_endpoints=False)
            with caplog.at_level(logging.WARNING, logger="rlhf_rewards.callbacks.worker"):
                callback.check_workers()
            assert dead in caplog.text and live.url not in caplog.text.split("endpoints are down:")[1]
        finally:
            worker.close()


def test_arguments_are_validated():
    with pytest.raises(ValueError, match="require_all_endpoints"):
        RewardWorkerCallback([], require_all_endpoints="yes")
