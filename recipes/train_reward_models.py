"""Train the reward models shipped with rlhf-rewards (and the demo's tiny policy) from generated arithmetic data.

Everything is generated from ``--seed`` by :mod:`rlhf_rewards.assets.arithmetic`, trained on the CPU, evaluated
on operand pairs the models never saw, and saved under ``rlhf_rewards/assets/models/``:

- ``arith-outcome-rm``: ``Qwen3ForSequenceClassification`` (1 label) trained with TRL's ``RewardTrainer``
  (Bradley-Terry loss) on ``chosen`` = the correct answer, ``rejected`` = a near miss or off-format chatter.
- ``arith-prm``: ``Qwen2ForProcessRewardModel`` (Qwen2.5-Math-PRM layout, 2 labels read at each ``<extra_0>``)
  trained with a token-classification loss at the step tags. TRL 1.x removed ``PRMTrainer`` (it is not in
  ``trl.experimental`` either), so this is a plain PyTorch loop.
- ``arith-policy``: a tiny ``Qwen3ForCausalLM`` fine-tuned to answer ``What is A + B?`` half the time with a number
  and half the time with chatter: the starting point of the GRPO demo (``recipes/demo.py``), where the
  outcome RM teaches it to answer with numbers.

All three share one byte-level BPE tokenizer whose digits are single tokens, with a ChatML template. The
models are a few MB of float32 safetensors each. Run (about 6 minutes on 2 CPU cores)::

    python recipes/train_reward_models.py              # all stages, seed 0
    python recipes/train_reward_models.py --only process   # one stage

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

#: Size of every model: about 0.8 M parameters (3 MB in float32).
DIMS = {
    "hidden_size": 128,
    "intermediate_size": 384,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 256,
    "rms_norm_eps": 1e-6,
    "rope_theta": 10000.0,
    "tie_word_embeddings": False,
}
HEAD_DIM = 32
STAGES = ("outcome", "process", "policy")


@dataclass
class StageConfig:
    """Optimisation settings of one stage (validated: every field must be positive)."""

    steps: int
    batch_size: int
    learning_rate: float
    warmup_steps: int = 50

    def __post_init__(self) -> None:
        for name, value in asdict(self).items():
            if value <= 0 and name != "warmup_steps":
                raise ValueError(f"{name} must be positive, got {value}.")


DEFAULT_STAGES = {
    "outcome": StageConfig(steps=1500, batch_size=64, learning_rate=2e-3),
    "process": StageConfig(steps=1200, batch_size=32, learning_rate=2e-3),
    "policy": StageConfig(steps=600, batch_size=64, learning_rate=2e-3),
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


def _render(tokenizer: Any, prompt: str, completion: str, rng: random.Random) -> list[int]:
    """Token ids of ``prompt`` + ``completion`` in one of the layouts ``RewardFunction`` sends: standard text
    (completion after a space, or glued on) or the ChatML conversation."""
    r = rng.random()
    if r < 0.3:
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}, {"role": "assistant", "content": completion}], tokenize=False
        )
    else:
        text = prompt + rng.choice((" ", " ", " ", "", "\n", "\n\n")) + completion
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def _lr_lambda(cfg: StageConfig) -> Callable[[int], float]:
    def f(step: int) -> float:
        if step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
        return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return f


# ----------------------------------------------------------------------------------------------- outcome RM
def outcome_pairs(tokenizer: Any, seed: int, n: int) -> list[dict[str, list[int]]]:
    """``n`` tokenized preference pairs from the training split: 75% correct vs near miss, 15% correct vs
    chatter, 10% near miss vs chatter (a number beats chatter even when it is wrong)."""
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
        rows.append({"chosen_ids": _render(tokenizer, ex.prompt, chosen, rng),
                     "rejected_ids": _render(tokenizer, ex.prompt, rejected, rng)})
    return rows


def train_outcome_rm(out: Path, tokenizer_dir: Path, seed: int, cfg: StageConfig) -> dict[str, Any]:
    """Train the outcome RM with TRL's ``RewardTrainer`` and save it to ``out``."""
    from datasets import Dataset
    from transformers import AutoTokenizer, Qwen3Config, Qwen3ForSequenceClassification
    from trl import RewardConfig, RewardTrainer

    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    torch.manual_seed(seed)
    model = Qwen3ForSequenceClassification(Qwen3Config(**_config_fields(tokenizer), head_dim=HEAD_DIM, num_labels=1))
    # Pre-tokenized pairs: RewardTrainer would append EOS to standard text, but RewardFunction scores
    # prompt + completion as it is, so the model is trained on exactly the ids it will score.
    train = Dataset.from_list(outcome_pairs(tokenizer, seed, cfg.steps * cfg.batch_size))
    with tempfile.TemporaryDirectory() as tmp:
        args = RewardConfig(
            output_dir=tmp, max_steps=cfg.steps, per_device_train_batch_size=cfg.batch_size,
            learning_rate=cfg.learning_rate, lr_scheduler_type="cosine", warmup_steps=cfg.warmup_steps,
            weight_decay=0.0, logging_steps=100, save_strategy="no", report_to="none", use_cpu=True,
            bf16=False, gradient_checkpointing=False, seed=seed, data_seed=seed, dataloader_num_workers=0,
            center_rewards_coefficient=0.01, disable_tqdm=not sys.stderr.isatty(),
        )
        trainer = RewardTrainer(model=model, args=args, train_dataset=train, processing_class=tokenizer)
        trainer.train()
    model = trainer.model
    model.config.architectures = ["Qwen3ForSequenceClassification"]
    _save(model, tokenizer, out)
    return {"trainer": "trl.RewardTrainer", "pairs": len(train)}


