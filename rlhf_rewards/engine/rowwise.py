"""The row-wise pieces of a Llama-family decoder layer (RMSNorm, RoPE, the gated MLP), computed in place.

The families' modules write every step of a formula to a fresh tensor. On a CPU, with a few hundred rows per
call (one sample per request, the cross-call cache holding the prompt), the element-wise passes and the page
faults of those fresh tensors cost as much as a fifth of a forward. The functions here compute the same
formulas writing into tensors they own (RoPE also loses a pass: the sign flip moves onto the sine table, once
per forward; Qwen3's per-head q/k norms run as one pass over the queries and keys together), and fall back
to the module itself for any class not listed; projections go through
:func:`~rlhf_rewards.engine.packed_linear.project` (the module, or its packed weight), so peft's adapters
still apply.

Numbers: the same operations in the same precision and order, so the results are the modules' bit for bit
(RoPE's ``rotate_half(x) * sin`` is ``swap_halves(x) * signed_sin``, negation being exact). Every function is
row-wise, so deterministic mode stays batch-invariant.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from rlhf_rewards.engine.packed_linear import project, project_gate_up

#: RMSNorm classes whose forward is ``weight * (x.float() * rsqrt(mean(x.float()**2) + eps)).to(x.dtype)``.
RMS_NORMS = frozenset({"LlamaRMSNorm", "MistralRMSNorm", "Qwen2RMSNorm", "Qwen3RMSNorm"})
#: MLP classes whose forward is ``down_proj(act_fn(gate_proj(x)) * up_proj(x))``.
GATED_MLPS = frozenset({"LlamaMLP", "MistralMLP", "Qwen2MLP", "Qwen3MLP"})
_SILU_CLASSES = ("SiLUActivation", "SiLU")


def _is_transformers(module: nn.Module, names: frozenset[str]) -> bool:
    cls = type(module)
    return cls.__name__ in names and cls.__module__.startswith("transformers.models.")


def rms_norm(norm: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``norm(x)`` for the families' RMSNorm, with the scale and the weight applied in place."""
    if not _is_transformers(norm, RMS_NORMS):
        return norm(x)
    return _rms(x, norm.weight, norm.variance_epsilon)


def _rms(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    h = x.to(torch.float32)
    scale = torch.rsqrt(h.pow(2).mean(-1, keepdim=True).add_(eps))
    out = (h * scale).to(x.dtype)
    if weight.dtype != out.dtype:  # the module's type promotion
        return weight * out
    return out.mul_(weight)


def head_norms(q_norm: nn.Module, k_norm: nn.Module, x: torch.Tensor, q_heads: int) -> torch.Tensor | None:
    """Qwen3's per-head ``q_norm`` and ``k_norm`` on queries and keys held as one tensor ``x [1, n, heads, d]``
    (its first ``q_heads`` heads are queries): one pass over both, each head with its own norm's weight, the
    numbers of the two modules bit for bit. ``None`` when the two norms cannot share a pass."""
    if not (_is_transformers(q_norm, RMS_NORMS) and _is_transformers(k_norm, RMS_NORMS)):
        return None
    if q_norm.variance_epsilon != k_norm.variance_epsilon or q_norm.weight.dtype != k_norm.weight.dtype:
        return None
    d, k_heads = x.shape[-1], x.shape[-2] - q_heads
    weight = torch.cat((q_norm.weight.expand(q_heads, d), k_norm.weight.expand(k_heads, d)))
    return _rms(x, weight, q_norm.variance_epsilon)


def gated_mlp(mlp: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``mlp(x)`` for the families' SiLU-gated MLP, with the activation and the gate product in place."""
    if not _is_transformers(mlp, GATED_MLPS) or type(mlp.act_fn).__name__ not in _SILU_CLASSES:
        return mlp(x)
    gate, up = project_gate_up(mlp, x)
    # A view of the stacked GEMM is activated into a fresh tensor, so down_proj reads contiguous rows.
    act = F.silu(gate, inplace=gate.is_contiguous())
    return project(mlp.down_proj, act.mul_(up))


def signed_sin(sin: torch.Tensor) -> torch.Tensor:
    """The sine table with its first half negated, so that RoPE is ``x * cos + swap_halves(x) * signed_sin``.

    Computed once per forward and shared by every layer's queries and keys."""
    half = sin.shape[-1] // 2
    return torch.cat((-sin[..., :half], sin[..., half:]), dim=-1)


def rotate(x: torch.Tensor, cos: torch.Tensor, sin_signed: torch.Tensor) -> torch.Tensor:
    """RoPE of ``x [1, heads, n, d]`` with ``cos``/``sin_signed`` ``[1, n, d]``: the families'
    ``apply_rotary_pos_emb`` for one tensor, in four passes instead of five and two fresh tensors instead of
    five."""
    cos, sin_signed = cos.unsqueeze(1), sin_signed.unsqueeze(1)
    half = x.shape[-1] // 2
    swapped = torch.cat((x[..., half:], x[..., :half]), dim=-1)
    # Not addcmul: its fused multiply-add rounds differently from the model's separate product and sum.
    return (x * cos).add_(swapped.mul_(sin_signed))


__all__ = ["GATED_MLPS", "RMS_NORMS", "gated_mlp", "head_norms", "rms_norm", "rotate", "signed_sin"]
