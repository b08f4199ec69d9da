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

    python recipes/train_reward_models.py            # seed 0, writes rlhf_rewards/assets/models/*
    python recipes/train_reward_models.py --stages process   # only the PRM, from the shipped outcome RM

Each model folder gets ``training_report.json`` (seed, steps, time, held-out accuracy) and a ``README.md``.
The held-out accuracy is recomputed from the seed by ``tests/assets/test_shipped_models.py``.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from rlhf_rewards.assets import ASSETS_DIR, DEFAULT_MODELS
from rlhf_rewards.assets import arithmetic as ar
from rlhf_rewards.assets.evaluation import evaluate_outcome_rm, evaluate_policy, evaluate_prm
from rlhf_rewards.testing.checkpoints import CHATML_TEMPLATE, SPECIAL_TOKENS

#: Size of every model: about 0.35 M parameters (1.4 MB in float32).
DIMS = {
    "hidden_size": 96,
    "intermediate_size": 256,
    "num_hidden_layers": 3,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 256,
    "rms_norm_eps": 1e-6,
    "rope_theta": 10000.0,
    "tie_word_embeddings": False,
}
HEAD_DIM = 24
STAGES = ("base", "outcome", "process", "policy")
#: Weight of the PRM's auxiliary loss that predicts each step's correct result (see ``train_prm``).
PRM_ANSWER_LOSS_WEIGHT = 1.0


@dataclass
class StageConfig:
    """Optimisation settings of one stage (validated: steps, batch size and learning rate must be positive)."""

    steps: int
    batch_size: int
    learning_rate: float
    warmup_steps: int = 30

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "learning_rate"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}.")
        if self.warmup_steps < 0:
            raise ValueError(f"warmup_steps must be >= 0, got {self.warmup_steps}.")


DEFAULT_STAGES = {
    "base": StageConfig(steps=800, batch_size=64, learning_rate=3e-3),
    "outcome": StageConfig(steps=2000, batch_size=32, learning_rate=2e-3),
    "process": StageConfig(steps=1500, batch_size=32, learning_rate=2e-3),
    "policy": StageConfig(steps=100, batch_size=64, learning_rate=1e-3),
}


