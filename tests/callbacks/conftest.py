"""Tiny models and a real ``trl.GRPOTrainer`` run for the callback tests."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")

trl = pytest.importorskip("trl")
datasets = pytest.importorskip("datasets")

PROMPTS = ["What is 12 + 7?", "Hello, my name is", "Solve 3 * 4 = 12.", "The quick brown fox"]


@pytest.fixture(scope="session")
def rm_path(checkpoint_factory) -> Path:
    """An outcome RM: Qwen3ForSequenceClassification, one label."""
    return checkpoint_factory("Qwen3ForSequenceClassification", seed=21)


@pytest.fixture(scope="session")
def policy_path(checkpoint_factory, rm_path) -> Path:
    """A tiny causal-LM policy sharing the reward model's tokenizer."""
    return checkpoint_factory("Qwen3ForCausalLM", seed=22, tokenizer_dir=str(rm_path))


class Snapshot:
    """Keeps what TRL recorded for each step's generation batch (``trainer._logs``): prompts, completions and
    the per-function rewards (NaN where a function returned ``None``)."""

    def __init__(self) -> None:
        self.trainer: Any = None
        self.steps: list[dict[str, Any]] = []

    def callback(self):
        from transformers import TrainerCallback

        snapshot = self

        class _Snap(TrainerCallback):
            def on_step_end(self, args, state, control, **kwargs):
                logs = snapshot.trainer._logs
                snapshot.steps.append(
                    {
                        "prompt": list(logs["prompt"]),
                        "completion": list(logs["completion"]),
                        "rewards": {k: [float(x) for x in v] for k, v in logs["rewards"].items()},
                    }
                )

        return _Snap()


def grpo_trainer(policy_path, reward_funcs, callbacks, output_dir, *, prompts=PROMPTS, steps: int = 2):
    """A ``GRPOTrainer`` for ``steps`` steps of 2 prompts x 2 completions on CPU, logging every step.

    Returns ``(trainer, snapshot)``; the snapshot's callback runs after ``callbacks``.
    """
    args = trl.GRPOConfig(
        output_dir=str(output_dir),
        max_steps=steps,
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
    snapshot = Snapshot()
    trainer = trl.GRPOTrainer(
        model=str(policy_path),
        reward_funcs=reward_funcs,
        args=args,
        train_dataset=datasets.Dataset.from_dict({"prompt": list(prompts)}),
        callbacks=[*callbacks, snapshot.callback()],
    )
    snapshot.trainer = trainer
    return trainer, snapshot
