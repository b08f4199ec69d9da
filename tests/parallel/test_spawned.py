"""The vLLM experience: ``LLM(model, tensor_parallel_size=2)`` in a plain process starts its own worker rank."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist

from rlhf_rewards import LLM
from rlhf_rewards.parallel import resident_parameter_bytes
from tests.parallel.conftest import GROUP_TEXTS, PRM_TEXTS


@pytest.fixture(scope="module")
def split_prm(prm):
    llm = LLM(str(prm), device="cpu", dtype="float32", tensor_parallel_size=2, max_num_batched_tokens=64)
    yield llm
    llm.shutdown()


def test_engine_started_ranks_score_like_one_process(prm, split_prm):
    reference = LLM(str(prm), device="cpu", dtype="float32", max_num_batched_tokens=64)
    workers = split_prm._parallel.group.workers
    # One worker per rank; this process only schedules, and joins no process group (its torch.distributed stays
    # the user's).
    assert len(workers) == 2 and all(w.is_alive() for w in workers) and not dist.is_initialized()
    assert split_prm.device == torch.device("cpu")
    # This process holds no weights (its model is on `meta`); each worker about half of them.
    whole = resident_parameter_bytes(reference.model)
    assert resident_parameter_bytes(split_prm.model) == 0
    assert all(0.45 * whole < b < 0.56 * whole for b in split_prm._parallel.rank_resident_bytes)
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
    torch.testing.assert_close(
        again.outputs.data,
        reference.encode(PRM_TEXTS[:1], pooling_task="token_classify", use_tqdm=False)[0].outputs.data,
        atol=1e-5,
        rtol=0,
    )


@pytest.mark.timeout(60)
def test_shutdown_stops_the_workers_and_frees_the_port(split_prm):
    from tests.parallel.test_faults import _port_is_free

    workers, port = split_prm._parallel.group.workers, split_prm._parallel.group.port
    assert not _port_is_free(port)  # the workers' rendezvous store listens while the engine lives
    split_prm.shutdown()
    for worker in workers:  # shutdown() returns once they have exited: nothing to wait for here
        assert not worker.is_alive() and worker.exitcode == 0
    assert _port_is_free(port)
    assert not dist.is_initialized()
    split_prm.close()  # idempotent
    with pytest.raises(RuntimeError, match="closed"):
        split_prm.encode(PRM_TEXTS[:1], pooling_task="token_classify")


TORCHRUN_SCRIPT = """
import json, sys
import torch.distributed as dist
from rlhf_rewards import LLM
llm = LLM(sys.argv[1], device="cpu", dtype="float32", tensor_parallel_size=2)
outs = llm.encode(json.loads(sys.argv[2]), pooling_task="token_classify", use_tqdm=False)
# One file per rank: two ranks printing payloads over PIPE_BUF to one pipe can interleave mid-line.
with open(f"{sys.argv[3]}/rank{dist.get_rank()}.json", "w") as f:
    json.dump([o.outputs.data.tolist() for o in outs], f)
llm.shutdown()
"""


@pytest.mark.slow  # torchrun starts two fresh interpreters
def test_under_torchrun_every_rank_scores(prm, tmp_path):
    import json
    import os
    import subprocess
    import sys

    script = tmp_path / "score.py"
    script.write_text(TORCHRUN_SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc-per-node",
            "2",
            str(script),
            str(prm),
            json.dumps(PRM_TEXTS),
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert sorted(p.name for p in tmp_path.glob("rank*.json")) == ["rank0.json", "rank1.json"]
    reference = LLM(str(prm), device="cpu", dtype="float32")
    want = [
        o.outputs.data for o in reference.encode(PRM_TEXTS, pooling_task="token_classify", use_tqdm=False)
    ]
    for rank in (0, 1):
        payload = (tmp_path / f"rank{rank}.json").read_text()
        for got, w in zip(json.loads(payload), want, strict=True):
            torch.testing.assert_close(
                torch.tensor(got, dtype=torch.float32).reshape(w.shape), w, atol=1e-5, rtol=0
            )


@pytest.mark.slow  # starts a worker rank that then fails like rank 0
def test_a_failed_start_stops_every_rank_and_frees_the_process_group(seq_rm):
    # Valid split, invalid engine argument found after the ranks started: every rank fails alike, none waits.
    with pytest.raises(ValueError, match="max_model_len=100000 is over the model's max_position_embeddings"):
        LLM(str(seq_rm), device="cpu", tensor_parallel_size=2, max_model_len=100_000)
    assert not dist.is_initialized()
    import multiprocessing

    for child in multiprocessing.active_children():
        child.join(30)
    assert [c for c in multiprocessing.active_children() if c.name.startswith("rlhf-rewards-rank")] == []
    llm = LLM(str(seq_rm), device="cpu", tensor_parallel_size=2)  # the process can build a split engine again
    try:
        assert len(llm.encode(GROUP_TEXTS, pooling_task="classify", use_tqdm=False)) == len(GROUP_TEXTS)
    finally:
        llm.shutdown()