# ----------------------------------------------------------------------------------------------- tokenizer
def build_tokenizer(path: Path, seed: int) -> Any:
    """A byte-level BPE tokenizer (digits are single tokens, ChatML template), saved to ``path``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    # Digits stay single tokens so every number is spelled digit by digit: arithmetic is learnable.
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=512, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    corpus = list(ar.tokenizer_corpus(seed))
    corpus += [" ".join(ar.CHATTER_WORDS)] * 50
    tok.train_from_iterator(corpus, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|endoftext|>",
        pad_token="<pad>",
        padding_side="right",
        additional_special_tokens=[t for t in SPECIAL_TOKENS if t not in ("<|endoftext|>", "<pad>")],
    )
    fast.chat_template = CHATML_TEMPLATE
    path.mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(path)
    return fast


def _config_fields(tokenizer: Any) -> dict[str, Any]:
    return {**DIMS, "vocab_size": len(tokenizer), "pad_token_id": tokenizer.pad_token_id,
            "bos_token_id": tokenizer.eos_token_id, "eos_token_id": tokenizer.eos_token_id}


def _render(tokenizer: Any, prompt: str, completion: str, rng: random.Random) -> tuple[list[int], int]:
    """Token ids of ``prompt`` + ``completion`` in one of the layouts ``RewardFunction`` sends (standard text,
    the completion after a space, a newline or glued on; or the ChatML conversation), and where the
    completion starts."""
    if rng.random() < 0.25:
        head = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                             add_generation_prompt=True)
        tail = completion.strip() + "<|im_end|>\n"
    else:
        head, tail = prompt, rng.choice((" ", " ", " ", "", "\n", "\n\n")) + completion.lstrip()
    head_ids = tokenizer(head, add_special_tokens=False)["input_ids"]
    return head_ids + tokenizer(tail, add_special_tokens=False)["input_ids"], len(head_ids)


def _lr_lambda(cfg: StageConfig) -> Callable[[int], float]:
    def f(step: int) -> float:
        if step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
        return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return f


def _pad(rows: list[list[int]], value: int) -> torch.Tensor:
    width = max(len(r) for r in rows)
    return torch.tensor([r + [value] * (width - len(r)) for r in rows])


def _train_loop(model: torch.nn.Module, cfg: StageConfig, batch: Callable[[int], dict[str, torch.Tensor]],
                loss_fn: Callable[[torch.nn.Module, dict[str, torch.Tensor]], torch.Tensor], name: str) -> None:
    """AdamW with warmup and cosine decay over ``cfg.steps`` batches from ``batch(step)``."""
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.learning_rate, weight_decay=0.0, betas=(0.9, 0.98))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(cfg))
    model.train()
    log_every = max(1, cfg.steps // 5)
    running = 0.0
    for step in range(cfg.steps):
        loss = loss_fn(model, batch(step))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        running += loss.item()
        if (step + 1) % log_every == 0:
            print(f"  {name} step {step + 1}/{cfg.steps}: loss {running / log_every:.4f}", flush=True)
            running = 0.0
    model.eval()


def _lm_loss(model: torch.nn.Module, b: dict[str, torch.Tensor]) -> torch.Tensor:
    return model(input_ids=b["input_ids"], attention_mask=b["attention_mask"], labels=b["labels"]).loss


def _lm_batch(tokenizer: Any, pairs: Sequence[tuple[list[int], int]]) -> dict[str, torch.Tensor]:
    """Causal-LM batch: loss on the completion (from the given start) and a final EOS."""
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    seqs = [ids + [eos] for ids, _ in pairs]
    labels = [[-100] * start + ids[start:] + [eos] for ids, start in pairs]
    return {"input_ids": _pad(seqs, pad), "attention_mask": _pad([[1] * len(x) for x in seqs], 0),
            "labels": _pad(labels, -100)}


# ---------------------------------------------------------------------------------------------------- base
def train_base(out: Path, tokenizer_dir: Path, seed: int, cfg: StageConfig) -> dict[str, Any]:
    """The shared starting point: a causal LM that learns the facts from correct answers and worked steps."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    torch.manual_seed(seed)
    model = LlamaForCausalLM(LlamaConfig(**_config_fields(tokenizer), head_dim=HEAD_DIM))
    rng = random.Random(seed)
    table = ar.facts()

    def batch(step: int) -> dict[str, torch.Tensor]:
        pairs = []
        for _ in range(cfg.batch_size):
            if rng.random() < 0.75:
                a, op, b = rng.choice(table)
                pairs.append(_render(tokenizer, ar.question(a, op, b), str(ar.apply(a, op, b)), rng))
            else:
                (ex,) = ar.process_examples(rng.randrange(1 << 30), 1, held_out=False, error_rate=0.0)
                pairs.append(_render(tokenizer, ex.prompt, ex.completion(), rng))
        return _lm_batch(tokenizer, pairs)

    _train_loop(model, cfg, batch, _lm_loss, "base")
    _save(model, tokenizer, out)
    return {"trainer": "plain PyTorch causal-LM loop"}


# ----------------------------------------------------------------------------------------------- outcome RM
def outcome_pairs(tokenizer: Any, seed: int, n: int) -> list[dict[str, list[int]]]:
    """``n`` tokenized preference pairs from the training split: 75% correct vs wrong, 15% correct vs
    chatter, 10% wrong vs chatter (a number beats chatter even when it is wrong)."""
    rng = random.Random(seed)
    rows = []
    for ex in ar.outcome_examples(seed, n, held_out=False):
        r = rng.random()
        if r < 0.75:
            chosen, rejected = ex.chosen, ex.rejected
        elif r < 0.9:
            chosen, rejected = ex.chosen, ar.chatter(rng)
        else:
            chosen, rejected = ex.rejected, ar.chatter(rng)
        # The same layout for both sides: the pair differs only in the answer.
        state = rng.getstate()
        chosen_ids, _ = _render(tokenizer, ex.prompt, chosen, rng)
        rng.setstate(state)
        rejected_ids, _ = _render(tokenizer, ex.prompt, rejected, rng)
        rows.append({"chosen_ids": chosen_ids, "rejected_ids": rejected_ids})
    return rows