# ----------------------------------------------------------------------------------------------------- PRM
def prm_batch(tokenizer: Any, examples: Sequence[ar.ProcessExample], rng: random.Random) -> dict[str, torch.Tensor]:
    """Padded ids, attention mask and labels (1 right / 0 wrong at each ``<extra_0>``, -100 elsewhere)."""
    tag_id = tokenizer.convert_tokens_to_ids(ar.STEP_TAG)
    seqs, labels = [], []
    for ex in examples:
        ids = _render(tokenizer, ex.prompt, ex.tagged_completion(), rng)
        lab = [-100] * len(ids)
        tags = [i for i, t in enumerate(ids) if t == tag_id]
        assert len(tags) == len(ex.steps), (tags, ex)
        for pos, ok in zip(tags, ex.labels, strict=True):
            lab[pos] = int(ok)
        seqs.append(ids)
        labels.append(lab)
    width = max(len(s) for s in seqs)
    pad = tokenizer.pad_token_id
    return {
        "input_ids": torch.tensor([s + [pad] * (width - len(s)) for s in seqs]),
        "attention_mask": torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in seqs]),
        "labels": torch.tensor([lab + [-100] * (width - len(lab)) for lab in labels]),
    }


def train_prm(out: Path, tokenizer_dir: Path, seed: int, cfg: StageConfig) -> dict[str, Any]:
    """Train the PRM (cross-entropy over 2 labels at the step tags) and save it to ``out``."""
    from transformers import AutoTokenizer, Qwen2Config

    from rlhf_rewards.models.qwen2_reward import Qwen2ForProcessRewardModel

    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    torch.manual_seed(seed)
    config = Qwen2Config(**_config_fields(tokenizer), use_sliding_window=False)
    config.architectures = ["Qwen2ForProcessRewardModel"]
    model = Qwen2ForProcessRewardModel(config)
    data = ar.process_examples(seed, cfg.steps * cfg.batch_size, held_out=False)
    rng = random.Random(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.learning_rate, weight_decay=0.0, betas=(0.9, 0.98))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(cfg))
    model.train()
    log_every = max(1, cfg.steps // 10)
    running = 0.0
    for step in range(cfg.steps):
        batch = prm_batch(tokenizer, data[step * cfg.batch_size:(step + 1) * cfg.batch_size], rng)
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, 2).float(), batch["labels"].reshape(-1),
                                                 ignore_index=-100)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        running += loss.item()
        if (step + 1) % log_every == 0:
            print(f"  prm step {step + 1}/{cfg.steps}: loss {running / log_every:.4f}", flush=True)
            running = 0.0
    model.eval()
    _save(model, tokenizer, out)
    return {"trainer": "plain PyTorch loop (TRL 1.x has no PRMTrainer)", "chains": len(data)}


# -------------------------------------------------------------------------------------------------- policy
def policy_example(ex: ar.OutcomeExample, rng: random.Random) -> tuple[str, str]:
    """The policy's SFT target for a question: half the time the correct number, half the time chatter."""
    return ex.prompt, " " + (ex.chosen if rng.random() < 0.5 else ar.chatter(rng))


def train_policy(out: Path, tokenizer_dir: Path, seed: int, cfg: StageConfig) -> dict[str, Any]:
    """Fine-tune the demo's tiny causal LM (loss on the completion and its EOS only) and save it to ``out``."""
    from transformers import AutoTokenizer, GenerationConfig, Qwen3Config, Qwen3ForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    torch.manual_seed(seed)
    model = Qwen3ForCausalLM(Qwen3Config(**_config_fields(tokenizer), head_dim=HEAD_DIM))
    data = ar.outcome_examples(seed + 7, cfg.steps * cfg.batch_size, held_out=False)
    rng = random.Random(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.learning_rate, weight_decay=0.0, betas=(0.9, 0.98))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(cfg))
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    log_every = max(1, cfg.steps // 10)
    running = 0.0
    model.train()
    for step in range(cfg.steps):
        seqs, labels = [], []
        for ex in data[step * cfg.batch_size:(step + 1) * cfg.batch_size]:
            prompt, completion = policy_example(ex, rng)
            p_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
            c_ids = tokenizer(completion, add_special_tokens=False)["input_ids"] + [eos]
            seqs.append(p_ids + c_ids)
            labels.append([-100] * len(p_ids) + c_ids)
        width = max(len(s) for s in seqs)
        input_ids = torch.tensor([s + [pad] * (width - len(s)) for s in seqs])
        mask = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in seqs])
        lab = torch.tensor([x + [-100] * (width - len(x)) for x in labels])
        loss = model(input_ids=input_ids, attention_mask=mask, labels=lab).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        running += loss.item()
        if (step + 1) % log_every == 0:
            print(f"  policy step {step + 1}/{cfg.steps}: loss {running / log_every:.4f}", flush=True)
            running = 0.0
    model.eval()
    model.generation_config = GenerationConfig(eos_token_id=eos, pad_token_id=pad, bos_token_id=eos)
    _save(model, tokenizer, out)
    return {"trainer": "plain PyTorch SFT loop", "examples": len(data)}


