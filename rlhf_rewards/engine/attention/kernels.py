"""The attention maths the segment backends share: SDPA calls, their log-sum-exp, and the exact merge.

A segment's attention is split into parts (its own keys, each ancestor's keys) whose results are merged
exactly through their log-sum-exp: ``out = sum_i exp(lse_i - lse) * out_i``, ``lse = logaddexp_i(lse_i)``,
which is the softmax over the union of the keys (exact up to float rounding).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _torch_at_least(major: int, minor: int) -> bool:
    parts = torch.__version__.split("+")[0].split(".")
    try:
        return (int(parts[0]), int(parts[1])) >= (major, minor)
    except (ValueError, IndexError):
        return False


#: ``scaled_dot_product_attention(..., enable_gqa=True)`` (torch >= 2.5) reads grouped keys without copying.
_SDPA_HAS_GQA = _torch_at_least(2, 5)


def sdpa(query, key, value, *, mask, is_causal, scale, groups):
    """``scaled_dot_product_attention`` with ``groups`` query heads per key/value head."""
    if groups > 1:
        if _SDPA_HAS_GQA:
            return F.scaled_dot_product_attention(
                query, key, value, attn_mask=mask, is_causal=is_causal, scale=scale, enable_gqa=True
            )
        key = key.repeat_interleave(groups, dim=1)
        value = value.repeat_interleave(groups, dim=1)
    return F.scaled_dot_product_attention(query, key, value, attn_mask=mask, is_causal=is_causal, scale=scale)


def sdpa_lse(query, key, value, *, mask, is_causal, scale):
    """Attention output ``[B, H, L, d]`` and its float32 log-sum-exp ``[B, H, L]`` (grouped keys allowed).

    CPU uses the flash kernel behind ``scaled_dot_product_attention``, which returns the log-sum-exp;
    other devices compute it with plain matmuls (only the shared-prefix parts take this path).
    """
    if query.device.type == "cpu":
        return torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
            query, key, value, 0.0, is_causal, attn_mask=mask, scale=scale
        )
    return sdpa_lse_math(query, key, value, mask=mask, is_causal=is_causal, scale=scale)


def sdpa_lse_math(query, key, value, *, mask, is_causal, scale):
    """:func:`sdpa_lse` with plain matmuls in float32, for devices without a log-sum-exp kernel here."""
    groups = query.shape[1] // key.shape[1]
    if groups > 1:
        key, value = key.repeat_interleave(groups, dim=1), value.repeat_interleave(groups, dim=1)
    scores = torch.matmul(query.float(), key.float().transpose(-1, -2)) * (scale or query.shape[-1] ** -0.5)
    if is_causal:
        scores = scores.masked_fill(
            torch.ones(scores.shape[-2:], dtype=torch.bool, device=scores.device).triu(1), float("-inf")
        )
    if mask is not None:
        scores = scores + mask.float()
    lse = torch.logsumexp(scores, dim=-1)
    out = torch.matmul(torch.exp(scores - lse.unsqueeze(-1)), value.float()).to(query.dtype)
    return out, lse


def merge(acc: torch.Tensor, acc_lse: torch.Tensor, out: torch.Tensor, lse: torch.Tensor) -> None:
    """Fold a partial result (``out [n, H, d]``, ``lse [n, H]``) into the running one, in place."""
    new = torch.logaddexp(acc_lse, lse)
    acc.mul_(torch.exp(acc_lse - new).unsqueeze(-1)).add_(out * torch.exp(lse - new).unsqueeze(-1))
    acc_lse.copy_(new)


def merge_rows(
    acc: torch.Tensor, acc_lse: torch.Tensor, rows: torch.Tensor, out: torch.Tensor, lse: torch.Tensor
) -> None:
    """:func:`merge` of a partial result for the scattered ``rows`` of the running one."""
    part, part_lse = acc.index_select(0, rows), acc_lse.index_select(0, rows)
    merge(part, part_lse, out, lse)
    acc.index_copy_(0, rows, part)
    acc_lse.index_copy_(0, rows, part_lse)


__all__ = ["merge", "merge_rows", "sdpa", "sdpa_lse", "sdpa_lse_math"]