def train_outcome_rm(out: Path, base: Path, seed: int, cfg: StageConfig) -> dict[str, Any]:
    """Train the outcome RM from the base with TRL's ``RewardTrainer`` and save it to ``out``."""
    from datasets import Dataset
    from transformers import AutoTokenizer, LlamaForSequenceClassification
    from trl import RewardConfig, RewardTrainer

    tokenizer = AutoTokenizer.from_pretrained(str(base))
    torch.manual_seed(seed)
    model = LlamaForSequenceClassification.from_pretrained(str(base), num_labels=1, dtype=torch.float32)
    model.config.pad_token_id = tokenizer.pad_token_id
    # Pre-tokenized pairs: RewardTrainer would append EOS to standard text, but RewardFunction scores
    # prompt + completion as it is, so the model is trained on exactly the ids it will score.
    train = Dataset.from_list(outcome_pairs(tokenizer, seed, cfg.steps * cfg.batch_size))
    with tempfile.TemporaryDirectory() as tmp:
        args = RewardConfig(
            output_dir=tmp, max_steps=cfg.steps, per_device_train_batch_size=cfg.batch_size,
            learning_rate=cfg.learning_rate, lr_scheduler_type="cosine", warmup_steps=cfg.warmup_steps,
            weight_decay=0.0, logging_steps=max(1, cfg.steps // 5), save_strategy="no", report_to="none",
            use_cpu=True, bf16=False, gradient_checkpointing=False, seed=seed, data_seed=seed,
            dataloader_num_workers=0, center_rewards_coefficient=0.01, disable_tqdm=True,
        )
        trainer = RewardTrainer(model=model, args=args, train_dataset=train, processing_class=tokenizer)
        trainer.train()
    model = trainer.model.eval()
    model.config.architectures = ["LlamaForSequenceClassification"]
    _save(model, tokenizer, out)
    return {"trainer": "trl.RewardTrainer", "pairs": len(train), "initialised_from": "base causal LM"}


# ----------------------------------------------------------------------------------------------------- PRM
def prm_batch(tokenizer: Any, examples: Sequence[ar.ProcessExample], rng: random.Random) -> dict[str, torch.Tensor]:
    """Padded ids, attention mask, labels (1 right / 0 wrong at each ``<extra_0>``, -100 elsewhere) and
    ``answer_labels``: the digits of each step's *correct* result at the positions that predict the written
    result's digits (-100 elsewhere), for the auxiliary answer loss of :func:`train_prm`."""
    tag_id = tokenizer.convert_tokens_to_ids(ar.STEP_TAG)
    digit_ids = {tokenizer.convert_tokens_to_ids(str(d)): d for d in range(10)}
    seqs, labels, answers = [], [], []
    for ex in examples:
        ids, _ = _render(tokenizer, ex.prompt, ex.tagged_completion(), rng)
        lab = [-100] * len(ids)
        ans = [-100] * len(ids)
        tags = [i for i, t in enumerate(ids) if t == tag_id]
        if len(tags) != len(ex.steps):
            raise AssertionError(f"{len(tags)} step tags for {len(ex.steps)} steps in {ex}")
        for pos, step in zip(tags, ex.steps, strict=True):
            lab[pos] = int(step.correct)
            written, correct = str(step.z), str(ar.apply(step.x, step.op, step.y))
            first = pos - len(written)
            if [digit_ids.get(t) for t in ids[first:pos]] != [int(c) for c in written]:
                raise AssertionError(f"the result {written} of {step.text} is not spelled digit by digit")
            # The position before each written digit predicts the correct digit while the written prefix
            # still agrees with the correct result: the backbone must hold the answer when it reaches the tag.
            for k, digit in enumerate(correct):
                if k > len(written) or written[:k] != correct[:k]:
                    break
                ans[first - 1 + k] = int(digit)
        seqs.append(ids)
        labels.append(lab)
        answers.append(ans)
    return {"input_ids": _pad(seqs, tokenizer.pad_token_id), "attention_mask": _pad([[1] * len(x) for x in seqs], 0),
            "labels": _pad(labels, -100), "answer_labels": _pad(answers, -100)}


def train_prm(out: Path, init: Path, seed: int, cfg: StageConfig, answer_loss_weight: float = PRM_ANSWER_LOSS_WEIGHT
              ) -> dict[str, Any]:
    """Train the PRM (cross-entropy over 2 labels at the step tags) from the backbone of the Llama model in
    ``init`` and save it to ``out``.

    With ``answer_loss_weight > 0`` a throw-away 10-way digit head on the same hidden states also learns to
    predict each step's correct result where the written result is spelled (see :func:`prm_batch`); it is
    not saved. Without it the step head learns which wrong results it saw per fact and misjudges unseen ones.
    """
    from safetensors.torch import load_file
    from transformers import AutoTokenizer, LlamaConfig, Qwen2Config

    from rlhf_rewards.models.qwen2_reward import Qwen2ForProcessRewardModel

    tokenizer = AutoTokenizer.from_pretrained(str(init))
    base_config = LlamaConfig.from_pretrained(str(init))
    torch.manual_seed(seed)
    config = Qwen2Config(**_config_fields(tokenizer), use_sliding_window=False)
    config.architectures = ["Qwen2ForProcessRewardModel"]
    if config.hidden_size // config.num_attention_heads != base_config.head_dim:
        raise AssertionError("the Qwen2 head_dim must match the base model's")
    model = Qwen2ForProcessRewardModel(config)
    # A Llama block is a Qwen2 block with zero q/k/v biases: start from the given backbone.
    weights = {k.removeprefix("model."): v for k, v in load_file(str(init / "model.safetensors")).items()
               if k.startswith("model.")}
    state = model.model.state_dict()
    missing = [k for k in state if k not in weights]
    if any(not k.endswith("_proj.bias") for k in missing):
        raise AssertionError(f"unexpected backbone weights missing from {init}: {missing}")
    model.model.load_state_dict({k: weights.get(k, torch.zeros_like(v)) for k, v in state.items()})
    answer_head = torch.nn.Linear(config.hidden_size, 10)
    trainable = torch.nn.ModuleDict({"prm": model, "answer_head": answer_head})
    data = ar.process_examples(seed, cfg.steps * cfg.batch_size, held_out=False)
    rng = random.Random(seed)

    def loss_fn(m: torch.nn.Module, b: dict[str, torch.Tensor]) -> torch.Tensor:
        hidden = m["prm"].model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).last_hidden_state
        logits = m["prm"].score(hidden)
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, 2).float(), b["labels"].reshape(-1),
                                                 ignore_index=-100)
        if answer_loss_weight > 0:
            digits = m["answer_head"](hidden)
            loss = loss + answer_loss_weight * torch.nn.functional.cross_entropy(
                digits.reshape(-1, 10).float(), b["answer_labels"].reshape(-1), ignore_index=-100)
        return loss

    _train_loop(trainable, cfg, lambda step: prm_batch(tokenizer, data[step * cfg.batch_size:(step + 1) * cfg.batch_size], rng),
                loss_fn, "prm")
    _save(model, tokenizer, out)
    return {"trainer": "plain PyTorch loop (TRL 1.x has no PRMTrainer)", "solutions": len(data),
            "initialised_from": f"{init.name} backbone", "answer_loss_weight": answer_loss_weight}


