"""trl.GRPOTrainer trains (CPU, tiny policy, 2 steps) with rewards served by each worker kind.

The same reward model is served by a ``ColocatedWorker`` (in the trainer's process, put to sleep between
scoring calls by ``RewardWorkerCallback``), a ``RemoteWorker`` on a real ``rlhf-rewards serve`` subprocess on
127.0.0.1, and a ``RayWorkerPool`` of two replicas on a local CPU Ray cluster. Each reward function
(``RewardFunction`` and ``AsyncRewardFunction``) talks to the worker only. After every step the
per-completion rewards TRL logged are compared with ``LLM.encode`` in this process on the same prompts and
completions, and TRL's ``rewards/<name>/mean`` with their mean. The colocated run is in the default suite;
the remote and Ray runs (a server or a cluster to start) are marked slow.
"""

from __future__ import annotations

import math

import pytest

from rlhf_rewards import LLM, AsyncRewardFunction, RewardFunction
from rlhf_rewards.callbacks import RewardWorkerCallback
from tests.reward.expected import close, outcome_rewards

trl = pytest.importorskip("trl")
datasets = pytest.importorskip("datasets")

PROMPTS = ["What is 12 + 7?", "Hello, my name is", "Solve 3 * 4 = 12.", "The quick brown fox"]


@pytest.fixture(scope="module")
def rm_path(checkpoint_factory):
    return checkpoint_factory("Qwen3ForSequenceClassification", seed=11)


@pytest.fixture(scope="module")
def policy_path(checkpoint_factory, rm_path):
    return checkpoint_factory("Qwen3ForCausalLM", seed=13, tokenizer_dir=str(rm_path))


@pytest.fixture(scope="module")
def rm_llm(rm_path) -> LLM:
    """The in-process reference every worker's rewards must equal."""
    return LLM(str(rm_path), device="cpu")


def _dataset(fmt: str):
    if fmt == "standard":
        return datasets.Dataset.from_dict({"prompt": PROMPTS})
    return datasets.Dataset.from_dict({"prompt": [[{"role": "user", "content": p}] for p in PROMPTS]})


def _train_and_check(worker, fmt: str, policy_path, rm_llm, output_dir) -> None:
    from transformers import TrainerCallback

    reward_funcs = [RewardFunction(worker, name="rm"), AsyncRewardFunction(worker, name="rm_async")]
    args = trl.GRPOConfig(
        output_dir=str(output_dir),
        max_steps=2,
        per_device_train_batch_size=4,
        num_generations=2,
        max_completion_length=8,
        use_cpu=True,
        bf16=False,
        report_to="none",
        logging_steps=1,
        save_strategy="no",
        seed=0,
    )
    snapshots: list[dict] = []
    holder: dict = {}

    class Snapshot(TrainerCallback):
        """TRL keeps the last generation batch's prompts, completions and per-function rewards in ``_logs``."""

        def on_step_end(self, args, state, control, **kwargs):
            logs = holder["trainer"]._logs
            snapshots.append(
                {
                    "prompt": list(logs["prompt"]),
                    "completion": list(logs["completion"]),
                    "rewards": {k: list(v) for k, v in logs["rewards"].items()},
                }
            )

    trainer = trl.GRPOTrainer(
        model=str(policy_path),
        reward_funcs=reward_funcs,
        args=args,
        train_dataset=_dataset(fmt),
        callbacks=[RewardWorkerCallback(reward_funcs), Snapshot()],
    )
    holder["trainer"] = trainer
    prompts_before = worker.stats.prompts
    trainer.train()

    assert trainer.state.global_step == 2 and len(snapshots) == 2
    logged = [h for h in trainer.state.log_history if "rewards/rm/mean" in h]
    assert len(logged) == 2
    for snap, log in zip(snapshots, logged, strict=True):
        want = outcome_rewards(rm_llm, snap["prompt"], snap["completion"])
        assert len(want) == 4
        for name in ("rm", "rm_async"):
            assert close(snap["rewards"][name], want, tol=1e-4), (name, snap["rewards"][name], want)
            assert math.isclose(
                log[f"rewards/{name}/mean"], sum(want) / len(want), rel_tol=1e-4, abs_tol=1e-4
            )
    # Both functions scored every completion of both steps through this worker.
    assert worker.stats.prompts - prompts_before >= 2 * 2 * 4


def test_grpo_through_a_colocated_worker(rm_path, policy_path, rm_llm, tmp_path):
    from rlhf_rewards.workers import ColocatedWorker

    worker = ColocatedWorker(str(rm_path), device="cpu")
    _train_and_check(worker, "standard", policy_path, rm_llm, tmp_path)
    assert not worker.is_sleeping  # RewardWorkerCallback woke it when training ended
    worker.close()


@pytest.mark.slow  # a server subprocess plus the trainer: about a minute
def test_grpo_through_a_remote_worker(rm_path, policy_path, rm_llm, tmp_path):
    from rlhf_rewards.workers import RemoteWorker
    from tests.support.server import ServerProcess

    with ServerProcess(rm_path) as server, RemoteWorker(server.url) as worker:
        _train_and_check(worker, "conversational", policy_path, rm_llm, tmp_path)


@pytest.mark.slow  # a Ray cluster, two replicas and the trainer: about a minute
def test_grpo_through_a_ray_pool(rm_path, policy_path, rm_llm, tmp_path):
    ray = pytest.importorskip("ray")
    from rlhf_rewards.workers import RayWorkerPool

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)  # actors inherit HF_HUB_OFFLINE
    try:
        with RayWorkerPool(str(rm_path), num_replicas=2, max_batch_size=2) as pool:
            _train_and_check(pool, "conversational", policy_path, rm_llm, tmp_path)
            assert all(r["chunks_done"] > 0 for r in pool.load())  # both replicas served the trainer
    finally:
        ray.shutdown()
