"""PPO with a served reward model: TRL's PPOTrainer scoring rollouts through ``as_trl_reward_model``.

TRL removed PPOTrainer in 1.13; the last release that ships it is trl 1.12.0
(``trl.experimental.ppo.PPOTrainer``). Run this in the environment ``scripts/ppo_env.sh`` creates::

    bash scripts/ppo_env.sh
    .venv-ppo/bin/python -m recipes.ppo_legacy --steps 2

It starts from the models shipped with rlhf-rewards (``rlhf_rewards.assets``: the ``arith-policy`` policy and
the ``arith-outcome-rm`` reward model, which share one tokenizer; the value model starts from the reward model,
as TRL's PPO example does), trains ``--steps`` PPO updates on CPU on arithmetic questions, and checks that every
score PPO used equals ``LLM.encode`` on the same token ids, and that each logged ``objective/scores`` is the
mean of that update's scores. ``--reward-model PATH`` and ``--policy PATH`` replace the shipped ones (the
two must share a tokenizer).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=2, help="PPO updates to run (default 2)")
    parser.add_argument(
        "--workdir", default=None, help="where checkpoints and outputs go (default: a temp dir)"
    )
    parser.add_argument(
        "--reward-model", default=None, help="reward model path (default: the shipped arith-outcome-rm)"
    )
    parser.add_argument("--policy", default=None, help="policy path (default: the shipped arith-policy)")
    parser.add_argument("--summary", default=None, help="write a JSON summary here")
    args = parser.parse_args(argv)

    import torch
    import trl
    from datasets import Dataset
    from transformers import (
        AutoModelForCausalLM,
        AutoModelForSequenceClassification,
        AutoTokenizer,
        TrainerCallback,
    )

    try:
        from trl.experimental.ppo import PPOConfig, PPOTrainer
    except ImportError:  # pragma: no cover - depends on the installed trl
        print(
            f"trl {trl.__version__} has no PPOTrainer (removed in 1.13); run `bash scripts/ppo_env.sh` and use "
            ".venv-ppo/bin/python.",
            file=sys.stderr,
        )
        return 2

    from rlhf_rewards import PoolingParams, as_trl_reward_model
    from rlhf_rewards.assets import default_policy_path, default_reward_model_path
    from rlhf_rewards.assets.arithmetic import questions

    work = Path(args.workdir or tempfile.mkdtemp(prefix="ppo-legacy-"))
    work.mkdir(parents=True, exist_ok=True)
    rm_path = args.reward_model or default_reward_model_path()
    policy_path = args.policy or default_policy_path()

    tokenizer = AutoTokenizer.from_pretrained(policy_path, padding_side="left")
    policy = AutoModelForCausalLM.from_pretrained(policy_path)
    ref_policy = AutoModelForCausalLM.from_pretrained(policy_path)
    value_model = AutoModelForSequenceClassification.from_pretrained(rm_path, num_labels=1)

    reward_model = as_trl_reward_model(rm_path, llm_kwargs={"device": "cpu"})
    buckets: list[list[tuple[list[int], float]]] = [[]]
    score_token_ids = reward_model.reward_function.score_token_ids

    def recording_score_token_ids(token_ids, **kwargs):
        rewards = score_token_ids(token_ids, **kwargs)
        buckets[-1].extend(zip([list(r) for r in token_ids], rewards, strict=True))
        return rewards

    reward_model.reward_function.score_token_ids = recording_score_token_ids  # type: ignore[method-assign]

    class NextBucket(TrainerCallback):
        def on_step_end(self, *a, **k):
            buckets.append([])

    prompts = questions(4)
    batch = 2
    ds = Dataset.from_dict({"input_ids": [tokenizer(p)["input_ids"] for p in prompts]})
    config = PPOConfig(
        output_dir=str(work / "out"),
        per_device_train_batch_size=batch,
        gradient_accumulation_steps=1,
        num_mini_batches=1,
        local_rollout_forward_batch_size=batch,
        total_episodes=batch * args.steps,
        num_ppo_epochs=1,
        response_length=8,
        stop_token="eos",
        missing_eos_penalty=None,
        num_sample_generations=0,
        use_cpu=True,
        bf16=False,
        report_to="none",
        logging_steps=1,
        save_strategy="no",
        seed=0,
    )
    trainer = PPOTrainer(
        args=config,
        processing_class=tokenizer,
        model=policy,
        ref_model=ref_policy,
        reward_model=reward_model,
        value_model=value_model,
        train_dataset=ds,
        callbacks=[NextBucket()],
    )
    trainer.train()

    # ---- checks: PPO's scores are exactly what the engine gives for the same token ids
    steps = [b for b in buckets if b]
    logged = [h["objective/scores"] for h in trainer.state.log_history if "objective/scores" in h]
    problems: list[str] = []
    if trainer.state.global_step != args.steps:
        problems.append(f"ran {trainer.state.global_step} updates, expected {args.steps}")
    if len(steps) != args.steps or len(logged) != args.steps:
        problems.append(
            f"{len(steps)} scored updates and {len(logged)} logged scores for {args.steps} updates"
        )
    llm = reward_model.reward_function.worker.llm
    raw = PoolingParams(use_activation=False)
    for k, (bucket, mean_logged) in enumerate(zip(steps, logged, strict=False)):
        ids = [row for row, _ in bucket]
        got = [r for _, r in bucket]
        outs = llm.encode(
            [{"prompt_token_ids": r} for r in ids], raw, pooling_task="classify", use_tqdm=False
        )
        want = [float(o.outputs.data[0]) for o in outs]
        if not all(math.isclose(g, w, rel_tol=1e-5, abs_tol=1e-5) for g, w in zip(got, want, strict=True)):
            problems.append(f"update {k}: PPO scores {got} != LLM.encode {want}")
        if not math.isclose(sum(got) / len(got), mean_logged, rel_tol=1e-5, abs_tol=1e-5):
            problems.append(f"update {k}: logged objective/scores {mean_logged} != mean of scores {got}")
        if any(tokenizer.pad_token_id in row for row in ids):
            problems.append(f"update {k}: a scored row still holds pad tokens")
    summary = {
        "trl": trl.__version__,
        "torch": torch.__version__,
        "updates": trainer.state.global_step,
        "scores": [[r for _, r in b] for b in steps],
        "logged_objective_scores": logged,
        "problems": problems,
    }
    if args.summary:
        Path(args.summary).write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary))
    if problems:
        print("PPO check FAILED:\n" + "\n".join(problems), file=sys.stderr)
        return 1
    print(f"PPO OK: {trainer.state.global_step} updates with trl {trl.__version__}; scores match LLM.encode.")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