# -------------------------------------------------------------------------------------------------- policy
def policy_example(ex: ar.OutcomeExample, rng: random.Random) -> tuple[str, str]:
    """The policy's SFT target for a question: the correct number (40%), a wrong one (20%) or chatter (40%),
    so GRPO has both the format and the facts to improve."""
    r = rng.random()
    return ex.prompt, " " + (ex.chosen if r < 0.4 else ex.rejected if r < 0.6 else ar.chatter(rng))


def train_policy(out: Path, base: Path, seed: int, cfg: StageConfig) -> dict[str, Any]:
    """Fine-tune the base into the demo's starting policy (loss on the completion and its EOS only)."""
    from transformers import AutoTokenizer, GenerationConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(str(base))
    torch.manual_seed(seed)
    model = LlamaForCausalLM.from_pretrained(str(base), dtype=torch.float32)
    data = ar.outcome_examples(seed + 7, cfg.steps * cfg.batch_size, held_out=False)
    rng = random.Random(seed)

    def batch(step: int) -> dict[str, torch.Tensor]:
        pairs = []
        for ex in data[step * cfg.batch_size:(step + 1) * cfg.batch_size]:
            prompt, completion = policy_example(ex, rng)
            p_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
            pairs.append((p_ids + tokenizer(completion, add_special_tokens=False)["input_ids"], len(p_ids)))
        return _lm_batch(tokenizer, pairs)

    _train_loop(model, cfg, batch, _lm_loss, "policy")
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    model.generation_config = GenerationConfig(eos_token_id=eos, pad_token_id=pad, bos_token_id=eos)
    _save(model, tokenizer, out)
    return {"trainer": "plain PyTorch SFT loop", "examples": len(data), "initialised_from": "base causal LM"}