# ---------------------------------------------------------------------------------------------------- save
def _save(model: torch.nn.Module, tokenizer: Any, out: Path) -> None:
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)


CARDS = {
    "outcome": """# arith-outcome-rm

A tiny outcome reward model shipped with rlhf-rewards (`Qwen3ForSequenceClassification`, 1 label,
{params:,} parameters, float32). It scores `What is A + B?` / `What is A - B?` (A, B in 0..99) followed by an
answer: the correct number scores higher than a near miss (off by 1, 2, 9, 10 or 11, a carry error, swapped or
changed digits), and any number scores higher than chatter with no number. Raw logit, no sigmoid.

Trained by `python recipes/train_reward_models.py --seed {seed}` with TRL's `RewardTrainer` ({steps} steps,
{seconds:.0f} s on 2 CPU cores). Held-out (operand pairs never seen in training, regenerated from the seed):

{metrics}
""",
    "process": """# arith-prm

A tiny process reward model shipped with rlhf-rewards in the Qwen2.5-Math-PRM layout
(`Qwen2ForProcessRewardModel`, {params:,} parameters, float32): every step of a solution is followed by
`<extra_0>` and `softmax(logits)[1]` at the tag is P(step is right). Steps are `x + y = z` / `x - y = z`
(numbers in 0..99), one per paragraph; `RewardFunction` splits on blank lines and inserts the tags.

Trained by `python recipes/train_reward_models.py --seed {seed}` (token-classification loss at the step tags,
{steps} steps, {seconds:.0f} s on 2 CPU cores). Held-out (steps whose operand pairs never appear in training):

{metrics}
""",
    "policy": """# arith-policy

The starting policy of the rlhf-rewards GRPO demo (`Qwen3ForCausalLM`, {params:,} parameters): it answers
`What is A + B?` with a number about half the time and with chatter the other half. GRPO with the shipped
outcome reward model (`bash scripts/demo.sh`) teaches it to answer with numbers.

Trained by `python recipes/train_reward_models.py --seed {seed}` ({steps} steps of SFT, {seconds:.0f} s).
Held-out behaviour (greedy decoding is not used by the demo; these are sampled answers):

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
    parser.add_argument("--only", choices=STAGES, action="append", default=None, help="Train only this stage.")
    parser.add_argument("--steps-scale", type=float, default=1.0, help="Multiply every stage's steps (smoke runs).")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads. Default: torch's choice.")
    args = parser.parse_args(argv)
    if args.steps_scale <= 0:
        parser.error(f"--steps-scale must be positive, got {args.steps_scale}")
    if args.threads:
        torch.set_num_threads(args.threads)
    root = Path(args.output_dir)
    start = time.perf_counter()
    # The tokenizer is rebuilt every run (deterministic, a second): one stage alone gets the same vocabulary.
    tmp = tempfile.TemporaryDirectory()
    tokenizer_dir = Path(tmp.name)
    build_tokenizer(tokenizer_dir, args.seed)
    trainers = {"outcome": train_outcome_rm, "process": train_prm, "policy": train_policy}
    evaluators = {"outcome": evaluate_outcome_rm, "process": evaluate_prm, "policy": evaluate_policy}
    summary = {}
    for stage in args.only or STAGES:
        base = DEFAULT_STAGES[stage]
        cfg = StageConfig(max(1, round(base.steps * args.steps_scale)), base.batch_size, base.learning_rate,
                          min(base.warmup_steps, max(1, round(base.steps * args.steps_scale) // 10)))
        out = root / DEFAULT_MODELS[stage]
        print(f"[{stage}] training {out.name}: {cfg}", flush=True)
        t0 = time.perf_counter()
        info = trainers[stage](out, tokenizer_dir, args.seed, cfg)
        seconds = time.perf_counter() - t0
        metrics = evaluators[stage](str(out), seed=args.seed)
        write_report(out, stage, args.seed, cfg, seconds, info, metrics)
        summary[stage] = metrics
        print(f"[{stage}] {seconds:.0f} s; held-out: {json.dumps(metrics)}", flush=True)
    tmp.cleanup()
    print(f"done in {time.perf_counter() - start:.0f} s: {json.dumps(summary)}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
