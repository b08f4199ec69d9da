"""Scores of a model split over 2 processes (gloo) equal the single-process engine's to 1e-5 (float32).

The ranks are launched as ``torchrun`` launches them (:mod:`tests.parallel.spmd`), once for every case, and
each case builds ``LLM(..., tensor_parallel_size=2)`` or ``pipeline_parallel_size=2`` there. The reference is
the same ``LLM`` with one process, built here. Covered: a sequence RM (classify with packing, shared-prefix
reuse and several micro-batches; embed; token_embed; MEAN and CLS), a token RM (ALL), a PRM (STEP), a
math-shepherd LM (STEP with returned_token_ids over a replicated LM head) and InternLM2's packed wqkv. Each
rank's resident parameter bytes are about half of the whole model's under tensor parallelism.
"""

from __future__ import annotations

import pytest
import torch

from rlhf_rewards import LLM, PoolingParams
from rlhf_rewards.parallel import resident_parameter_bytes
from tests.parallel.conftest import GROUP_TEXTS, PRM_TEXTS, STEP
from tests.parallel.spmd import Call, Case, run_spmd

ATOL = 1e-5


def _cases(seq_rm, token_rm, prm, step_lm, internlm2, step_lm_config):
    tp2 = {"tensor_parallel_size": 2}
    pp2 = {"pipeline_parallel_size": 2}
    small = {"max_num_batched_tokens": 48}  # several micro-batches: every rank must cut the same ones
    classify = Call(GROUP_TEXTS, "classify")
    return [
        Case(
            "seq_rm_tp",
            str(seq_rm),
            {**tp2, **small},
            [
                classify,
                Call(GROUP_TEXTS, "embed"),
                Call(GROUP_TEXTS[:3], "token_embed"),
                Call(GROUP_TEXTS[:2], "embed", PoolingParams(dimensions=8)),
            ],
        ),
        Case(
            "seq_rm_tp_mean",
            str(seq_rm),
            {**tp2, "pooler_config": {"pooling_type": "MEAN"}},
            [classify, Call(GROUP_TEXTS, "embed")],
        ),
        Case("seq_rm_tp_cls", str(seq_rm), {**tp2, "pooler_config": {"pooling_type": "CLS"}}, [classify]),
        Case("seq_rm_pp", str(seq_rm), {**pp2, **small}, [classify, Call(GROUP_TEXTS[:3], "token_embed")]),
        Case("token_rm_tp", str(token_rm), tp2, [Call(GROUP_TEXTS, "token_classify")]),
        Case("prm_tp", str(prm), tp2, [Call(PRM_TEXTS, "token_classify")]),
        Case("prm_pp", str(prm), pp2, [Call(PRM_TEXTS, "token_classify")]),
        Case(
            "step_lm_tp",
            str(step_lm),
            {**tp2, "pooler_config": step_lm_config},
            [
                Call(PRM_TEXTS, "token_classify"),
                Call(PRM_TEXTS[:1], "token_classify", PoolingParams(use_activation=False)),
            ],
        ),
        Case("internlm2_tp", str(internlm2), tp2, [Call(GROUP_TEXTS, "token_classify")]),
    ]


@pytest.fixture(scope="module")
def step_lm(checkpoint_factory):
    return checkpoint_factory("LlamaForCausalLM", seed=51)


@pytest.fixture(scope="module")
def internlm2(checkpoint_factory):
    return checkpoint_factory("InternLM2ForRewardModel")


@pytest.fixture(scope="module")
def runs(seq_rm, token_rm, prm, step_lm, internlm2, tmp_path_factory):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(step_lm))
    good, bad = tok.convert_tokens_to_ids(["+", "-"])
    step_lm_config = {
        "pooling_type": "STEP",
        "step_tag_id": tok.convert_tokens_to_ids(STEP),
        "returned_token_ids": [good, bad],
    }
    cases = _cases(seq_rm, token_rm, prm, step_lm, internlm2, step_lm_config)
    references = {}
    for case in cases:
        kwargs = {k: v for k, v in case.llm_kwargs.items() if not k.endswith("parallel_size")}
        llm = LLM(case.model, device="cpu", dtype="float32", **kwargs)
        references[case.name] = {
            "outputs": [
                [o.outputs.data for o in llm.encode(c.prompts, c.params, pooling_task=c.task, use_tqdm=False)]
                for c in case.calls
            ],
            "whole_bytes": resident_parameter_bytes(llm.model),
        }
    ranks = run_spmd(2, cases, tmp_path_factory.mktemp("spmd"))
    return cases, references, ranks


