"""Training of the shipped models, one function per stage: the base causal LM, the outcome RM (TRL's
``RewardTrainer``), the PRM and the demo's policy (plain PyTorch loops)."""

from __future__ import annotations

import math
import random
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from rlhf_rewards.assets import arithmetic as ar

from .data import lm_batch, outcome_pairs, policy_example, prm_batch, render
from .export import save

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


def config_fields(tokenizer: Any) -> dict[str, Any]:
    """Model config fields: :data:`DIMS` plus the tokenizer's vocabulary size and special ids."""
    return {
        **DIMS,
        "vocab_size": len(tokenizer),
        "pad_token_id": tokenizer.pad_token_id,
        "bos_token_id": tokenizer.eos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
    }


def lr_lambda(cfg: StageConfig) -> Callable[[int], float]:
    """Linear warmup over ``cfg.warmup_steps``, then cosine decay to 5% of the peak."""

    def f(step: int) -> float:
        if step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
        return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return f


def train_loop(
    model: torch.nn.Module,
    cfg: StageConfig,
    batch: Callable[[int], dict[str, torch.Tensor]],
    loss_fn: Callable[[torch.nn.Module, dict[str, torch.Tensor]], torch.Tensor],
    name: str,
) -> None:
    """AdamW with warmup and cosine decay over ``cfg.steps`` batches from ``batch(step)``."""
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.learning_rate, weight_decay=0.0, betas=(0.9, 0.98))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(cfg))
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


def lm_loss(model: torch.nn.Module, b: dict[str, torch.Tensor]) -> torch.Tensor:
    """The causal-LM loss of a :func:`lm_batch`."""
    return model(input_ids=b["input_ids"], attention_mask=b["attention_mask"], labels=b["labels"]).loss


def train_base(out: Path, tokenizer_dir: Path, seed: int, cfg: StageConfig) -> dict[str, Any]:
    """The shared starting point: a causal LM that learns the facts from correct answers and worked steps."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    torch.manual_seed(seed)
    model = LlamaForCausalLM(LlamaConfig(**config_fields(tokenizer), head_dim=HEAD_DIM))
    rng = random.Random(seed)
    table = ar.facts()

    def batch(step: int) -> dict[str, torch.Tensor]:
        pairs = []
        for _ in range(cfg.batch_size):
            if rng.random() < 0.75:
                a, op, b = rng.choice(table)
                pairs.append(render(tokenizer, ar.question(a, op, b), str(ar.apply(a, op, b)), rng))
            else:
                (ex,) = ar.process_examples(rng.randrange(1 << 30), 1, held_out=False, error_rate=0.0)
                pairs.append(render(tokenizer, ex.prompt, ex.completion(), rng))
        return lm_batch(tokenizer, pairs)

    train_loop(model, cfg, batch, lm_loss, "base")
    save(model, tokenizer, out)
    return {"trainer": "plain PyTorch causal-LM loop"}


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
            output_dir=tmp,
            max_steps=cfg.steps,
            per_device_train_batch_size=cfg.batch_size,
            learning_rate=cfg.learning_rate,
            lr_scheduler_type="cosine",
            warmup_steps=cfg.warmup_steps,
            weight_decay=0.0,
            logging_steps=max(1, cfg.steps // 5),
            save_strategy="no",
            report_to="none",
            use_cpu=True,
            bf16=False,
            gradient_checkpointing=False,
            seed=seed,
            data_seed=seed,
            dataloader_num_workers=0,
            center_rewards_coefficient=0.01,
            disable_tqdm=True,
        )
        trainer = RewardTrainer(model=model, args=args, train_dataset=train, processing_class=tokenizer)
        trainer.train()
    model = trainer.model.eval()
    model.config.architectures = ["LlamaForSequenceClassification"]
    save(model, tokenizer, out)
    return {"trainer": "trl.RewardTrainer", "pairs": len(train), "initialised_from": "base causal LM"}


def train_prm(
    out: Path, init: Path, seed: int, cfg: StageConfig, answer_loss_weight: float = PRM_ANSWER_LOSS_WEIGHT
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
    config = Qwen2Config(**config_fields(tokenizer), use_sliding_window=False)
    config.architectures = ["Qwen2ForProcessRewardModel"]
    if config.hidden_size // config.num_attention_heads != base_config.head_dim:
        raise AssertionError("the Qwen2 head_dim must match the base model's")
    model = Qwen2ForProcessRewardModel(config)
    # A Llama block is a Qwen2 block with zero q/k/v biases: start from the given backbone.
    weights = {
        k.removeprefix("model."): v
        for k, v in load_file(str(init / "model.safetensors")).items()
        if k.startswith("model.")
    }
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
        hidden = (
            m["prm"].model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).last_hidden_state
        )
        logits = m["prm"].score(hidden)
        loss = torch.nn.functional.cross_entropy(
            logits.reshape(-1, 2).float(), b["labels"].reshape(-1), ignore_index=-100
        )
        if answer_loss_weight > 0:
            digits = m["answer_head"](hidden)
            loss = loss + answer_loss_weight * torch.nn.functional.cross_entropy(
                digits.reshape(-1, 10).float(), b["answer_labels"].reshape(-1), ignore_index=-100
            )
        return loss

    train_loop(
        trainable,
        cfg,
        lambda step: prm_batch(tokenizer, data[step * cfg.batch_size : (step + 1) * cfg.batch_size], rng),
        loss_fn,
        "prm",
    )
    save(model, tokenizer, out)
    return {
        "trainer": "plain PyTorch loop (TRL 1.x has no PRMTrainer)",
        "solutions": len(data),
        "initialised_from": f"{init.name} backbone",
        "answer_loss_weight": answer_loss_weight,
    }


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
        for ex in data[step * cfg.batch_size : (step + 1) * cfg.batch_size]:
            prompt, completion = policy_example(ex, rng)
            p_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
            pairs.append((p_ids + tokenizer(completion, add_special_tokens=False)["input_ids"], len(p_ids)))
        return lm_batch(tokenizer, pairs)

    train_loop(model, cfg, batch, lm_loss, "policy")
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    model.generation_config = GenerationConfig(eos_token_id=eos, pad_token_id=pad, bos_token_id=eos)
    save(model, tokenizer, out)
    return {"trainer": "plain PyTorch SFT loop", "examples": len(data), "initialised_from": "base causal LM"}