# ---------------------------------------------------------------------------------------------------- save
def _save(model: torch.nn.Module, tokenizer: Any, out: Path) -> None:
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

Trained by `python recipes/train_reward_models.py --seed {seed}`: a causal LM on the facts, then TRL's
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

Trained by `python recipes/train_reward_models.py --seed {seed}` (`--stages process` retrains only it): a causal
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

Trained by `python recipes/train_reward_models.py --seed {seed}` ({steps} steps of SFT, {seconds:.0f} s).
Sampled answers (temperature 1, as GRPO samples) to questions of the task:

{metrics}
""",
}


def write_report(out: Path, stage: str, seed: int, cfg: StageConfig, seconds: float, info: dict[str, Any],
                 metrics: dict[str, Any]) -> None:
    """``training_report.json`` and the model card ``README.md``."""
    from safetensors import safe_open

    with safe_open(str(out / "model.safetensors"), "pt") as f:
        params = sum(math.prod(f.get_slice(k).get_shape()) for k in f.keys())  # noqa: SIM118
    report = {"stage": stage, "seed": seed, "config": asdict(cfg), "train_seconds": round(seconds, 1),
              "parameters": params, **info, "held_out": metrics}
    (out / "training_report.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    lines = "\n".join(f"- `{k}`: {v}" for k, v in metrics.items())
    (out / "README.md").write_text(
        CARDS[stage].format(params=params, seed=seed, steps=cfg.steps, seconds=seconds, metrics=lines),
        encoding="utf-8",
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seed", type=int, default=0, help="Seed of the data, the weights and the held-out set.")
    parser.add_argument("--output-dir", default=str(ASSETS_DIR / "models"),
                        help="Where the model folders go. Default: rlhf_rewards/assets/models.")
    parser.add_argument("--steps-scale", type=float, default=1.0, help="Multiply every stage's steps (smoke runs).")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads. Default 1: these matrices are too small to gain from more, and "
                             "on a busy machine spinning threads cost a lot.")
    parser.add_argument("--stages", default=",".join(s for s in STAGES if s != "base"),
                        help="Comma-separated shipped models to (re)train: outcome, process, policy. Default: all. "
                             "The base LM is retrained from the seed when outcome or policy is chosen; process "
                             "starts from the outcome RM in --output-dir (trained first when both are chosen).")
    parser.add_argument("--prm-answer-loss-weight", type=float, default=PRM_ANSWER_LOSS_WEIGHT,
                        help=f"Weight of the PRM's auxiliary correct-result loss. Default {PRM_ANSWER_LOSS_WEIGHT}.")
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
        parser.error(f"--stages process starts from the outcome RM, but {outcome_dir} has none; add 'outcome'.")
    run = [s for s in STAGES if s in chosen or (s == "base" and {"outcome", "policy"} & set(chosen))]
    start = time.perf_counter()
    summary: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer_dir, base_dir = Path(tmp) / "tokenizer", Path(tmp) / "base"
        trainers = {"outcome": train_outcome_rm, "policy": train_policy,
                    "process": lambda out, _base, seed, cfg: train_prm(out, outcome_dir, seed, cfg,
                                                                     args.prm_answer_loss_weight)}
        evaluators = {"outcome": evaluate_outcome_rm, "process": evaluate_prm, "policy": evaluate_policy}
        base_seconds = 0.0
        for stage in run:
            default = DEFAULT_STAGES[stage]
            steps = max(1, round(default.steps * args.steps_scale))
            cfg = StageConfig(steps, default.batch_size, default.learning_rate, min(default.warmup_steps, steps // 10))
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
            info["base_model"] = {"steps": DEFAULT_STAGES["base"].steps, "train_seconds": round(base_seconds, 1)}
            if stage == "process":
                # The PRM's lineage is the outcome RM (and its base), whichever run trained them.
                upstream = json.loads((outcome_dir / "training_report.json").read_text(encoding="utf-8"))
                info["outcome_model"] = {"steps": upstream["config"]["steps"],
                                         "train_seconds": upstream["train_seconds"]}
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
