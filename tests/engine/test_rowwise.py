"""The in-place row-wise pieces of a decoder layer (``engine/rowwise.py``) against the families' own modules.

They must compute the modules' numbers bit for bit (same operations, same order), in float32 and bfloat16,
and leave any class they do not know to the module itself.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn
from transformers import LlamaConfig, MistralConfig, Qwen2Config, Qwen3Config
from transformers.models.llama.modeling_llama import LlamaMLP, LlamaRMSNorm, apply_rotary_pos_emb
from transformers.models.mistral.modeling_mistral import MistralMLP, MistralRMSNorm
from transformers.models.qwen2.modeling_qwen2 import Qwen2MLP, Qwen2RMSNorm
from transformers.models.qwen3.modeling_qwen3 import Qwen3MLP, Qwen3RMSNorm

from rlhf_rewards.engine import rowwise

NORMS = [LlamaRMSNorm, MistralRMSNorm, Qwen2RMSNorm, Qwen3RMSNorm]
MLPS = [
    (LlamaMLP, LlamaConfig),
    (MistralMLP, MistralConfig),
    (Qwen2MLP, Qwen2Config),
    (Qwen3MLP, Qwen3Config),
]
DTYPES = [torch.float32, torch.bfloat16]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("cls", NORMS)
def test_rms_norm_is_the_module_bit_for_bit(cls, dtype):
    gen = torch.Generator().manual_seed(0)
    norm = cls(64, eps=1e-6)
    norm.weight.data = torch.randn(64, generator=gen).to(dtype)
    x = (3 * torch.randn(2, 37, 64, generator=gen)).to(dtype)
    expected = norm(x)
    got = rowwise.rms_norm(norm, x.clone())
    assert got.dtype == expected.dtype and torch.equal(got, expected)


def test_rms_norm_keeps_the_modules_type_promotion():
    norm = Qwen3RMSNorm(16)  # float32 weight
    x = torch.randn(5, 16).bfloat16()
    assert rowwise.rms_norm(norm, x).dtype == norm(x).dtype == torch.float32
    assert torch.equal(rowwise.rms_norm(norm, x), norm(x))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("cls", "config_cls"), MLPS)
def test_gated_mlp_is_the_module_bit_for_bit(cls, config_cls, dtype):
    torch.manual_seed(1)
    mlp = cls(config_cls(hidden_size=32, intermediate_size=96, hidden_act="silu")).to(dtype)
    x = torch.randn(1, 23, 32).to(dtype)
    assert torch.equal(rowwise.gated_mlp(mlp, x), mlp(x))


def test_rope_is_the_families_formula_bit_for_bit():
    gen = torch.Generator().manual_seed(2)
    q = torch.randn(1, 8, 29, 64, generator=gen)
    k = torch.randn(1, 4, 29, 64, generator=gen)
    cos = torch.randn(1, 29, 64, generator=gen)
    sin = torch.randn(1, 29, 64, generator=gen)
    q_ref, k_ref = apply_rotary_pos_emb(q, k, cos, sin)
    signed = rowwise.signed_sin(sin)
    assert torch.equal(rowwise.rotate(q, cos, signed), q_ref)
    assert torch.equal(rowwise.rotate(k, cos, signed), k_ref)


class _OtherNorm(nn.Module):
    """A norm the functions do not know: they must call it."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return x * 2


def test_unknown_classes_run_their_own_forward():
    norm = _OtherNorm()
    x = torch.ones(3, 4)
    assert torch.equal(rowwise.rms_norm(norm, x), x * 2) and norm.calls == 1
    gelu_mlp = LlamaMLP(
        LlamaConfig(hidden_size=8, intermediate_size=16, num_attention_heads=2, hidden_act="gelu")
    )
    y = torch.randn(2, 8)
    assert torch.equal(rowwise.gated_mlp(gelu_mlp, y), gelu_mlp(y))


def test_a_lookalike_class_outside_transformers_is_not_taken_for_the_family():
    class Qwen3RMSNorm(nn.Module):  # same name, other formula
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x + 1

    x = torch.zeros(2, 4)
    assert torch.equal(rowwise.rms_norm(Qwen3RMSNorm(), x), x + 1)


@pytest.mark.parametrize("dtype", DTYPES)
def test_head_norms_are_q_norm_and_k_norm_bit_for_bit(dtype):
    gen = torch.Generator().manual_seed(3)
    q_norm, k_norm = Qwen3RMSNorm(64, eps=1e-6), Qwen3RMSNorm(64, eps=1e-6)
    q_norm.weight.data = torch.randn(64, generator=gen).to(dtype)
    k_norm.weight.data = torch.randn(64, generator=gen).to(dtype)
    q = (3 * torch.randn(1, 21, 8, 64, generator=gen)).to(dtype)
    k = (3 * torch.randn(1, 21, 4, 64, generator=gen)).to(dtype)
    both = rowwise.head_norms(q_norm, k_norm, torch.cat((q, k), dim=2), q_heads=8)
    assert both is not None
    assert torch.equal(both[:, :, :8], q_norm(q)) and torch.equal(both[:, :, 8:], k_norm(k))
    k_norm.variance_epsilon = 1e-5  # norms that differ are not merged
    assert rowwise.head_norms(q_norm, k_norm, torch.cat((q, k), dim=2), q_heads=8) is None
