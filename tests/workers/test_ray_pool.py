"""RayWorkerPool on a local CPU Ray cluster: same outputs as the in-process engine, failover when a replica dies.

One cluster and one two-replica pool serve the whole module (starting actors is the slow part).
"""

from __future__ import annotations

import asyncio
import sys
import threading
import time

import pytest
import torch

from rlhf_rewards import LLM, PoolingParams
from rlhf_rewards.workers import RewardWorker
from tests.conftest import MIXED_TEXTS

ray = pytest.importorskip("ray")

TEXTS = [f"Prompt {i}: " + "step by step " * (i % 7) + "done." for i in range(24)] + MIXED_TEXTS


@pytest.fixture(scope="module")
def reference(qwen3_rm) -> LLM:
    return LLM(str(qwen3_rm), device="cpu")


@pytest.fixture(scope="module")
def pool(qwen3_rm):
    from rlhf_rewards.workers import RayWorkerPool

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)  # actors inherit HF_HUB_OFFLINE
    try:
        with RayWorkerPool(
            str(qwen3_rm),
            num_replicas=2,
            num_cpus_per_replica=1,
            max_batch_size=4,
            max_restarts=2,
            down_for=0.5,
        ) as p:
            yield p
    finally:
        ray.shutdown()


def _assert_same(got, want) -> None:
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        assert g.error is None and w.error is None
        assert g.prompt_token_ids == w.prompt_token_ids
        torch.testing.assert_close(g.outputs.data, w.outputs.data, rtol=1e-5, atol=1e-5)
    assert len({g.request_id for g in got}) == len(got)  # one output per prompt, none repeated


