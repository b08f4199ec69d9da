"""Saving the shipped models: the folder (world-readable), ``training_report.json`` and the model card."""

from __future__ import annotations

import json
import math
import shutil
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch


def save(model: torch.nn.Module, tokenizer: Any, out: Path) -> None:
    """Replace ``out`` with ``model`` and ``tokenizer``, saved with ``save_pretrained``."""
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    for f in out.iterdir():  # safetensors writes 0600; installed package data must be world-readable
        f.chmod(0o644)


CARDS = {
    "outcome": """# arith-outcome-rm

A tiny outcome reward model shipped with rlhf-rewards (`LlamaForSequenceClassification`, 1 label,
{params:,} parameters, float32). It scores `What is A + B?` / `What is A - B?` (A, B in 0..9) followed by an
answer: the correct number scores higher than a wrong one (off by 1, 2 or 10, swapped digits, the result of
another operation, a neighbouring table entry, any other number), and any number scores higher than chatter
with no number. The score is the raw logit (no sigmoid).

Trained by `python -m scripts.build_assets --seed {seed}`: a causal LM on the facts, then TRL's
`RewardTrainer` ({steps} steps, {seconds:.0f} s on a 2-core CPU, plus the shared base LM). Held-out (preference pairs whose wrong
answer never appears in training, regenerated from the seed by `rlhf_rewards.assets.evaluation`):

{metrics}

Scope: single-digit facts only; multi-digit arithmetic is outside what it learned.
""",
    "process": """# arith-prm

A tiny process reward model shipped with rlhf-rewards in the Qwen2.5-Math-PRM layout
(`Qwen2ForProcessRewardModel`, {params:,} parameters, float32): every step of a solution is followed by
`<extra_0>` and `softmax(logits)[1]` at the tag is P(step is right). Steps are `x + y = z` or `x - y = z`
(x, y in 0..9), one per paragraph; `RewardFunction` splits on blank lines and inserts the tags.

Trained by `python -m scripts.build_assets --seed {seed}` (`--stages process` retrains only it): a causal
LM on the facts, the outcome RM from it, then from the outcome RM's backbone a token-classification loss at
the step tags plus an auxiliary loss predicting each step's correct result with a digit head that is not
shipped ({steps} steps, {seconds:.0f} s on a shared 2-core CPU, plus the base LM and outcome RM). Held-out
(solutions whose wrong steps never appear in training, regenerated from the seed):

{metrics}
""",
    "policy": """# arith-policy

The starting policy of the rlhf-rewards GRPO demo (`LlamaForCausalLM`, {params:,} parameters), fine-tuned to
answer `What is A + B?` with the right number 40% of the time, a wrong one 20% and chatter 40%. GRPO with
the shipped outcome reward model (`bash scripts/demo.sh`) teaches it to answer with right numbers.

Trained by `python -m scripts.build_assets --seed {seed}` ({steps} steps of SFT, {seconds:.0f} s).
Sampled answers (temperature 1, as GRPO samples) to questions of the task:

{metrics}
""",
}


def write_report(
    out: Path, stage: str, seed: int, cfg: Any, seconds: float, info: dict[str, Any], metrics: dict[str, Any]
) -> None:
    """``training_report.json`` and the model card ``README.md``."""
    from safetensors import safe_open

    with safe_open(str(out / "model.safetensors"), "pt") as f:
        params = sum(math.prod(f.get_slice(k).get_shape()) for k in f.keys())  # noqa: SIM118
    report = {
        "stage": stage,
        "seed": seed,
        "config": asdict(cfg),
        "train_seconds": round(seconds, 1),
        "parameters": params,
        **info,
        "held_out": metrics,
    }
    (out / "training_report.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    lines = "\n".join(f"- `{k}`: {v}" for k, v in metrics.items())
    (out / "README.md").write_text(
        CARDS[stage].format(params=params, seed=seed, steps=cfg.steps, seconds=seconds, metrics=lines),
        encoding="utf-8",
    )
