"""``rlhf-rewards serve --tensor-parallel-size 2`` and a Ray replica spanning two processes score like one
process (slow: each starts a server or a Ray cluster, plus the worker ranks)."""

from __future__ import annotations

import psutil
import pytest
import requests
import torch

from rlhf_rewards import LLM
from tests.parallel.conftest import GROUP_TEXTS, PRM_TEXTS
from tests.support.server import ServerProcess

pytestmark = pytest.mark.slow


def _ranks(pid: int) -> list[psutil.Process]:
    """The worker ranks a process started (spawned interpreters; not multiprocessing's resource tracker)."""
    return [p for p in psutil.Process(pid).children() if "spawn_main" in " ".join(p.cmdline())]


def _reference(path, texts, task):
    llm = LLM(str(path), device="cpu", dtype="float32")
    return [o.outputs.data for o in llm.encode(texts, pooling_task=task, use_tqdm=False)]


def test_serve_with_tensor_parallel_size_2(prm):
    from rlhf_rewards.workers import RemoteWorker

    want = _reference(prm, PRM_TEXTS, "token_classify")
    with ServerProcess(prm, "--tensor-parallel-size", "2", "--dtype", "float32") as server:
        ranks = _ranks(server.proc.pid)
        assert len(ranks) == 2  # the server schedules; it started one worker per rank
        answer = requests.post(
            server.url + "/pooling", json={"input": PRM_TEXTS, "task": "token_classify"}, timeout=120
        )
        assert answer.status_code == 200, answer.text
        for item, w in zip(answer.json()["data"], want, strict=True):
            torch.testing.assert_close(
                torch.tensor(item["data"], dtype=torch.float32).reshape(w.shape), w, atol=1e-5, rtol=0
            )
        worker = RemoteWorker(
            server.url, max_batch_size=2, max_concurrency=2
        )  # concurrent server-side batches
        try:
            outs = worker.encode(PRM_TEXTS * 3, pooling_task="token_classify")
        finally:
            worker.close()
        for out, w in zip(outs, want * 3, strict=True):
            torch.testing.assert_close(
                torch.as_tensor(out.outputs.data, dtype=torch.float32), w, atol=1e-5, rtol=0
            )
        assert server.terminate(60) == 0
        psutil.wait_procs(ranks, timeout=30)
        assert not any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in ranks)
        assert "Traceback" not in server.log()


def test_ray_replica_spanning_two_ranks(seq_rm):
    ray = pytest.importorskip("ray")
    from rlhf_rewards.workers import RayWorkerPool

    want = _reference(seq_rm, GROUP_TEXTS, "classify")
    # Two logical GPUs: num_gpus_per_replica=2 makes the replica split its model in two (tensor_parallel_size
    # defaults to it); device="cpu" runs that split on gloo, as it would run on nccl over the two GPUs.
    ray.init(num_cpus=2, num_gpus=2, include_dashboard=False, log_to_driver=False)
    try:
        with RayWorkerPool(
            str(seq_rm),
            num_replicas=1,
            num_gpus_per_replica=2,
            num_cpus_per_replica=1,
            device="cpu",
            dtype="float32",
        ) as pool:
            outs = pool.encode(GROUP_TEXTS, pooling_task="classify")
            pid = ray.get(pool.actors[0].ping.remote())["pid"]
            assert len(_ranks(pid)) == 2  # the replica schedules; it started one worker per rank
    finally:
        ray.shutdown()
    for out, w in zip(outs, want, strict=True):
        torch.testing.assert_close(
            torch.as_tensor(out.outputs.data, dtype=torch.float32), w, atol=1e-5, rtol=0
        )
