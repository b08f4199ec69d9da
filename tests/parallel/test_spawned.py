"""The vLLM experience: ``LLM(model, tensor_parallel_size=2)`` in a plain process starts its own worker rank."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist

from rlhf_rewards import LLM
from tests.parallel.conftest import GROUP_TEXTS, PRM_TEXTS


@pytest.fixture(scope="module")
def split_prm(prm):
    llm = LLM(str(prm), device="cpu", dtype="float32", tensor_parallel_size=2, max_num_batched_tokens=64)
    yield llm
    llm.shutdown()


def test_engine_started_ranks_score_like_one_process(prm, split_prm):
    reference = LLM(str(prm), device="cpu", dtype="float32", max_num_batched_tokens=64)
    (worker,) = split_prm._parallel.group.workers
    assert worker.is_alive() and dist.get_world_size() == 2 and dist.get_rank() == 0
    for texts, task in ((PRM_TEXTS, "token_classify"), (GROUP_TEXTS, "embed")):
        want = reference.encode(texts, pooling_task=task, use_tqdm=False)
        got = split_prm.encode(texts, pooling_task=task, use_tqdm=False)
        for g, w in zip(got, want, strict=True):
            torch.testing.assert_close(g.outputs.data, w.outputs.data, atol=1e-5, rtol=0)
    assert split_prm.model_info().kind == "process"
    # A client mistake is caught on rank 0 before anything is broadcast; the ranks stay in step.
    with pytest.raises(ValueError, match="prompts"):
        split_prm.encode([[]], pooling_task="token_classify")
    (again,) = split_prm.encode(PRM_TEXTS[:1], pooling_task="token_classify", use_tqdm=False)
    torch.testing.assert_close(again.outputs.data, reference.encode(PRM_TEXTS[:1], pooling_task="token_classify",
                                                                    use_tqdm=False)[0].outputs.data, atol=1e-5, rtol=0)


def test_shutdown_stops_the_workers(split_prm):
    (worker,) = split_prm._parallel.group.workers
    split_prm.shutdown()
    worker.join(30)
    assert not worker.is_alive() and worker.exitcode == 0
    assert not dist.is_initialized()
    with pytest.raises(RuntimeError, match="closed"):
        split_prm.encode(PRM_TEXTS[:1], pooling_task="token_classify")
