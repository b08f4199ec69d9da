"""What the engine is checked against: transformers' own forward of the same checkpoint, the engine's raw scores
laid out the same way, and the tolerances that compare them (see the package docstring)."""

from __future__ import annotations

import contextlib
import functools
import gc
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

#: float32: engine vs transformers, max abs diff.
FP32_ATOL = 1e-4
#: bfloat16/float16: largest error against the float32 forward, as a fraction of the largest float32 score ...
HALF_REL_TOL = 0.05
#: ... or, if larger, this many times transformers' own error in that dtype, plus HALF_SLACK of that score.
HALF_VS_HF_FACTOR = 2.0
HALF_SLACK = 0.01
DTYPES = ("float32", "bfloat16", "float16")


# ---------------------------------------------------------------------- device
def free(device: torch.device) -> None:
    """Collect garbage and give cached CUDA memory back, so the next model starts from a clean device."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()


def sync(device: torch.device) -> None:
    """Wait for the device's queued work, so a timer stops when the work is done."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ---------------------------------------------------------------------- scores
def load_reference(architecture: str, path: Path, dtype: str, device: torch.device) -> torch.nn.Module:
    """transformers' own model class from ``from_pretrained`` in ``dtype`` (what a user would run)."""
    from tests.support.checkpoints import model_class

    model = model_class(architecture).from_pretrained(str(path), dtype=getattr(torch, dtype))
    return model.to(device).eval()


def reference_scores(
    model: torch.nn.Module, tok: Any, texts: list[str], kind: str, step_id: int
) -> torch.Tensor:
    """transformers' forward, one unpadded text at a time: the raw score (RM) or both logits at every step tag."""
    device = next(model.parameters()).device
    out = []
    with torch.inference_mode():
        for text in texts:
            ids = tok(text, add_special_tokens=False, return_tensors="pt")["input_ids"].to(device)
            logits = model(input_ids=ids).logits
            if kind == "rm":
                out.append(logits[0, :1].float())
            else:
                out.append(logits[0][ids[0] == step_id].float().flatten())
    return torch.cat(out).cpu()


def per_text(llm: Any, texts: list[str], kind: str) -> list[torch.Tensor]:
    """The engine's raw scores of each text (one tensor per text, on the CPU): the score (RM) or both logits at
    every step tag (PRM)."""
    from rlhf_rewards import PoolingParams

    task = "classify" if kind == "rm" else "token_classify"
    outs = llm.encode(
        texts,
        PoolingParams(use_activation=False),
        pooling_task=task,
        use_tqdm=False,
        add_special_tokens=False,
    )
    return [(o.outputs.data[:1] if kind == "rm" else o.outputs.data).float().cpu() for o in outs]


def engine_scores(llm: Any, texts: list[str], kind: str) -> torch.Tensor:
    """The engine's raw scores, laid out as :func:`reference_scores`."""
    return torch.cat([t.flatten() for t in per_text(llm, texts, kind)])


def worker_scores(worker: Any, texts: list[str], kind: str) -> torch.Tensor:
    """As :func:`engine_scores`, through a ``ColocatedWorker`` (its tokenizer adds no special tokens here)."""
    from rlhf_rewards import PoolingParams

    task = "classify" if kind == "rm" else "token_classify"
    outs = worker.encode(texts, PoolingParams(use_activation=False), pooling_task=task)
    if kind == "rm":
        return torch.cat([o.outputs.data[:1].float() for o in outs]).cpu()
    return torch.cat([o.outputs.data.float().flatten() for o in outs]).cpu()


def engine_step_probs(llm: Any, texts: list[str]) -> torch.Tensor:
    """The PRM's step rewards as the model card reports them: softmax column 1 at every step tag."""
    outs = llm.encode(texts, pooling_task="token_classify", use_tqdm=False, add_special_tokens=False)
    return torch.cat([o.outputs.data[:, 1].float() for o in outs]).cpu()


@contextlib.contextmanager
def varlen_setting(on: bool) -> Iterator[list[int]]:
    """``RLHF_REWARDS_VARLEN`` unset (on) or ``0`` (off), counting calls of the varlen kernel meanwhile."""
    from rlhf_rewards.engine.attention import varlen as varlen_attention

    saved_env = os.environ.pop("RLHF_REWARDS_VARLEN", None)
    if not on:
        os.environ["RLHF_REWARDS_VARLEN"] = "0"
    calls = [0]
    original = varlen_attention.KERNEL
    if original is not None:

        @functools.wraps(original)  # keeps the signature, which the engine inspects
        def counted(*args: Any, **kwargs: Any) -> Any:
            calls[0] += 1
            return original(*args, **kwargs)

        varlen_attention.KERNEL = counted
    try:
        yield calls
    finally:
        varlen_attention.KERNEL = original
        os.environ.pop("RLHF_REWARDS_VARLEN", None)
        if saved_env is not None:
            os.environ["RLHF_REWARDS_VARLEN"] = saved_env


# ---------------------------------------------------------------------- tolerances
def max_abs_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    """Largest absolute difference (infinite when the shapes differ)."""
    if a.shape != b.shape:
        return float("inf")
    return float((a.float() - b.float()).abs().max()) if a.numel() else 0.0


def half_tolerance(ref32: torch.Tensor, hf_half: torch.Tensor | None) -> tuple[float, str]:
    """Allowed error of a half-precision score against the float32 forward (see the package docstring)."""
    scale = float(ref32.abs().max())
    bound = HALF_REL_TOL * scale
    if hf_half is None:
        return bound, f"{HALF_REL_TOL:.0%} of max|fp32 score| {scale:.3g}"
    hf_err = max_abs_diff(hf_half, ref32)
    if not hf_err < float("inf"):  # transformers overflowed in this dtype: only the fixed bound applies
        return bound, f"{HALF_REL_TOL:.0%} of max|fp32 score| {scale:.3g} (transformers' own error {hf_err})"
    return max(bound, HALF_VS_HF_FACTOR * hf_err + HALF_SLACK * scale), (
        f"max({HALF_REL_TOL:.0%} of max|fp32 score| {scale:.3g}, {HALF_VS_HF_FACTOR:g} x transformers' own error "
        f"{hf_err:.2e} + {HALF_SLACK:.0%})"
    )


def engine_tolerance(dtype: str, reference: torch.Tensor) -> float:
    """Allowed error between two engine runs (or a baseline and the engine) on the same weights in ``dtype``:
    1e-4 in float32, else 5% of the largest reference score."""
    return FP32_ATOL if dtype == "float32" else HALF_REL_TOL * float(reference.abs().max())
