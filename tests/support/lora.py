"""Tiny peft LoRA adapters for tests and demos, made locally on top of a tiny checkpoint (test tooling: not
part of :mod:`rlhf_rewards.lora`).

:func:`build_adapter` trains nothing: it gives every LoRA weight (``lora_B`` included, so the adapter is
never a no-op) and every ``modules_to_save`` copy random non-zero values, and saves the adapter with
peft's ``save_pretrained``. :func:`build_merged` writes the reference: the same adapter merged into the base
model with peft's ``merge_and_unload``, as a plain checkpoint any engine can load without LoRA.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import torch


def _base_model(base: str | os.PathLike[str]) -> torch.nn.Module:
    # The engine's own loader, so native classes (Qwen2 RM/PRM, InternLM2) load as they are served.
    from rlhf_rewards.models.loader import load_pooling_model

    return load_pooling_model(str(base), dtype=torch.float32, device=torch.device("cpu")).hf_model


def build_adapter(
    base: str | os.PathLike[str],
    path: str | os.PathLike[str],
    *,
    seed: int = 0,
    std: float = 0.1,
    **lora_config: Any,
) -> Path:
    """Save a random LoRA adapter for checkpoint ``base`` in ``path``.

    ``lora_config`` are :class:`peft.LoraConfig` fields (``r``, ``target_modules``, ``modules_to_save``,
    ``task_type``, ...). LoRA weights are ``N(0, std)``; saved module copies are the base weights plus
    ``N(0, std)`` noise.
    """
    from peft import LoraConfig, get_peft_model

    lora_config.setdefault("r", 4)
    lora_config.setdefault("lora_alpha", lora_config["r"])  # scaling 1
    model = get_peft_model(_base_model(base), LoraConfig(**lora_config))
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".lora_" in name:
                p.copy_(std * torch.randn(p.shape, generator=gen))
            elif ".modules_to_save." in name:
                p.add_(std * torch.randn(p.shape, generator=gen))
    path = Path(path)
    model.save_pretrained(str(path))
    return path


def build_merged(
    base: str | os.PathLike[str], adapter: str | os.PathLike[str], path: str | os.PathLike[str]
) -> Path:
    """Save ``base`` with ``adapter`` merged in (peft's ``merge_and_unload``) in ``path``, tokenizer included."""
    from peft import PeftModel

    merged = PeftModel.from_pretrained(_base_model(base), str(adapter)).merge_and_unload()
    path = Path(path)
    merged.save_pretrained(str(path))
    for name in os.listdir(base):
        if name.startswith(("tokenizer", "special_tokens", "chat_template", "vocab", "merges")):
            shutil.copy(Path(base) / name, path / name)
    return path


__all__ = ["build_adapter", "build_merged"]