def test_scores_equal_the_engine_and_spread_over_replicas(pool, reference):
    assert isinstance(pool, RewardWorker)
    before = [r["chunks_done"] for r in pool.load()]
    want = reference.encode(TEXTS, pooling_task="classify", use_tqdm=False)
    _assert_same(pool.encode(TEXTS, pooling_task="classify"), want)
    done = [r["chunks_done"] - b for r, b in zip(pool.load(), before, strict=True)]
    assert sum(done) == -(-len(TEXTS) // 4) and all(d > 0 for d in done)  # split into chunks of 4, both used

    # Per-prompt parameters travel with their prompts; token ids and texts mixed.
    params = [PoolingParams(use_activation=i % 2 == 0) for i in range(len(TEXTS))]
    prompts = [
        t if i % 3 else {"prompt_token_ids": w.prompt_token_ids}
        for i, (t, w) in enumerate(zip(TEXTS, want, strict=True))
    ]
    _assert_same(
        pool.encode(prompts, params, pooling_task="token_classify"),
        reference.encode(prompts, params, pooling_task="token_classify", use_tqdm=False),
    )

    async def concurrent():
        return await asyncio.gather(
            pool.aencode(TEXTS[:5], pooling_task="classify"), pool.aencode(TEXTS[5:], pooling_task="classify")
        )

    first, rest = asyncio.run(concurrent())
    _assert_same(first + rest, want)
    assert pool.model_info() == reference.model_info()
    conv = [[{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]]
    assert pool.render_chat(conv) == reference.render_chat(conv)
    assert pool.stats.prompts >= 3 * len(TEXTS) and pool.stats.failures == 0


def test_errors_name_the_callers_prompt(pool):
    from rlhf_rewards.workers import RayWorkerPool

    with pytest.raises(ValueError, match=r"prompts\[9\] is an empty string"):
        pool.encode(TEXTS[:9] + [""], pooling_task="classify")  # index 9 lives in a later chunk
    with pytest.raises(ValueError, match="pooling_task"):
        pool.encode(TEXTS[:3], pooling_task="nope")
    with pytest.raises(ValueError, match="pooling_params has 2 entries but there are 3 prompts"):
        pool.encode(TEXTS[:3], [PoolingParams()] * 2, pooling_task="classify")
    with pytest.raises(ValueError, match="num_replicas must be an integer >= 1"):
        RayWorkerPool("unused", num_replicas=0)
    with pytest.raises(ValueError, match="num_gpus_per_replica must be a number >= 0"):
        RayWorkerPool("unused", num_gpus_per_replica=-1)


def test_a_replicas_own_error_is_moved_to_the_callers_prompt(pool, reference):
    """Errors only the engine can find (vocabulary range, length) come back structured from the replica, as
    ``RayTaskError.cause``, and are moved from the chunk's index to the caller's."""
    from rlhf_rewards.errors import RequestError

    vocab = reference.model.vocab_size
    prompts = [{"prompt_token_ids": [5, 6]}] * 9 + [
        {"prompt_token_ids": [5, vocab + 3]}
    ]  # index 9: a later chunk
    with pytest.raises(RequestError) as info:
        pool.encode(prompts, pooling_task="classify")
    with pytest.raises(RequestError) as want:
        reference.encode(prompts, pooling_task="classify", use_tqdm=False)
    assert (info.value.field, info.value.index, info.value.subfield) == ("prompts", 9, "prompt_token_ids")
    assert str(info.value) == str(want.value)

    too_long = TEXTS[:6] + [{"prompt_token_ids": [5] * (reference.max_model_len + 1)}]
    with pytest.raises(RequestError, match=r"^prompts\[6\] has \d+ tokens, over max_model_len") as info:
        pool.encode(too_long, pooling_task="classify")
    assert info.value.index == 6
    assert pool.health().down == [] and all(not r["down"] for r in pool.load())  # the request's fault only


@pytest.mark.slow  # starts (and loses) another actor process
def test_a_replica_that_cannot_load_or_be_placed_fails_the_constructor(pool, tmp_path):
    from rlhf_rewards.workers import RayWorkerPool

    # num_cpus_per_replica=0: the module's pool holds both CPUs of the cluster.
    with pytest.raises(ValueError, match="no config.json found"):
        RayWorkerPool(str(tmp_path / "missing"), num_cpus_per_replica=0)
    with pytest.raises(RuntimeError, match="num_gpus_per_replica=1.*the cluster has"):
        RayWorkerPool(
            str(tmp_path / "missing"), num_cpus_per_replica=0, num_gpus_per_replica=1, ready_timeout=1
        )


def test_missing_ray_names_the_extra(monkeypatch):
    from rlhf_rewards.workers import RayWorkerPool

    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now fails as if it were not installed
    with pytest.raises(ImportError, match=r"pip install rlhf-rewards\[ray\]"):
        RayWorkerPool("unused")


def test_killing_a_replica_mid_call_loses_and_duplicates_nothing(pool, reference):
    """``ray.kill(actor, no_restart=False)`` while replica 0 has chunks in flight: they run again elsewhere."""
    texts = TEXTS * 2
    want = reference.encode(texts, pooling_task="classify", use_tqdm=False)
    victim = pool.actors[0]
    old_pid = ray.get(victim.ping.remote())["pid"]
    failures_before = pool.load()[0]["failures"]
    result: dict = {}

    def call():
        try:
            result["outputs"] = pool.encode(texts, pooling_task="classify")
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            result["error"] = exc

    thread = threading.Thread(target=call)
    thread.start()
    while pool.load()[0]["inflight_chunks"] == 0 and thread.is_alive():
        time.sleep(0.001)
    ray.kill(victim, no_restart=False)
    thread.join()
    assert "error" not in result, result.get("error")
    _assert_same(result["outputs"], want)
    assert pool.load()[0]["failures"] > failures_before  # the kill did hit work in flight
    assert pool.stats.retries > 0

    # Ray restarts the replica (max_restarts): the same handle answers again, from a new process.
    deadline = time.monotonic() + 120
    while True:
        try:
            new_pid = ray.get(victim.ping.remote(), timeout=30)["pid"]
            break
        except ray.exceptions.RayError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
    assert new_pid != old_pid
    health = pool.health()
    assert health.ok and health.down == []
    _assert_same(pool.encode(texts, pooling_task="classify"), want)
