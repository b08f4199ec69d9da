"""The main job in a few minutes on a CPU: a shipped reward model steers a GRPO run.

The policy (``arith-policy``, a tiny causal LM shipped with the package) answers ``What is A + B?`` with a
number about half the time and with chatter the other half. The shipped outcome reward model
(``arith-outcome-rm``), wrapped in :class:`~rlhf_rewards.reward.RewardFunction`, scores every completion;
TRL's ``GRPOTrainer`` trains the policy on those scores, and the reward rises as the policy learns to answer
with (correct) numbers.

Run: ``bash scripts/demo.sh`` (sets up ``.venv`` first) or ``python recipes/demo.py``. Writes
``<output-dir>/rewards.json`` (one entry per step) and ``<output-dir>/rewards.png`` (reward against step).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass
class DemoConfig:
    """Settings of the demo run (validated: steps, prompts per step, generations >= 1 / 2)."""

    steps: int = 120
    prompts_per_step: int = 4
    num_generations: int = 8
    learning_rate: float = 3e-4
    max_completion_length: int = 8
    seed: int = 0
    threads: int = 1

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise ValueError(f"steps must be at least 1, got {self.steps}.")
        if self.prompts_per_step < 1:
            raise ValueError(f"prompts_per_step must be at least 1, got {self.prompts_per_step}.")
        if self.num_generations < 2:
            raise ValueError(
                f"num_generations must be at least 2 (GRPO compares completions), got {self.num_generations}."
            )
        if not 0 < self.learning_rate < 1:
            raise ValueError(f"learning_rate must be in (0, 1), got {self.learning_rate}.")
        if self.max_completion_length < 1:
            raise ValueError(f"max_completion_length must be at least 1, got {self.max_completion_length}.")
        if self.threads < 1:
            raise ValueError(f"threads must be at least 1, got {self.threads}.")


def make_step_logger(history: list[dict[str, Any]], reward_name: str) -> Any:
    """A ``TrainerCallback`` that prints the reward of each step and keeps it in ``history``."""
    from transformers import TrainerCallback

    class StepLogger(TrainerCallback):
        def on_log(
            self, args: Any, state: Any, control: Any, logs: dict[str, float] | None = None, **kw: Any
        ) -> None:
            if not logs or "reward" not in logs:
                return
            entry = {
                "step": state.global_step,
                "reward": logs["reward"],
                "reward_std": logs.get("reward_std"),
                f"rewards/{reward_name}/mean": logs.get(f"rewards/{reward_name}/mean"),
                "completion_length": logs.get("completions/mean_length"),
                "seconds": round(time.perf_counter() - started, 1),
            }
            history.append(entry)
            # Through tqdm.write so the progress bar stays intact below the lines.
            from tqdm.auto import tqdm

            tqdm.write(f"step {state.global_step:3d}  reward {logs['reward']:+.3f}")

    started = time.perf_counter()
    return StepLogger()


def plot(history: list[dict[str, Any]], path: Path, title: str) -> None:
    """PNG of the mean reward against the step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [h["step"] for h in history]
    rewards = [h["reward"] for h in history]
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(steps, rewards, marker="o", markersize=3, label="mean reward per step")
    window = 5
    if len(rewards) >= window:
        smooth = [sum(rewards[i - window + 1 : i + 1]) / window for i in range(window - 1, len(rewards))]
        ax.plot(steps[window - 1 :], smooth, linewidth=2.5, label=f"{window}-step moving average")
    ax.set_xlabel("GRPO step")
    ax.set_ylabel("outcome reward (raw logit)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def sample_answers(model: Any, tokenizer: Any, questions: list[str], seed: int) -> list[str]:
    """One sampled answer per question (temperature 1, as GRPO samples)."""
    import torch

    torch.manual_seed(seed)
    tokenizer.padding_side = "left"
    enc = tokenizer(questions, return_tensors="pt", padding=True, add_special_tokens=False)
    with torch.no_grad():
        out = model.generate(
            **enc,
            do_sample=True,
            max_new_tokens=8,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
            top_k=0,
            top_p=1.0,
        )
    return [
        a.strip()
        for a in tokenizer.batch_decode(out[:, enc["input_ids"].shape[1] :], skip_special_tokens=True)
    ]


def run(cfg: DemoConfig, output_dir: Path) -> dict[str, Any]:
    """Train, then write ``rewards.json`` and ``rewards.png`` into ``output_dir``; returns the summary."""
    import torch

    # Tiny matrices gain nothing from a second thread, and on a busy machine spinning threads cost a lot.
    torch.set_num_threads(cfg.threads)
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.trainer_callback import ProgressCallback
    from trl import GRPOConfig, GRPOTrainer

    class _QuietProgress(ProgressCallback):
        def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kwargs: Any) -> None:
            pass

    from rlhf_rewards.assets import arithmetic as ar
    from rlhf_rewards.assets import default_policy_path, default_reward_model_path
    from rlhf_rewards.reward import RewardFunction

    output_dir.mkdir(parents=True, exist_ok=True)
    policy_path, rm_path = default_policy_path(), default_reward_model_path()
    reward = RewardFunction(rm_path, name="arith_rm", llm_kwargs={"device": "cpu", "dtype": "float32"})
    tokenizer = AutoTokenizer.from_pretrained(policy_path)
    model = AutoModelForCausalLM.from_pretrained(policy_path, dtype=torch.float32)
    probe = ar.outcome_examples(cfg.seed + 99, 64, held_out=True)

    def answer_rates() -> dict[str, float]:
        model.eval()
        answers = sample_answers(model, tokenizer, [ex.prompt for ex in probe], cfg.seed)
        tokenizer.padding_side = "right"
        return {
            "number_rate": sum(a.isdigit() for a in answers) / len(probe),
            "correct_rate": sum(a == ex.chosen for a, ex in zip(answers, probe, strict=True)) / len(probe),
        }

    before = answer_rates()
    history: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        args = GRPOConfig(
            output_dir=tmp,
            max_steps=cfg.steps,
            per_device_train_batch_size=cfg.prompts_per_step * cfg.num_generations,
            num_generations=cfg.num_generations,
            max_completion_length=cfg.max_completion_length,
            learning_rate=cfg.learning_rate,
            lr_scheduler_type="constant",
            beta=0.0,  # no reference model: half the compute, and the run is too short to drift
            temperature=1.0,
            logging_steps=1,
            save_strategy="no",
            report_to="none",
            use_cpu=True,
            bf16=False,
            gradient_checkpointing=False,
            seed=cfg.seed,
            data_seed=cfg.seed,
            dataloader_num_workers=0,
            disable_tqdm=False,
        )
        trainer = GRPOTrainer(
            model=model,
            reward_funcs=[reward],
            args=args,
            train_dataset=Dataset.from_dict(
                {"prompt": ar.questions(cfg.steps * cfg.prompts_per_step, cfg.seed)}
            ),
            processing_class=tokenizer,
            callbacks=[make_step_logger(history, reward.__name__)],
        )
        # Keep TRL's progress bar but not its dump of every logged figure: the step lines say what matters
        # and rewards.json keeps the rest.
        trainer.remove_callback(ProgressCallback)
        trainer.add_callback(_QuietProgress())
        trainer.train()
    after = answer_rates()
    reward.close()
    if not history:
        raise RuntimeError("GRPO logged no reward; nothing to plot.")
    k = min(5, len(history))
    first = sum(h["reward"] for h in history[:k]) / k
    last = sum(h["reward"] for h in history[-k:]) / k
    summary = {
        "policy": policy_path,
        "reward_model": rm_path,
        "config": cfg.__dict__,
        "first_reward": history[0]["reward"],
        "last_reward": history[-1]["reward"],
        f"first_{k}_steps_mean_reward": round(first, 4),
        f"last_{k}_steps_mean_reward": round(last, 4),
        "answers_before": before,
        "answers_after": after,
        "seconds": history[-1]["seconds"],
        "steps": history,
    }
    (output_dir / "rewards.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    plot(
        history,
        output_dir / "rewards.png",
        f"GRPO on arith-policy with the shipped outcome RM ({len(history)} steps)",
    )
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--steps", type=int, default=DemoConfig.steps, help="GRPO steps. Default %(default)s."
    )
    parser.add_argument("--prompts-per-step", type=int, default=DemoConfig.prompts_per_step)
    parser.add_argument("--num-generations", type=int, default=DemoConfig.num_generations)
    parser.add_argument("--learning-rate", type=float, default=DemoConfig.learning_rate)
    parser.add_argument("--seed", type=int, default=DemoConfig.seed)
    parser.add_argument(
        "--threads", type=int, default=DemoConfig.threads, help="torch CPU threads. Default 1."
    )
    parser.add_argument(
        "--output-dir",
        default="outputs/demo",
        help="Where rewards.json and rewards.png go. Default: %(default)s.",
    )
    args = parser.parse_args(argv)
    try:
        cfg = DemoConfig(
            steps=args.steps,
            prompts_per_step=args.prompts_per_step,
            num_generations=args.num_generations,
            learning_rate=args.learning_rate,
            seed=args.seed,
            threads=args.threads,
        )
    except ValueError as exc:
        parser.error(str(exc))
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # Deprecation notices from the training stack say nothing about this run.
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    import transformers

    transformers.logging.set_verbosity_error()
    random.seed(cfg.seed)
    out = Path(args.output_dir)
    summary = run(cfg, out)
    k = min(5, len(summary["steps"]))
    print(
        f"\nreward: first step {summary['first_reward']:+.3f} -> last step {summary['last_reward']:+.3f} "
        f"(mean of first {k} steps {summary[f'first_{k}_steps_mean_reward']:+.3f} -> last {k} "
        f"{summary[f'last_{k}_steps_mean_reward']:+.3f}); answers that are numbers "
        f"{summary['answers_before']['number_rate']:.0%} -> {summary['answers_after']['number_rate']:.0%}, correct "
        f"{summary['answers_before']['correct_rate']:.0%} -> {summary['answers_after']['correct_rate']:.0%}; "
        f"{summary['seconds']:.0f} s of training. Log: {out / 'rewards.json'}, plot: {out / 'rewards.png'}",
        flush=True,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
