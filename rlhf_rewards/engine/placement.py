"""Resolving ``device=`` and ``dtype=`` arguments, with errors that list the accepted values."""

from __future__ import annotations

from typing import Any

import torch

_DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "float": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
    "half": torch.float16,
}


def resolve_device(device: str | torch.device | int | None) -> torch.device:
    """``None`` picks CUDA when available, else CPU; an unknown or unavailable device is a ``ValueError``."""
    if device is None:
        return (
            torch.device("cuda", torch.cuda.current_device())
            if torch.cuda.is_available()
            else torch.device("cpu")
        )
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(
            f"device={device!r} is not a valid torch device (e.g. 'cpu', 'cuda', 'cuda:1'): {exc}"
        ) from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            f"device={device!r} was requested but CUDA is not available on this machine; use device='cpu'."
        )
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ValueError(f"device={device!r}: this machine has {torch.cuda.device_count()} CUDA device(s).")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device={device!r} was requested but MPS is not available on this machine.")
    if dev.type not in ("cpu", "cuda", "mps", "xpu", "npu", "hpu"):
        raise ValueError(f"device={device!r} is not supported; use 'cpu', 'cuda[:N]', 'mps' or 'xpu'.")
    return dev


def resolve_dtype(dtype: str | torch.dtype | None, config: Any, device: torch.device) -> torch.dtype:
    """``"auto"``: the checkpoint's dtype on accelerators, float32 on CPU (bf16 matmuls are slow on most CPUs)."""
    if isinstance(dtype, torch.dtype):
        if dtype not in (torch.float32, torch.bfloat16, torch.float16):
            raise ValueError(
                f"dtype={dtype} is not supported; choose one of {sorted(set(_DTYPES))} or 'auto'."
            )
        return dtype
    if dtype is None or dtype == "auto":
        if device.type == "cpu":
            return torch.float32
        checkpoint = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None)
        if isinstance(checkpoint, str):
            checkpoint = _DTYPES.get(checkpoint)
        return checkpoint if checkpoint in (torch.bfloat16, torch.float16, torch.float32) else torch.bfloat16
    if isinstance(dtype, str) and dtype.lower() in _DTYPES:
        return _DTYPES[dtype.lower()]
    raise ValueError(
        f"dtype={dtype!r} is not supported; choose one of ['auto', {', '.join(repr(k) for k in _DTYPES)}]."
    )
