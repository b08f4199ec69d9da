"""Train the reward models shipped with rlhf-rewards (and the demo's tiny policy) from generated arithmetic data.

Everything is generated from ``--seed`` by :mod:`rlhf_rewards.assets.arithmetic` (single-digit ``+`` and ``-``
facts), trained on the CPU, evaluated on preference pairs and steps the models never saw, and saved under
``rlhf_rewards/assets/models/``. As in the usual RLHF pipeline, the reward models start from a language model
fine-tuned on the task (dense next-token supervision learns the facts far faster than a pairwise loss):

1. ``base`` (not shipped): a tiny ``LlamaForCausalLM`` trained on correct questions/answers and worked steps.
2. ``arith-outcome-rm``: ``LlamaForSequenceClassification`` (1 label) from the base, trained with TRL's
   ``RewardTrainer`` (Bradley-Terry loss) on ``chosen`` = the correct answer, ``rejected`` = a wrong answer or
   off-format chatter.
3. ``arith-prm``: ``Qwen2ForProcessRewardModel`` (Qwen2.5-Math-PRM layout, 2 labels read at each ``<extra_0>``)
   from the outcome RM's backbone (a Qwen2 block with zero q/k/v biases is a Llama block), trained with a
   token-classification loss at the step tags plus an auxiliary loss that predicts each step's correct result
   (a throw-away digit head): without it the step head learns which wrong results it saw per fact and passes
   a third of the unseen near misses (84.6% held-out step accuracy, 79.5% from the outcome RM). TRL 1.x removed
   ``PRMTrainer`` (it is not in ``trl.experimental`` either), so this is a plain PyTorch loop.
4. ``arith-policy``: the base fine-tuned to answer with the right number (40%), a wrong one (20%) or chatter
   (40%): the starting point of the GRPO demo (``recipes/demo.py``).

All share one byte-level BPE tokenizer whose digits are single tokens, with a ChatML template; each model is
about 1.5 MB of float32 safetensors. Run (838 s on this shared 2-core machine, 1 thread; the times are in each report)::

    python -m scripts.build_assets                    # seed 0, writes rlhf_rewards/assets/models/*
    python -m scripts.build_assets --stages process   # only the PRM, from the shipped outcome RM

Each model folder gets ``training_report.json`` (seed, steps, time, held-out accuracy) and a ``README.md``.
The held-out accuracy is recomputed from the seed by ``tests/assets/test_shipped_models.py``.

The jobs live in this folder's modules: ``data.py`` (tokenizer and batches), ``training.py`` (one function per
stage), ``export.py`` (saved folders, reports and model cards); this module is the command line.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from rlhf_rewards.assets import ASSETS_DIR, DEFAULT_MODELS
from rlhf_rewards.assets.evaluation import evaluate_outcome_rm, evaluate_policy, evaluate_prm

from .data import build_tokenizer
from .export import write_report
from .training import (
    DEFAULT_STAGES,
    PRM_ANSWER_LOSS_WEIGHT,
    STAGES,
    StageConfig,
    train_base,
    train_outcome_rm,
    train_policy,
    train_prm,
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m scripts.build_assets",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="Seed of the data, the weights and the held-out set."
    )
    parser.add_argument(
        "--output-dir",
        default=str(ASSETS_DIR / "models"),
        help="Where the model folders go. Default: rlhf_rewards/assets/models.",
    )
    parser.add_argument(
        "--steps-scale", type=float, default=1.0, help="Multiply every stage's steps (smoke runs)."
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads. Default 1: these matrices are too small to gain from more, and "
        "on a busy machine spinning threads cost a lot.",
    )
    parser.add_argument(
        "--stages",
        default=",".join(s for s in STAGES if s != "base"),
        help="Comma-separated shipped models to (re)train: outcome, process, policy. Default: all. "
        "The base LM is retrained from the seed when outcome or policy is chosen; process "
        "starts from the outcome RM in --output-dir (trained first when both are chosen).",
    )
    parser.add_argument(
        "--prm-answer-loss-weight",
        type=float,
        default=PRM_ANSWER_LOSS_WEIGHT,
        help=f"Weight of the PRM's auxiliary correct-result loss. Default {PRM_ANSWER_LOSS_WEIGHT}.",
    )
    args = parser.parse_args(argv)
    if args.steps_scale <= 0:
        parser.error(f"--steps-scale must be positive, got {args.steps_scale}")
    if args.threads < 1:
        parser.error(f"--threads must be at least 1, got {args.threads}")
    if args.prm_answer_loss_weight < 0:
        parser.error(f"--prm-answer-loss-weight must be >= 0, got {args.prm_answer_loss_weight}")
    chosen = [s.strip() for s in args.stages.split(",") if s.strip()]
    unknown = sorted(set(chosen) - set(STAGES[1:]))
    if unknown or not chosen:
        parser.error(f"--stages must name some of {', '.join(STAGES[1:])}; got {args.stages!r}")
    torch.set_num_threads(args.threads)
    root = Path(args.output_dir)
    outcome_dir = root / DEFAULT_MODELS["outcome"]
    if "process" in chosen and "outcome" not in chosen and not (outcome_dir / "model.safetensors").is_file():
        parser.error(
            f"--stages process starts from the outcome RM, but {outcome_dir} has none; add 'outcome'."
        )
    run = [s for s in STAGES if s in chosen or (s == "base" and {"outcome", "policy"} & set(chosen))]
    start = time.perf_counter()
    summary: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer_dir, base_dir = Path(tmp) / "tokenizer", Path(tmp) / "base"
        trainers = {
            "outcome": train_outcome_rm,
            "policy": train_policy,
            "process": lambda out, _base, seed, cfg: train_prm(
                out, outcome_dir, seed, cfg, args.prm_answer_loss_weight
            ),
        }
        evaluators = {"outcome": evaluate_outcome_rm, "process": evaluate_prm, "policy": evaluate_policy}
        base_seconds = 0.0
        for stage in run:
            default = DEFAULT_STAGES[stage]
            steps = max(1, round(default.steps * args.steps_scale))
            cfg = StageConfig(
                steps, default.batch_size, default.learning_rate, min(default.warmup_steps, steps // 10)
            )
            print(f"[{stage}] {cfg}", flush=True)
            t0 = time.perf_counter()
            if stage == "base":
                build_tokenizer(tokenizer_dir, args.seed)
                train_base(base_dir, tokenizer_dir, args.seed, cfg)
                base_seconds = time.perf_counter() - t0
                print(f"[base] {base_seconds:.0f} s", flush=True)
                continue
            out = root / DEFAULT_MODELS[stage]
            info = trainers[stage](out, base_dir, args.seed, cfg)
            seconds = time.perf_counter() - t0
            info["base_model"] = {
                "steps": DEFAULT_STAGES["base"].steps,
                "train_seconds": round(base_seconds, 1),
            }
            if stage == "process":
                # The PRM's lineage is the outcome RM (and its base), whichever run trained them.
                upstream = json.loads((outcome_dir / "training_report.json").read_text(encoding="utf-8"))
                info["outcome_model"] = {
                    "steps": upstream["config"]["steps"],
                    "train_seconds": upstream["train_seconds"],
                }
                info["base_model"] = upstream["base_model"]
            metrics = evaluators[stage](str(out), seed=args.seed)
            write_report(out, stage, args.seed, cfg, seconds, info, metrics)
            summary[stage] = metrics
            print(f"[{stage}] {seconds:.0f} s; held-out: {json.dumps(metrics)}", flush=True)
    total = time.perf_counter() - start
    print(f"done in {total:.0f} s: {json.dumps(summary)}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
