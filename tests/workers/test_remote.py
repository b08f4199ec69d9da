"""``RemoteWorker`` against real ``rlhf-rewards serve`` processes: the same outputs as ``LLM.encode``,
spread over several URLs, and failover with nothing lost when a server dies mid-run."""

from __future__ import annotations

import asyncio
import re
import threading
import time

import pytest
import requests
import torch

from rlhf_rewards import LLM, PoolingParams
from rlhf_rewards.workers import RemoteWorker, RewardWorker
from rlhf_rewards.workers.calls import KEEP_LAST_TOKENS
from tests.conftest import MIXED_TEXTS
from tests.server.conftest import SERVED_NAME, SERVER_ARGS
from tests.support.server import ServerProcess, shared_server

ATOL = 1e-5


@pytest.fixture(scope="module")
def pair(qwen3_rm):
    """Two ``rlhf-rewards serve`` processes of the same model: the session's shared server and one of this
    module's own, which the last test kills."""
    b = ServerProcess(qwen3_rm, *SERVER_ARGS).launch()  # loads while the shared one starts (or already runs)
    a = shared_server(qwen3_rm, *SERVER_ARGS)
    with b:
        yield a, b


@pytest.fixture(scope="module")
def llm(qwen3_rm):
    return LLM(str(qwen3_rm), device="cpu")


def _assert_same(got, want) -> None:
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        assert g.outputs.data.shape == w.outputs.data.shape
        torch.testing.assert_close(g.outputs.data, w.outputs.data, atol=ATOL, rtol=0)
        assert g.prompt_token_ids == w.prompt_token_ids
        assert g.error is None and w.error is None


def _served_prompts(url: str) -> float:
    text = requests.get(url + "/metrics", timeout=10).text
    return sum(float(v) for v in re.findall(r"^rlhf_rewards_prompts_total\{[^}]*\} ([0-9.e+]+)$", text, re.M))


def test_same_outputs_as_the_engine_for_every_task_and_prompt_form(pair, llm):
    tok = llm.get_tokenizer()
    prompts = [
        MIXED_TEXTS[0],
        {"prompt": MIXED_TEXTS[1]},
        {"prompt_token_ids": tok(MIXED_TEXTS[2])["input_ids"]},
        *MIXED_TEXTS[3:],
    ] * 3
    before = [_served_prompts(s.url) for s in pair]
    with RemoteWorker([s.url for s in pair], max_batch_size=3) as worker:
        assert isinstance(worker, RewardWorker)
        for task, params in (
            ("classify", None),
            ("classify", PoolingParams(use_activation=False)),
            ("token_classify", PoolingParams(truncate_prompt_tokens=4)),
            ("embed", PoolingParams(dimensions=16, normalize=False)),
            ("token_embed", None),
        ):
            _assert_same(
                worker.encode(prompts, params, pooling_task=task),
                llm.encode(
                    prompts, params, pooling_task=task, tokenization_kwargs=KEEP_LAST_TOKENS, use_tqdm=False
                ),
            )
        # per-prompt parameters and a call-level truncation (a worker keeps the last tokens)
        per_prompt = [PoolingParams(use_activation=bool(i % 2)) for i in range(len(prompts))]
        _assert_same(
            worker.encode(prompts, per_prompt, pooling_task="classify", truncate_prompt_tokens=6),
            llm.encode(
                prompts,
                per_prompt,
                pooling_task="classify",
                truncate_prompt_tokens=6,
                tokenization_kwargs=KEEP_LAST_TOKENS,
                use_tqdm=False,
            ),
        )
        assert worker.stats.requests == 6 and worker.stats.prompts == 6 * len(prompts)
        assert worker.stats.tokens > 0 and worker.stats.retries == 0
    after = [_served_prompts(s.url) for s in pair]
    assert all(a > b for a, b in zip(after, before, strict=True))  # both URLs did part of the work


