"""TRL 1.16's ``AsyncGRPOTrainer`` scoring path, run as TRL runs it.

A real ``AsyncGRPOTrainer`` run cannot happen on this machine: it generates through a vLLM server and streams
the policy's weights into it over NCCL (``trl.experimental.async_grpo.weight_transfer``), which needs vLLM
and CUDA. Its scoring half is separable, so that is what runs here, unchanged: TRL's own
``AsyncRolloutWorker`` pickles ``reward_funcs``, spawns its CUDA-free child (``_AsyncRolloutLoop``), which
renders prompts with the policy's chat template, asks ``/v1/completions`` for completions (answered here by
a stand-in for the vLLM server, the only scripted part), and scores each group with the unpickled reward
functions in ``_score_group``, every dataset column passed as a keyword. The test reads the scored samples
from TRL's rollout queue.

The reward functions cover every way to reach a model: colocated (built from a path: reloaded in the child),
remote (``RemoteWorker``: reconnects to ``rlhf-rewards serve``), async remote, and Ray (``RayWorkerPool``:
the child joins the Ray cluster and finds the replicas by name).
"""

from __future__ import annotations

import math
import queue
import time

import pytest
from fastapi import FastAPI

from rlhf_rewards import LLM, AsyncRewardFunction, RewardFunction
from rlhf_rewards.workers import RemoteWorker
from tests.compat.peers import report
from tests.support.server import AppThread, InProcessServer

pytestmark = pytest.mark.slow

TOL = 1e-5
PROMPTS = [[{"role": "user", "content": "What is 12 + 7?"}], [{"role": "user", "content": "Name a colour."}]]
ANSWER = "The answer is 19."


def fake_vllm(tokenizer) -> FastAPI:
    """The vLLM server's ``/v1/completions`` as the rollout loop reads it (token ids and their logprobs)."""
    ids = tokenizer(ANSWER, add_special_tokens=False)["input_ids"] + [
        tokenizer.convert_tokens_to_ids("<|im_end|>")
    ]
    app = FastAPI()

    @app.post("/v1/completions")
    async def completions(body: dict) -> dict:
        return {
            "choices": [
                {
                    "index": 0,
                    "text": "",
                    "token_ids": ids,
                    "finish_reason": "stop",
                    "logprobs": {"token_logprobs": [-0.5] * len(ids)},
                }
            ]
        }

    return app


def test_async_rollout_worker_scores_in_its_spawned_child(qwen3_rm, monkeypatch):
    import ray
    import trl.experimental.async_grpo.async_rollout_worker as arw
    from datasets import Dataset
    from transformers import AutoTokenizer
    from trl.chat_template_utils import qwen2_5_chat_template

    from rlhf_rewards.workers import RayWorkerPool

    policy_tok = AutoTokenizer.from_pretrained(qwen3_rm)
    policy_tok.chat_template = qwen2_5_chat_template  # a template TRL can parse responses of
    # Dataset columns named like the reward function's options reach it as keywords (TRL passes them all).
    dataset = Dataset.from_dict({"prompt": PROMPTS, "return_steps": [True, False], "kind": ["math", "chat"]})
    # AsyncRolloutWorker refuses to start without the vllm package; the child only speaks HTTP to the server.
    monkeypatch.setattr(arw, "is_vllm_available", lambda: True)
    from accelerate.state import PartialState

    PartialState()  # the trainer's Accelerator sets it up; TRL's logging in start()/stop() needs it
    llm_kwargs = {"dtype": "float32", "device": "cpu"}
    with (
        InProcessServer(qwen3_rm, "--dtype", "float32", "--device", "cpu") as server,
        AppThread(fake_vllm(policy_tok)) as vllm,
    ):
        pool = RayWorkerPool(str(qwen3_rm), num_replicas=1, num_cpus_per_replica=1, **llm_kwargs)
        reward_funcs = [
            RewardFunction(str(qwen3_rm), name="colocated", llm_kwargs=llm_kwargs),
            RewardFunction(RemoteWorker(server.url), name="remote"),
            AsyncRewardFunction(RemoteWorker(server.url), name="remote_async"),
            RewardFunction(pool, name="ray"),
        ]
        worker = arw.AsyncRolloutWorker(
            model_name="policy",
            dataset=dataset,
            reward_funcs=reward_funcs,
            processing_class=policy_tok,
            eos_token_ids=[policy_tok.eos_token_id],
            num_generations=2,
            max_inflight_tasks=2,
            vllm_server_url=vllm.url,
            max_tokens=16,
            child_ready_timeout=300,
        )
        try:
            worker.start()
            samples = []
            deadline = time.monotonic() + 300
            while len({s.group_id for s in samples}) < 2 and time.monotonic() < deadline:
                worker.check_health(stale_after_s=300)
                try:
                    samples.append(worker.rollout_buffer.get(timeout=5))
                except queue.Empty:
                    continue
        finally:
            worker.stop()
            pool.close()
            if ray.is_initialized():
                ray.shutdown()
    assert len({s.group_id for s in samples}) >= 2, "the child produced no scored groups"
    reference = RewardFunction(LLM(str(qwen3_rm), **llm_kwargs))
    worst = 0.0
    for sample in samples:
        (expected,) = reference(prompts=[sample.prompt], completions=[sample.completion])
        assert sample.completion[0]["content"] == ANSWER
        for name in ("colocated", "remote", "remote_async", "ray"):
            got = sample.metrics[f"rewards/{name}"]
            assert not math.isnan(got), name
            worst = max(worst, abs(got - expected))
        assert abs(sample.metrics["reward"] - 4 * expected) <= 4 * TOL  # TRL sums the functions' rewards
    report("trl AsyncRolloutWorker child (colocated, remote, async remote, ray)", vs_in_process=worst)
    assert worst <= TOL
