"""Baselines, run on the very model object the engine uses.

- ``trl_builtin``: TRL 1.16's own ``GRPOTrainer._calculate_rewards`` (called on a minimal trainer stub), i.e.
  tokenize ``prompt + completion`` with ``padding=True, padding_side="right", add_special_tokens=False``,
  one forward over the whole batch, ``logits[:, 0]``. Falls back to a line-for-line copy when TRL is absent.
- ``hf_loop``: ``AutoModelForSequenceClassification`` in fixed batches of 8, padded, in input order.
- ``unpadded_loop``: one forward per text, no padding at all.
- ``prm_model_card``: Qwen2.5-Math-PRM's model card: one forward per sample, then ``make_step_rewards``.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import torch

from tests.support.references import make_step_rewards


def trl_builtin(
    model: torch.nn.Module, tokenizer: Any, prompts: list[str], completions: list[str]
) -> torch.Tensor:
    """Rewards exactly as TRL's ``GRPOTrainer`` computes them for ``reward_funcs=<model path>``."""
    try:
        from trl import GRPOTrainer
    except Exception:  # pragma: no cover - TRL is an optional dependency
        return _trl_replica(model, tokenizer, prompts, completions)
    stub = object.__new__(GRPOTrainer)
    device = next(model.parameters()).device
    stub.__dict__.update(
        accelerator=SimpleNamespace(device=device, is_main_process=True),
        args=SimpleNamespace(device=device, report_to=[]),
        is_deepspeed_enabled=False,
        reward_funcs=[model],
        reward_processing_classes=[tokenizer],
        reward_func_names=["reward_model"],
        state=SimpleNamespace(global_step=0),
        _log_completion_extra=lambda *a, **k: None,
        _log_metric=lambda *a, **k: None,
        environments=None,
        chat_template_kwargs={},
    )
    inputs = [{"prompt": p, "completion": c} for p, c in zip(prompts, completions, strict=True)]
    rewards = GRPOTrainer._calculate_rewards(stub, inputs, prompts, completions, [None] * len(prompts))
    return rewards[:, 0].cpu()


def _trl_replica(model, tokenizer, prompts, completions) -> torch.Tensor:
    texts = [p + c for p, c in zip(prompts, completions, strict=True)]
    inputs = tokenizer(
        text=texts, return_tensors="pt", padding=True, padding_side="right", add_special_tokens=False
    )
    with torch.inference_mode():
        return model(**inputs).logits[:, 0].float().cpu()


def hf_loop(model: torch.nn.Module, tokenizer: Any, texts: list[str], batch_size: int = 8) -> torch.Tensor:
    """The plain transformers way: fixed batches of 8 in input order, padded to each batch's longest."""
    out = []
    with torch.inference_mode():
        for i in range(0, len(texts), batch_size):
            inputs = tokenizer(
                texts[i : i + batch_size], return_tensors="pt", padding=True, add_special_tokens=False
            )
            out.append(model(**inputs).logits[:, 0].float())
    return torch.cat(out).cpu()


def unpadded_loop(model: torch.nn.Module, tokenizer: Any, texts: list[str]) -> torch.Tensor:
    """One forward per text, no padding at all (the floor the engine must beat)."""
    ids = tokenizer(texts, add_special_tokens=False)["input_ids"]
    out = []
    with torch.inference_mode():
        for x in ids:
            out.append(model(input_ids=torch.tensor([x])).logits[0, 0].float())
    return torch.stack(out).cpu()


def prm_model_card(
    model: torch.nn.Module, tokenizer: Any, texts: list[str], step_tag: str
) -> list[list[float]]:
    """The PRM card's loop: per sample, ``model(input_ids)`` then ``make_step_rewards`` at the step tags."""
    step_sep_id = tokenizer.encode(step_tag, add_special_tokens=False)[0]
    rewards = []
    with torch.inference_mode():
        for text in texts:
            input_ids = tokenizer.encode(text, return_tensors="pt", add_special_tokens=False)
            outputs = model(input_ids=input_ids)
            token_masks = input_ids == step_sep_id
            rewards.extend(make_step_rewards(outputs[0], token_masks))
    return rewards


__all__ = ["hf_loop", "make_step_rewards", "prm_model_card", "trl_builtin", "unpadded_loop"]