def test_aencode_from_other_event_loops_and_concurrently(pair, llm):
    want = llm.encode(MIXED_TEXTS, pooling_task="classify", use_tqdm=False)
    with RemoteWorker([s.url for s in pair], max_batch_size=2) as worker:

        async def many():
            return await asyncio.gather(
                *(worker.aencode(MIXED_TEXTS, pooling_task="classify") for _ in range(4))
            )

        for got in asyncio.run(many()):
            _assert_same(got, want)
        _assert_same(asyncio.run(worker.aencode(MIXED_TEXTS, pooling_task="classify")), want)


def test_model_info_render_chat_and_health(pair, llm):
    convs = [
        [{"role": "user", "content": "What is 2 + 2?"}, {"role": "assistant", "content": "4"}],
        [{"role": "user", "content": "hi"}],
    ]
    with RemoteWorker([s.url for s in pair]) as worker:
        assert worker.model_info() == llm.model_info(SERVED_NAME)
        assert worker.render_chat(convs) == llm.render_chat(convs)
        assert worker.render_chat(convs, add_generation_prompt=True) == llm.render_chat(
            convs, add_generation_prompt=True
        )
        health = worker.health()
        assert health.ok and health.down == [] and all(d["ok"] for d in health.details.values())
        with pytest.raises(ValueError, match=r"conversations\[1\] is empty"):
            worker.render_chat([convs[0], []])
    with pytest.raises(RuntimeError, match="closed"):
        worker.encode("x", pooling_task="classify")


def test_errors_match_the_engine_and_name_the_callers_prompt(pair, llm):
    prompts = [{"prompt_token_ids": [5, 6]}] * 7 + [{"prompt_token_ids": [5, 100000]}]
    with RemoteWorker(pair[0].url, max_batch_size=3) as worker:
        with pytest.raises(ValueError, match=r"prompts\[7\](\.prompt_token_ids)? has token id 100000"):
            worker.encode(prompts, pooling_task="classify")
        with pytest.raises(ValueError, match=r"prompts\[7\](\.prompt_token_ids)? has token id 100000"):
            llm.encode(prompts, pooling_task="classify", use_tqdm=False)
        with pytest.raises(ValueError, match="pooling_task is required"):
            worker.encode("x")
        with pytest.raises(ValueError, match=r"prompts\[1\] is an empty string"):
            worker.encode(["x", ""], pooling_task="classify")
        with pytest.raises(ValueError, match="only supports the parameters"):
            worker.encode("x", PoolingParams(dimensions=3), pooling_task="classify")
        with pytest.raises(ValueError, match="over max_model_len"):
            worker.encode({"prompt_token_ids": [5] * 600}, pooling_task="classify")
        assert worker.stats.retries == 0  # client mistakes are never retried


def test_failover_when_a_server_is_killed_mid_run(pair, llm):
    """One of two servers is SIGKILLed while a long call is spread over both: every prompt comes back once.

    Runs last in this module: it kills the module's own server ``b``."""
    a, b = pair
    prompts = [f"{MIXED_TEXTS[i % len(MIXED_TEXTS)]} (sample {i})" for i in range(300)]
    want = llm.encode(prompts, pooling_task="classify", use_tqdm=False)
    served_by_b = _served_prompts(b.url)
    worker = RemoteWorker([a.url, b.url], max_batch_size=4, max_concurrency=4, down_for=60)
    result: dict = {}

    def run() -> None:
        try:
            result["outputs"] = worker.encode(prompts, pooling_task="classify")
        except Exception as exc:  # noqa: BLE001 - reported below
            result["error"] = exc

    thread = threading.Thread(target=run)
    thread.start()
    deadline = time.monotonic() + 60
    while _served_prompts(b.url) < served_by_b + 40 and time.monotonic() < deadline:
        time.sleep(0.02)
    b.kill()
    thread.join(300)
    assert "error" not in result, result.get("error")
    assert not thread.is_alive()
    _assert_same(result["outputs"], want)  # complete, in order, no duplicates or gaps
    assert len({o.request_id for o in result["outputs"]}) == len(prompts)
    assert worker.stats.failures >= 1  # the kill hit requests in flight or about to be sent...
    assert worker.pool.down() == [b.url]  # ...and b was marked down, so a took over
    health = worker.health()
    assert health.ok and health.down == [b.url]
    worker.close()
