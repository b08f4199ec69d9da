"""Held-out evaluation of the shipped models, regenerated from the training seed.

The held-out items come from :mod:`rlhf_rewards.assets.arithmetic` with ``held_out=True``: their operand pairs
never appear in training. The reward models are scored through :class:`~rlhf_rewards.reward.RewardFunction`
(the path a trainer uses), so these figures are what a user of the shipped models gets.
"""

from __future__ import annotations

import random
from typing import Any

from rlhf_rewards.assets import arithmetic as ar

#: Offsets added to the training seed for the held-out draws (training uses the seed itself).
OUTCOME_EVAL_OFFSET = 1000
PROCESS_EVAL_OFFSET = 2000
POLICY_EVAL_OFFSET = 3000


def _reward_function(path: str, **kwargs: Any) -> Any:
    from rlhf_rewards.reward import RewardFunction

    return RewardFunction(path, llm_kwargs={"device": "cpu", "dtype": "float32"}, **kwargs)


def _pairwise(fn: Any, prompts: list[Any], chosen: list[Any], rejected: list[Any]) -> float:
    good = fn(prompts, chosen)
    bad = fn(prompts, rejected)
    return sum(g > b for g, b in zip(good, bad, strict=True)) / len(prompts)


def evaluate_outcome_rm(path: str, *, seed: int = 0, n: int = 1000) -> dict[str, float]:
    """Pairwise accuracy of the outcome RM on ``n`` held-out questions.

    - ``pairwise_accuracy``: correct answer vs a near miss, standard format (``prompt`` + ``" 71"``);
    - ``pairwise_accuracy_conversational``: the same pairs as ChatML conversations (first ``n // 4``);
    - ``vs_chatter_accuracy``: correct answer vs chatter with no number.
    """
    examples = ar.outcome_examples(seed + OUTCOME_EVAL_OFFSET, n, held_out=True)
    rng = random.Random(seed + OUTCOME_EVAL_OFFSET)
    fn = _reward_function(path)
    try:
        prompts = [ex.prompt for ex in examples]
        std = _pairwise(
            fn, prompts, [" " + ex.chosen for ex in examples], [" " + ex.rejected for ex in examples]
        )
        conv = examples[: max(1, n // 4)]
        conv_acc = _pairwise(
            fn,
            [[{"role": "user", "content": ex.prompt}] for ex in conv],
            [[{"role": "assistant", "content": ex.chosen}] for ex in conv],
            [[{"role": "assistant", "content": ex.rejected}] for ex in conv],
        )
        chat = _pairwise(
            fn, prompts, [" " + ex.chosen for ex in examples], [" " + ar.chatter(rng) for _ in examples]
        )
    finally:
        fn.close()
    return {
        "pairwise_accuracy": round(std, 4),
        "pairwise_accuracy_conversational": round(conv_acc, 4),
        "vs_chatter_accuracy": round(chat, 4),
        "pairs": n,
    }


def evaluate_prm(path: str, *, seed: int = 0, n: int = 400) -> dict[str, float]:
    """Step accuracy of the PRM on ``n`` held-out chains (a step counts as right when P(right) > 0.5).

    - ``step_accuracy``: over every step, solutions given as ``RewardFunction`` receives them (steps
      separated by blank lines, standard format);
    - ``solution_accuracy``: whether ``min`` over the steps (the default aggregation) is above 0.5 exactly
      when every step is right.
    """
    examples = ar.process_examples(seed + PROCESS_EVAL_OFFSET, n, held_out=True)
    fn = _reward_function(path, step_aggregation="min")
    try:
        rewards, steps = fn(
            [ex.prompt + "\n" for ex in examples], [ex.completion() for ex in examples], return_steps=True
        )
    finally:
        fn.close()
    hits = total = solved = 0
    for ex, reward, probs in zip(examples, rewards, steps, strict=True):
        if len(probs) != len(ex.steps):
            raise ValueError(f"the PRM returned {len(probs)} step scores for {len(ex.steps)} steps")
        hits += sum((p > 0.5) == ok for p, ok in zip(probs, ex.labels, strict=True))
        total += len(probs)
        solved += (reward > 0.5) == all(ex.labels)
    return {
        "step_accuracy": round(hits / total, 4),
        "solution_accuracy": round(solved / n, 4),
        "steps": total,
        "solutions": n,
    }


def evaluate_policy(path: str, *, seed: int = 0, n: int = 200) -> dict[str, float]:
    """How the policy answers ``n`` held-out questions when sampled (temperature 1, as GRPO samples).

    - ``number_rate``: the answer is a number; ``correct_rate``: the answer is the correct number.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    examples = ar.outcome_examples(seed + POLICY_EVAL_OFFSET, n, held_out=True)
    tok = AutoTokenizer.from_pretrained(path, padding_side="left")
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    torch.manual_seed(seed)
    enc = tok([ex.prompt for ex in examples], return_tensors="pt", padding=True, add_special_tokens=False)
    with torch.no_grad():
        out = model.generate(
            **enc,
            do_sample=True,
            temperature=1.0,
            top_k=0,
            top_p=1.0,
            max_new_tokens=8,
            pad_token_id=tok.pad_token_id,
            eos_token_id=tok.eos_token_id,
        )
    answers = tok.batch_decode(out[:, enc["input_ids"].shape[1] :], skip_special_tokens=True)
    numbers = [a.strip() for a in answers]
    number_rate = sum(a.isdigit() for a in numbers) / n
    correct_rate = sum(a == ex.chosen for a, ex in zip(numbers, examples, strict=True)) / n
    return {"number_rate": round(number_rate, 4), "correct_rate": round(correct_rate, 4), "questions": n}


__all__ = ["evaluate_outcome_rm", "evaluate_policy", "evaluate_prm"]
