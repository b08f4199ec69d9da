"""Projection weights packed for the CPU GEMM (``engine/packed_linear.py``): numbers, staleness, when it applies."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from transformers import AutoModelForSequenceClassification

from rlhf_rewards import LLM, PoolingParams
from rlhf_rewards.engine import packed_linear
from rlhf_rewards.engine.packed_linear import (
    GATE_UP,
    PACKED_MAX_ROWS,
    QKV,
    PackedWeights,
    build_packed_weights,
    packable,
    project,
    project_gate_up,
    project_qkv,
)

pytestmark = pytest.mark.skipif(
    not packed_linear.mkl_packing_available(), reason="this torch build has no MKL packed GEMM"
)
RAW = PoolingParams(use_activation=False)
CPU = torch.device("cpu")


def _linear(n_in: int = 48, n_out: int = 80, bias: bool = True, seed: int = 0) -> nn.Linear:
    torch.manual_seed(seed)
    return nn.Linear(n_in, n_out, bias=bias)


def _packed(*linears: nn.Linear) -> PackedWeights:
    return PackedWeights([(m, (m,)) for m in linears])


@pytest.mark.parametrize("rows", [1, 7, 300])
@pytest.mark.parametrize("bias", [True, False])
def test_packed_projection_is_the_linear(rows, bias):
    lin = _linear(bias=bias)
    packed = _packed(lin)
    assert len(packed) == 1
    x = torch.randn(1, rows, 48)
    with torch.inference_mode():
        got, expected = packed.project(lin, x), lin(x)
    assert got.shape == expected.shape == (1, rows, 80)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    strided = torch.randn(rows, 96)[:, ::2]  # a non-contiguous input
    torch.testing.assert_close(packed.project(lin, strided), lin(strided), rtol=1e-5, atol=1e-5)


def test_weight_changes_repack():
    lin = _linear()
    packed = _packed(lin)
    x = torch.randn(5, 48)
    with torch.no_grad():
        lin.weight.mul_(2)  # in place: a new version
    torch.testing.assert_close(packed.project(lin, x), lin(x), rtol=1e-5, atol=1e-5)
    lin.weight = nn.Parameter(torch.randn(80, 48))  # a new storage
    torch.testing.assert_close(packed.project(lin, x), lin(x), rtol=1e-5, atol=1e-5)
    lin.weight.data.copy_(torch.randn(80, 48))  # through .data: no version, hence refresh()
    packed.refresh()
    torch.testing.assert_close(packed.project(lin, x), lin(x), rtol=1e-5, atol=1e-5)


def test_modules_that_changed_kind_or_have_hooks_keep_their_forward():
    lin = _linear()
    packed = _packed(lin)
    seen = []
    handle = lin.register_forward_hook(lambda m, i, o: seen.append(o.shape))
    x = torch.randn(3, 48)
    packed.project(lin, x)
    assert seen == [(3, 80)]  # the hook ran: the module's own call
    handle.remove()
    lin.to(torch.float64)
    assert packed.project(lin, x.double()).dtype == torch.float64
    assert len(packed) == 0  # a float64 module is not packable any more: dropped


def test_only_plain_float32_cpu_linears_are_packable():
    class MyLinear(nn.Linear):
        pass

    assert packable(_linear())
    assert not packable(MyLinear(4, 4))
    assert not packable(_linear().bfloat16())
    hooked = _linear()
    hooked.register_forward_pre_hook(lambda m, i: None)
    assert not packable(hooked)


def test_many_rows_take_the_modules_own_kernel():
    lin = _linear()
    x = torch.randn(PACKED_MAX_ROWS + 1, 48)
    assert torch.equal(_packed(lin).project(lin, x), lin(x))


class _Attention(nn.Module):
    def __init__(self, bias: bool) -> None:
        super().__init__()
        self.q_proj, self.k_proj, self.v_proj = (_linear(48, n, bias=bias, seed=n) for n in (64, 32, 32))


@pytest.mark.parametrize("bias", [True, False])
def test_stacked_qkv_is_the_three_projections(bias):
    attn = _Attention(bias)
    packed = PackedWeights([(attn, (attn.q_proj, attn.k_proj, attn.v_proj))])
    x = torch.randn(1, 19, 48)

    def check(qk, v, q_width):
        assert q_width == 64
        for got, m in zip(
            (qk[..., :64], qk[..., 64:], v), (attn.q_proj, attn.k_proj, attn.v_proj), strict=True
        ):
            torch.testing.assert_close(got, m(x), rtol=1e-5, atol=1e-5)

    with packed_linear.active(packed):
        check(*project_qkv(attn, x))
    with torch.no_grad():
        attn.v_proj.weight.add_(1.0)  # a changed part restacks the copy
    assert packed.project_stacked(attn, QKV, x) is not None
    with packed_linear.active(packed):
        check(*project_qkv(attn, x))
    attn.k_proj = _linear(48, 32, seed=99)  # replaced (as peft wraps it): the modules' own calls
    assert packed.project_stacked(attn, QKV, x) is None
    with packed_linear.active(packed):
        qk, _, _ = project_qkv(attn, x)
        assert torch.equal(qk[..., 64:], attn.k_proj(x))
    check(*project_qkv(attn, x))  # no packed weights active: three module calls


class _MLP(nn.Module):
    def __init__(self, bias: bool) -> None:
        super().__init__()
        self.gate_proj, self.up_proj = (_linear(48, 96, bias=bias, seed=s) for s in (1, 2))


@pytest.mark.parametrize("rows", [1, 19, 300])
def test_stacked_gate_up_is_the_two_projections(rows):
    mlp = _MLP(bias=False)
    packed = PackedWeights([(mlp, (mlp.gate_proj, mlp.up_proj))])
    x = torch.randn(1, rows, 48)
    singles = PackedWeights([(m, (m,)) for m in (mlp.gate_proj, mlp.up_proj)])
    with packed_linear.active(singles):
        expected = project_gate_up(mlp, x)  # two packed GEMMs
    with packed_linear.active(packed):
        got = project_gate_up(mlp, x)
    assert got[0].data_ptr() + 96 * 4 == got[1].data_ptr()  # views of one GEMM
    # No dense copy of the stack is kept: MKL reads the stand-in for its shape only (the numbers below say so).
    assert packed._entries[mlp].dense.stride() == (0, 0)
    for a, b, m in zip(got, expected, (mlp.gate_proj, mlp.up_proj), strict=True):
        assert torch.equal(a, b)  # a wider stacked GEMM sums every column as the single one does
        torch.testing.assert_close(a, m(x), rtol=1e-5, atol=1e-5)
    mlp.up_proj.register_forward_hook(lambda *_: None)  # a hooked part: the modules' own calls
    assert packed.project_stacked(mlp, GATE_UP, x) is None
    with packed_linear.active(packed):
        gate, up = project_gate_up(mlp, x)
    assert torch.equal(gate, mlp.gate_proj(x)) and torch.equal(up, mlp.up_proj(x))


def test_project_outside_an_active_set_is_the_module_call():
    lin = _linear()
    x = torch.randn(4, 48)
    assert torch.equal(project(lin, x), lin(x))
    packed = _packed(lin)
    with packed_linear.active(packed):
        torch.testing.assert_close(project(lin, x), lin(x), rtol=1e-5, atol=1e-5)
    assert torch.equal(project(lin, x), lin(x))


@pytest.fixture(scope="module")
def seq_rm(checkpoint_factory):
    return checkpoint_factory("Qwen3ForSequenceClassification", num_labels=2, seed=41)


def test_build_settings_and_the_memory_guard(seq_rm, monkeypatch):
    llm = LLM(str(seq_rm), device="cpu", cpu_packed_weights=False)
    backbone = llm.model.backbone
    assert llm.runner.packed_weights is None
    assert build_packed_weights(backbone, torch.device("meta"), None) is None
    full = build_packed_weights(backbone, CPU, None)
    # Per layer: q/k/v stacked, gate/up stacked, o_proj, down_proj.
    assert full is not None and len(full) == 4 * backbone.config.num_hidden_layers
    monkeypatch.setattr(packed_linear, "_available_memory_bytes", lambda: 1024)
    assert build_packed_weights(backbone, CPU, None) is None  # the copies would not fit
    assert build_packed_weights(backbone, CPU, True) is not None  # forced
    for kwargs in ({}, {"enable_lora": True}):  # checked whether or not the engine would pack
        with pytest.raises(ValueError, match="cpu_packed_weights"):
            LLM(str(seq_rm), device="cpu", cpu_packed_weights="yes", **kwargs)


def test_engines_that_keep_the_modules_kernels(seq_rm):
    assert LLM(str(seq_rm), device="cpu").runner.packed_weights is not None
    assert LLM(str(seq_rm), device="cpu", deterministic=True).runner.packed_weights is None
    assert LLM(str(seq_rm), device="cpu", enable_lora=True).runner.packed_weights is None


def _texts(seed: int, n: int = 6) -> list[list[int]]:
    gen = torch.Generator().manual_seed(seed)
    prompt = torch.randint(5, 200, (40,), generator=gen).tolist()
    return [prompt + torch.randint(5, 200, (int(k),), generator=gen).tolist() for k in range(3, 3 + 7 * n, 7)]


def _scores(llm: LLM, texts: list[list[int]]) -> torch.Tensor:
    outs = llm.encode([{"prompt_token_ids": t} for t in texts], RAW, pooling_task="classify", use_tqdm=False)
    return torch.stack([o.outputs.data for o in outs])


def test_packed_engine_scores_match_plain_transformers(seq_rm):
    texts = _texts(3)
    reference = AutoModelForSequenceClassification.from_pretrained(str(seq_rm), torch_dtype=torch.float32)
    with torch.no_grad():
        expected = torch.stack([reference(torch.tensor([t])).logits[0] for t in texts])
    packed = LLM(str(seq_rm), device="cpu", cpu_packed_weights=True)
    plain = LLM(str(seq_rm), device="cpu", cpu_packed_weights=False)
    torch.testing.assert_close(_scores(packed, texts), expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(_scores(packed, texts), _scores(plain, texts), rtol=1e-5, atol=1e-5)
    # One text per call, the prompt from the cross-call cache: the same scores.
    one_by_one = torch.cat([_scores(packed, [t]) for t in texts])
    torch.testing.assert_close(one_by_one, expected, rtol=1e-5, atol=1e-5)


def test_reset_prefix_cache_repacks_after_writes_through_data(seq_rm):
    texts = _texts(4, n=2)
    llm = LLM(str(seq_rm), device="cpu")
    before = _scores(llm, texts)
    for layer in llm.model.backbone.layers:
        layer.mlp.down_proj.weight.data.mul_(3)  # no version bump: invisible until the reset
    llm.reset_prefix_cache()
    plain = LLM(str(seq_rm), device="cpu", cpu_packed_weights=False)
    for layer in plain.model.backbone.layers:
        layer.mlp.down_proj.weight.data.mul_(3)
    after = _scores(llm, texts)
    assert not torch.allclose(after, before)
    torch.testing.assert_close(after, _scores(plain, texts), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    ("arch", "config_cls"),
    [("Qwen2ForSequenceClassification", "Qwen2Config"), ("LlamaForSequenceClassification", "LlamaConfig")],
)
def test_other_families_packed_match_plain_transformers(arch, config_cls, tmp_path):
    """Qwen2's q/k/v carry biases (stacked with the weights); Llama's have none."""
    from tests.support.checkpoints import build_hf_model

    path = build_hf_model(arch, tmp_path / arch, config_cls=config_cls, num_labels=2, seed=12)
    llm = LLM(str(path), device="cpu")
    assert llm.runner.packed_weights is not None
    texts = _texts(5, n=3)
    reference = AutoModelForSequenceClassification.from_pretrained(str(path), torch_dtype=torch.float32)
    with torch.no_grad():
        expected = torch.stack([reference(torch.tensor([t])).logits[0] for t in texts])
    torch.testing.assert_close(_scores(llm, texts), expected, rtol=1e-5, atol=1e-5)
