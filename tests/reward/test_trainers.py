"""Real TRL trainers (GRPOTrainer, RLOOTrainer) stepping on CPU with RewardFunction rewards.

Each run uses a tiny causal-LM policy and four reward functions at once: an outcome RM (``RewardFunction``),
a PRM (``RewardFunction``, STEP pooling), an ``AsyncRewardFunction`` and a plain Python reward. After every
step, the per-completion rewards TRL logged are compared with ``LLM.encode`` on the same prompts and
completions, and TRL's logged ``rewards/<name>/mean`` with their mean. Two (trainer, format) combinations
run by default; the other two are marked slow.
"""

from __future__ import annotations

import math

import pytest

from rlhf_rewards import AsyncRewardFunction, RewardFunction
from tests.reward.expected import close, outcome_rewards, prm_rewards

trl = pytest.importorskip("trl")
datasets = pytest.importorskip("datasets")

PROMPTS = ["What is 12 + 7?", "Hello, my name is", "Solve 3 * 4 = 12.", "The quick brown fox"]


def completion_length(completions, **kwargs):
    """A plain Python reward: the completion's length in characters."""
    return [float(len(c if isinstance(c, str) else c[0]["content"])) for c in completions]


def _dataset(fmt: str):
    if fmt == "standard":
        return datasets.Dataset.from_dict({"prompt": PROMPTS})
    return datasets.Dataset.from_dict({"prompt": [[{"role": "user", "content": p}] for p in PROMPTS]})


def _train(trainer_name: str, fmt: str, policy_path, reward_funcs, output_dir):
    from transformers import TrainerCallback

    if trainer_name == "grpo":
        Trainer, Config = trl.GRPOTrainer, trl.GRPOConfig
    else:
        Trainer, Config = trl.RLOOTrainer, trl.RLOOConfig
    args = Config(
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

    trainer = Trainer(
        model=str(policy_path),
        reward_funcs=reward_funcs,
        args=args,
        train_dataset=_dataset(fmt),
        callbacks=[Snapshot()],
    )
    holder["trainer"] = trainer
    trainer.train()
    return trainer, snapshots


def _check(trainer, snapshots, rm_llm, prm_llm):
    assert trainer.state.global_step == 2
    assert len(snapshots) == 2
    logged = [h for h in trainer.state.log_history if "rewards/rm/mean" in h]
    assert len(logged) == 2
    for snap, log in zip(snapshots, logged, strict=True):
        prompts, completions = snap["prompt"], snap["completion"]
        assert len(prompts) == 4
        want = {
            "rm": outcome_rewards(rm_llm, prompts, completions),
            "rm_async": outcome_rewards(rm_llm, prompts, completions),
            "prm": prm_rewards(prm_llm, prompts, completions),
            "completion_length": completion_length(completions),
        }
        for name, values in want.items():
            assert close(snap["rewards"][name], values, tol=1e-4), (name, snap["rewards"][name], values)
            assert math.isclose(
                log[f"rewards/{name}/mean"], sum(values) / len(values), rel_tol=1e-4, abs_tol=1e-4
            )
        # RewardFunction's own figures, through TRL's log_metric
        assert log["rewards/rm/tokens_scored"] > 0 and log["rewards/rm/latency_s"] > 0
        assert log["rewards/prm/unscored_frac"] == 0.0


def _reward_funcs(rm_llm, prm_llm):
    return [
        RewardFunction(rm_llm, name="rm"),
        RewardFunction(prm_llm, name="prm"),
        AsyncRewardFunction(rm_llm, name="rm_async"),
        completion_length,
    ]


@pytest.mark.parametrize(
    ("trainer_name", "fmt"),
    [
        ("grpo", "standard"),
        ("rloo", "conversational"),
        pytest.param("grpo", "conversational", marks=pytest.mark.slow),
        pytest.param("rloo", "standard", marks=pytest.mark.slow),
    ],
)
def test_trainer_logs_the_engines_rewards(trainer_name, fmt, policy_path, rm_llm, prm_llm, tmp_path):
    trainer, snapshots = _train(trainer_name, fmt, policy_path, _reward_funcs(rm_llm, prm_llm), tmp_path)
    _check(trainer, snapshots, rm_llm, prm_llm)
