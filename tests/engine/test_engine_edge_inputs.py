"""Engine edge cases against plain transformers: STEP pooling without step tags, tokenizers padding on
either side (through ``LLM.encode``), and a bfloat16 backbone whose head runs in float32.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import transformers

from rlhf_rewards import LLM, PoolingParams
from rlhf_rewards.engine.runner import ModelRunner
from rlhf_rewards.engine.threads import threads_for
from rlhf_rewards.models.loader import load_pooling_model
from tests.conftest import MIXED_TEXTS
from tests.engine.test_runner_paths import ATOL, CPU, PATHS, STEP_ID, Reference, _check, _requests

STEP = ("token_classify", {"pooling_type": "STEP", "step_tag_id": STEP_ID})


@pytest.fixture(scope="module")
def qwen3(checkpoint_factory):
    path = checkpoint_factory("Qwen3ForSequenceClassification", num_labels=3, seed=5)
    return (
        path,
        load_pooling_model(str(path), dtype=torch.float32, device=CPU),
        Reference(path, "Qwen3ForSequenceClassification"),
    )


@pytest.mark.parametrize("path_name", list(PATHS))
def test_step_pooling_without_any_step_tag_gives_empty_rows(qwen3, path_name):
    """A batch with no step tag at all: every result is ``[0, num_labels]`` (as vLLM), on every path."""
    _, model, _ = qwen3
    seqs = [[11, 12, 13, 14], [20, 21, 22], [11, 12, 13, 14, 15, 16, 17, 18, 19, 30, 31], [40]]
    runner = ModelRunner(model, CPU, 4096, **PATHS[path_name])
    outputs = runner.run(_requests(seqs, [STEP]))
    assert [tuple(o.shape) for o in outputs] == [(0, 3)] * len(seqs)
    assert all(o.dtype == torch.float32 for o in outputs)


@pytest.mark.parametrize("path_name", list(PATHS))
def test_step_pooling_some_texts_without_tags(qwen3, path_name):
    """Texts with and without step tags, sharing prefixes, in one call: each matches the reference."""
    _, model, reference = qwen3
    prompt = list(range(30, 52))
    seqs = [
        prompt + [60, 61],
        prompt + [60, STEP_ID, 62, STEP_ID],
        prompt,
        [STEP_ID],
        [70, 71, 72],
        prompt + [STEP_ID],
        [70, 71, 72, 73, 74, 75, 76, 77, 78, 79],
    ]
    requests = _requests(seqs, [STEP], use_activation=True)
    runner = ModelRunner(model, CPU, 4096, **PATHS[path_name])
    outputs = runner.run(requests)
    _check(outputs, requests, reference)
    assert [o.shape[0] for o in outputs] == [0, 2, 0, 1, 0, 1, 0]


@pytest.mark.parametrize("padding_side", ["right", "left"])
@pytest.mark.parametrize("packing", [True, False])
def test_llm_scores_independent_of_tokenizer_padding_side(checkpoint_factory, padding_side, packing):
    """``LLM.encode`` equals transformers' own padded batch (which reads the last non-pad token on either
    side) and an unpadded forward per text."""
    path = checkpoint_factory("Qwen3ForSequenceClassification", padding_side=padding_side, seed=11)
    texts = MIXED_TEXTS + ["Question: 2+2? Answer: 4", "Question: 2+2? Answer: four, since 2+2=4."]
    llm = LLM(str(path), dtype="float32", device="cpu")
    if not packing:
        llm.runner.packing = False
    outs = llm.encode(texts, PoolingParams(use_activation=False), pooling_task="classify", use_tqdm=False)
    scores = torch.stack([o.outputs.data for o in outs])

    tok = transformers.AutoTokenizer.from_pretrained(str(path))
    assert tok.padding_side == padding_side
    hf = transformers.Qwen3ForSequenceClassification.from_pretrained(str(path), dtype=torch.float32).eval()
    with torch.no_grad():
        batch = tok(texts, padding=True, return_tensors="pt")
        padded = hf(**batch).logits
        single = torch.cat([hf(**tok(t, return_tensors="pt")).logits for t in texts])
    torch.testing.assert_close(scores, padded, atol=ATOL, rtol=0)
    torch.testing.assert_close(scores, single, atol=ATOL, rtol=0)
    assert [o.prompt_token_ids for o in outs] == [tok(t)["input_ids"] for t in texts]


@pytest.fixture(scope="module")
def bf16(checkpoint_factory):
    path = checkpoint_factory("Qwen3ForSequenceClassification", num_labels=3, seed=5)
    model = load_pooling_model(str(path), dtype=torch.bfloat16, device=CPU)
    ref = transformers.Qwen3ForSequenceClassification.from_pretrained(str(path), dtype=torch.bfloat16).eval()
    fp32 = transformers.Qwen3ForSequenceClassification.from_pretrained(str(path), dtype=torch.float32).eval()
    return model, ref, fp32


def test_bf16_backbone_keeps_a_float32_head(bf16):
    model, _, fp32 = bf16
    assert next(model.backbone.parameters()).dtype == torch.bfloat16
    assert model.head.weight.dtype == torch.float32
    # The checkpoint's head, at least to bf16 resolution (whether the loader keeps the fp32 bits or not).
    torch.testing.assert_close(model.head.weight, fp32.score.weight, atol=0, rtol=2**-8)


@pytest.mark.parametrize("path_name", list(PATHS))
def test_bf16_every_path_scores_bf16_states_with_the_float32_head(bf16, path_name):
    """Scores are the float32 head applied to the bf16 backbone's last states, on every path.

    Single-sequence padded forwards reproduce transformers' bf16 states exactly; packed forwards run the
    same kernels at other shapes, so bf16 rounding may differ there (compared at bf16 resolution).
    """
    model, ref, _ = bf16
    seqs = [list(range(20, 20 + n)) for n in (3, 17, 40)] + [list(range(20, 60)) + [7, 8, 9]]
    requests = _requests(seqs, [("classify", {"pooling_type": "LAST"})])
    budget = 1 if path_name == "padded" else 4096  # budget 1: one sequence per forward, unpadded
    outputs = ModelRunner(model, CPU, budget, **PATHS[path_name]).run(requests)
    head = model.head
    with torch.no_grad():
        for out, s in zip(outputs, seqs, strict=True):
            hidden = ref.model(input_ids=torch.tensor([s])).last_hidden_state[0, -1]
            assert hidden.dtype == torch.bfloat16 and out.dtype == torch.float32
            expected = F.linear(hidden.float(), head.weight)
            tol = ATOL if path_name == "padded" else 0.05 * float(expected.abs().max()) + 1e-3
            torch.testing.assert_close(out, expected, atol=tol, rtol=0)


def test_small_forwards_run_single_threaded_and_restore_threads():
    saved = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with threads_for(CPU, 1e6):
            assert torch.get_num_threads() == 1
        assert torch.get_num_threads() == 2
        with threads_for(CPU, 1e12):
            assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(saved)


@pytest.mark.parametrize("is_causal", [True, False])
def test_log_sum_exp_attention_paths_agree(is_causal):
    """The CPU kernel and the matmul fallback (used off CPU) give the same output and log-sum-exp, and
    merging two key ranges by log-sum-exp equals attention over their union (grouped-query heads)."""
    from rlhf_rewards.engine.attention.kernels import merge, sdpa_lse, sdpa_lse_math

    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, h, 9, 16, generator=gen) for h in (4, 2, 2))
    mask = torch.zeros(2, 1, 9, 9)
    mask[1, 0, :, 7:] = float("-inf")
    for m in (None, mask):
        out, lse = sdpa_lse(q, k, v, mask=m, is_causal=is_causal and m is None, scale=0.3)
        out2, lse2 = sdpa_lse_math(q, k, v, mask=m, is_causal=is_causal and m is None, scale=0.3)
        torch.testing.assert_close(out, out2, atol=1e-5, rtol=0)
        torch.testing.assert_close(lse, lse2, atol=1e-5, rtol=0)
    full, _ = sdpa_lse(q, k, v, mask=None, is_causal=False, scale=0.3)
    o1, l1 = sdpa_lse(q, k[:, :, :4], v[:, :, :4], mask=None, is_causal=False, scale=0.3)
    o2, l2 = sdpa_lse(q, k[:, :, 4:], v[:, :, 4:], mask=None, is_causal=False, scale=0.3)
    merge(o1, l1, o2, l2)
    torch.testing.assert_close(o1, full, atol=1e-6, rtol=0)
