"""The CUDA varlen attention path (``engine/attention/varlen.py``).

The FlashAttention varlen kernel is CUDA-only, so on CPU the path runs with a reference kernel written out
here with plain matmuls (same signature and semantics: ``cu_seqlens``, causal window, GQA, log-sum-exp).
That checks everything but the kernel: the segment boundaries, the shared-prefix calls and their merge,
the pruned last layer, every runner path, against plain transformers to 1e-5. With CUDA present the real
kernel is compared with the reference too.
"""

from __future__ import annotations

import pytest
import torch

from rlhf_rewards.engine.attention import varlen as varlen_attention
from rlhf_rewards.engine.attention.plan import Segment, SegmentPlan
from rlhf_rewards.engine.runner import ModelRunner
from tests.engine.test_runner_paths import CPU, PATHS, POOLINGS, _check, _requests, _sequences, qwen3  # noqa: F401


def reference_varlen(
    q, k, v, cu_q, cu_k, max_q, max_k, *, return_aux=None, scale=None, window_size=(-1, -1), enable_gqa=False
):
    """``varlen_attn`` with matmuls: per sequence, bottom-right-aligned causal window, float32 softmax."""
    assert q.dim() == 3 and q.stride(-1) == 1 and k.stride(-1) == 1
    assert cu_q.dtype == torch.int32 and cu_k.dtype == torch.int32
    assert window_size in ((-1, -1), (-1, 0))
    heads, kv_heads = q.shape[1], k.shape[1]
    assert enable_gqa == (heads != kv_heads)
    scale = scale if scale is not None else q.shape[-1] ** -0.5
    outs, lses = [], []
    for i in range(cu_q.numel() - 1):
        qs, qe, ks, ke = int(cu_q[i]), int(cu_q[i + 1]), int(cu_k[i]), int(cu_k[i + 1])
        assert qe - qs <= max_q and ke - ks <= max_k
        qi = q[qs:qe].transpose(0, 1).float()
        ki = k[ks:ke].transpose(0, 1).float().repeat_interleave(heads // kv_heads, 0)
        vi = v[ks:ke].transpose(0, 1).float().repeat_interleave(heads // kv_heads, 0)
        scores = qi @ ki.transpose(-1, -2) * scale
        if window_size == (-1, 0):
            n, m = qe - qs, ke - ks
            visible = torch.arange(m)[None, :] <= torch.arange(n)[:, None] + (m - n)
            scores = scores.masked_fill(~visible, float("-inf"))
        lse = torch.logsumexp(scores, -1)
        outs.append((torch.exp(scores - lse[..., None]) @ vi).transpose(0, 1).to(q.dtype))
        lses.append(lse.transpose(0, 1))
    out = torch.cat(outs)
    reference_varlen.calls.append(cu_q.numel() - 1)
    return (out, torch.cat(lses)) if return_aux is not None else out


reference_varlen.calls = []


@pytest.fixture
def varlen_on_cpu(monkeypatch):
    reference_varlen.calls.clear()
    monkeypatch.setattr(varlen_attention, "KERNEL", reference_varlen)
    monkeypatch.setattr(varlen_attention, "_lse_request", lambda: object())
    monkeypatch.setattr(varlen_attention, "DEVICE_TYPES", {"cpu"})
    monkeypatch.setattr(varlen_attention, "DTYPES", {torch.float32})
    return reference_varlen.calls


@pytest.mark.parametrize("path_name", [p for p in PATHS if p != "padded"])
@pytest.mark.parametrize("budget", [4096, 64])
def test_varlen_path_matches_reference(qwen3, varlen_on_cpu, path_name, budget):  # noqa: F811
    _, model, reference = qwen3
    runner = ModelRunner(model, CPU, budget, **PATHS[path_name])
    requests = _requests(_sequences(), POOLINGS)
    _check(runner.run(requests), requests, reference)
    assert runner.packing_disabled_reason is None
    layers = model.backbone.config.num_hidden_layers
    # One own-part call per layer and forward, holding every segment of the row ...
    own_calls = [n for n in varlen_on_cpu if n > 1]
    assert len(own_calls) >= layers * (1 if budget == 4096 else 2)
    if budget == 4096 and "prefix" in path_name:
        # ... plus one call per shared prefix (one query sequence each).
        assert varlen_on_cpu.count(1) > 0
        assert runner.last_stats.forwards == 1


def test_varlen_is_off_for_cpu_float32_and_by_environment(monkeypatch):
    q = torch.zeros(1, 2, 4, 8)
    assert not varlen_attention.applies(q)  # CPU keeps the bucket path
    monkeypatch.setattr(varlen_attention, "KERNEL", reference_varlen)
    monkeypatch.setattr(varlen_attention, "DEVICE_TYPES", {"cpu"})
    monkeypatch.setattr(varlen_attention, "DTYPES", {torch.float32})
    assert varlen_attention.applies(q)
    monkeypatch.setenv("RLHF_REWARDS_VARLEN", "0")
    assert not varlen_attention.applies(q)


def test_layout_rejects_segments_that_do_not_tile_the_row():
    with pytest.raises(ValueError, match="tile the packed row"):
        varlen_attention.plan_layout(SegmentPlan([Segment(0, 3), Segment(4, 6)], 6), CPU)
    segments = [
        Segment(0, 3),
        Segment(3, 5, prefix=[(0, 3)]),
        Segment(5, 6, prefix=[(0, 3), (3, 5)]),
        Segment(6, 9, prefix=[(0, 3)]),
        Segment(9, 10),
        Segment(10, 12, prefix=[(9, 10)]),
    ]
    layout = varlen_attention.plan_layout(SegmentPlan(segments, 12), CPU)
    assert layout.cu.tolist() == [0, 3, 5, 6, 9, 10, 12] and layout.max_len == 3
    crosses = {
        c.k_range: (c.q_range, c.q_index.tolist() if c.q_index is not None else None) for c in layout.crosses
    }
    assert crosses == {(0, 3): ((3, 9), None), (3, 5): ((5, 6), None), (9, 10): ((10, 12), None)}


@pytest.mark.skipif(
    not torch.cuda.is_available() or varlen_attention._torch_kernel() is None,
    reason="the FlashAttention varlen kernel needs CUDA",
)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_cuda_kernel_matches_the_reference(dtype):
    torch.manual_seed(0)
    kernel = varlen_attention._torch_kernel()
    lengths = [5, 1, 17, 64, 3]
    cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32, device="cuda")
    q = torch.randn(sum(lengths), 8, 64, device="cuda", dtype=dtype)
    k = torch.randn(sum(lengths), 2, 64, device="cuda", dtype=dtype)
    v = torch.randn_like(k)
    for window in ((-1, 0), (-1, -1)):
        out, lse = kernel(
            q,
            k,
            v,
            cu,
            cu,
            max(lengths),
            max(lengths),
            return_aux=varlen_attention._lse_request(),
            window_size=window,
            enable_gqa=True,
        )
        ref, ref_lse = reference_varlen(
            q.cpu(),
            k.cpu(),
            v.cpu(),
            cu.cpu(),
            cu.cpu(),
            max(lengths),
            max(lengths),
            return_aux=True,
            window_size=window,
            enable_gqa=True,
        )
        torch.testing.assert_close(out.cpu().float(), ref.float(), atol=2e-2, rtol=0)
        if varlen_attention._lse_heads_major(kernel, q.device, dtype):  # FlashAttention's [heads, tokens]
            lse = lse.transpose(0, 1)
        torch.testing.assert_close(lse.cpu().float(), ref_lse, atol=2e-2, rtol=0)


def test_kernel_without_enable_gqa_gets_one_key_value_head_per_query_head(qwen3, monkeypatch):  # noqa: F811
    """torch 2.11's ``varlen_attn`` has no ``enable_gqa``: grouped keys/values are expanded before the call."""
    heads_seen = []

    def kernel_2_11(q, k, v, cu_q, cu_k, max_q, max_k, *, return_aux=None, scale=None, window_size=(-1, -1)):
        heads_seen.append((q.shape[1], k.shape[1], v.shape[1]))
        return reference_varlen(
            q, k, v, cu_q, cu_k, max_q, max_k, return_aux=return_aux, scale=scale, window_size=window_size
        )

    monkeypatch.setattr(varlen_attention, "KERNEL", kernel_2_11)
    monkeypatch.setattr(varlen_attention, "_lse_request", lambda: object())
    monkeypatch.setattr(varlen_attention, "DEVICE_TYPES", {"cpu"})
    monkeypatch.setattr(varlen_attention, "DTYPES", {torch.float32})
    _, model, reference = qwen3
    config = model.backbone.config
    assert config.num_key_value_heads < config.num_attention_heads  # the fixture is a GQA model
    runner = ModelRunner(model, CPU, 4096, **PATHS["packed+prefix"])
    requests = _requests(_sequences(), POOLINGS)
    _check(runner.run(requests), requests, reference)
    # Every call got as many key/value heads as query heads (the model's calls, and the one-off layout probe).
    assert (config.num_attention_heads,) * 3 in heads_seen and all(len(set(h)) == 1 for h in heads_seen)


def test_heads_major_log_sum_exp_is_transposed_before_the_merge(qwen3, varlen_on_cpu, monkeypatch):  # noqa: F811
    """FlashAttention returns the log-sum-exp as ``[heads, tokens]``; the shared-prefix merge needs ``[T, heads]``."""

    def heads_major(q, k, v, cu_q, cu_k, max_q, max_k, **kwargs):
        result = reference_varlen(q, k, v, cu_q, cu_k, max_q, max_k, **kwargs)
        if kwargs.get("return_aux") is None:
            return result
        out, lse = result
        return out, lse.transpose(0, 1).contiguous()

    monkeypatch.setattr(varlen_attention, "KERNEL", heads_major)
    _, model, reference = qwen3
    runner = ModelRunner(model, CPU, 4096, **PATHS["packed+prefix"])
    requests = _requests(_sequences(), POOLINGS)
    _check(runner.run(requests), requests, reference)
    assert varlen_on_cpu.count(1) > 0  # shared prefixes were merged through the log-sum-exp