def test_scores_equal_the_single_process_engine(runs, capsys):
    cases, references, ranks = runs
    worst = {}
    for case in cases:
        for rank, result in enumerate(ranks):  # under torchrun every rank returns the outputs
            got, want = result[case.name]["outputs"], references[case.name]["outputs"]
            for call, g_call, w_call in zip(case.calls, got, want, strict=True):
                assert len(g_call) == len(w_call) == len(call.prompts)
                for g, w in zip(g_call, w_call, strict=True):
                    assert g.shape == w.shape, (case.name, rank)
                    torch.testing.assert_close(
                        g, w, atol=ATOL, rtol=0, msg=lambda m, c=case.name, r=rank: f"{c} rank {r}: {m}"
                    )
                    if g.numel():
                        worst[case.name] = max(worst.get(case.name, 0.0), float((g - w).abs().max()))
    with capsys.disabled():
        print("\nmax abs diff vs one process: " + ", ".join(f"{k} {v:.1e}" for k, v in worst.items()))


def test_the_cases_exercise_what_they_claim(runs):
    cases, references, ranks = runs
    for rank in ranks:  # the classify call: packed, prefix shared, more than one micro-batch, on every rank
        stats = rank["seq_rm_tp"]["stats"][0]
        assert stats["forwards"] >= 2 and stats["tokens_run"] < stats["tokens_requested"], stats
        assert stats["last_layer_rows"] < stats["tokens_run"], (
            stats
        )  # last-layer pruning ran on the split model
    prm_steps = [o.shape[0] for o in references["prm_tp"]["outputs"][0]]
    assert prm_steps == [t.count(STEP) for t in PRM_TEXTS] and sum(prm_steps) > 0
    last = references["seq_rm_tp"]["outputs"][0]
    mean = references["seq_rm_tp_mean"]["outputs"][0]
    assert not all(
        torch.equal(a, b) for a, b in zip(last, mean, strict=True)
    )  # MEAN really pools differently


def test_each_rank_holds_about_half_the_weights(runs, capsys):
    cases, references, ranks = runs
    lines = []
    for name in ("seq_rm_tp", "token_rm_tp", "prm_tp", "internlm2_tp", "seq_rm_pp", "prm_pp"):
        whole = references[name]["whole_bytes"]
        per_rank = [r[name]["resident_bytes"] for r in ranks]
        lines.append(
            f"{name}: whole {whole} B, per rank {per_rank} ({[round(b / whole, 3) for b in per_rank]})"
        )
        assert sum(per_rank) >= whole  # nothing is missing
        if name.endswith("_tp"):
            # Everything but the norms and the (float32, replicated) heads is split in two.
            assert all(b <= 0.56 * whole for b in per_rank), lines[-1]
        else:
            assert all(b < 0.75 * whole for b in per_rank), lines[-1]
    with capsys.disabled():
        print("\n" + "\n".join(lines))


@pytest.mark.slow  # four ranks on this 2-core machine
def test_tensor_and_pipeline_together_and_more_pipeline_stages(
    seq_rm, token_rm, prm, internlm2, tmp_path_factory
):
    """tensor_parallel_size=2 x pipeline_parallel_size=2 (4 ranks), and pipeline stages of InternLM2 and the token RM."""
    both = {"tensor_parallel_size": 2, "pipeline_parallel_size": 2}
    four = [
        Case(
            "seq_rm_tp2_pp2",
            str(seq_rm),
            {**both, "max_num_batched_tokens": 48},
            [Call(GROUP_TEXTS, "classify"), Call(GROUP_TEXTS[:3], "token_embed")],
        ),
        Case("prm_tp2_pp2", str(prm), both, [Call(PRM_TEXTS, "token_classify")]),
    ]
    two = [
        Case(
            "internlm2_pp",
            str(internlm2),
            {"pipeline_parallel_size": 2},
            [Call(GROUP_TEXTS, "token_classify")],
        ),
        Case(
            "token_rm_pp", str(token_rm), {"pipeline_parallel_size": 2}, [Call(GROUP_TEXTS, "token_classify")]
        ),
    ]
    for world, cases in ((4, four), (2, two)):
        ranks = run_spmd(world, cases, tmp_path_factory.mktemp(f"spmd{world}"))
        for case in cases:
            kwargs = {k: v for k, v in case.llm_kwargs.items() if not k.endswith("parallel_size")}
            llm = LLM(case.model, device="cpu", dtype="float32", **kwargs)
            whole = resident_parameter_bytes(llm.model)
            print(
                f"\n{case.name}: whole {whole} B, per rank {[r[case.name]['resident_bytes'] for r in ranks]}"
            )
            for call_index, call in enumerate(case.calls):
                want = [
                    o.outputs.data
                    for o in llm.encode(call.prompts, call.params, pooling_task=call.task, use_tqdm=False)
                ]
                for rank, result in enumerate(ranks):
                    for g, w in zip(result[case.name]["outputs"][call_index], want, strict=True):
                        torch.testing.assert_close(
                            g, w, atol=ATOL, rtol=0, msg=lambda m, c=case.name, r=rank: f"{c} rank {r}: {m}"
                        )
