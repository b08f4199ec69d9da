"""Operations on real servers: API key, bounded queue (503 + Retry-After), SIGTERM drain, metrics, docs, CLI."""

from __future__ import annotations

import concurrent.futures
import re
import threading
import time

import pytest
import requests
import torch

from rlhf_rewards.workers import RemoteWorker
from tests.server.launcher import ServerProcess

KEY = "s3cret-key-for-tests-0123456789"
LONG_TEXT = "The quick brown fox jumps over the lazy dog. " * 20  # ~500 tokens


@pytest.fixture(scope="module")
def servers(qwen3_rm):
    """An API-key server and a tiny-queue server whose key comes from the environment (loaded in parallel)."""
    auth = ServerProcess(qwen3_rm, "--api-key", KEY).launch()
    queue = ServerProcess(qwen3_rm, "--max-queue-size", "4", env={"RLHF_REWARDS_API_KEY": KEY}).launch()
    with auth, queue:
        yield auth, queue


def test_api_key_on_every_route_but_health(servers):
    auth, _ = servers
    good = {"Authorization": f"Bearer {KEY}"}
    assert requests.get(auth.url + "/health", timeout=10).status_code == 200
    for method, path, body in (("post", "/pooling", {"input": "hi"}), ("post", "/classify", {"input": "hi"}),
                               ("post", "/get_reward", {"query": ["hi"]}), ("post", "/tokenize", {"prompt": "hi"}),
                               ("get", "/v1/models", None), ("get", "/v1/model_info", None), ("get", "/metrics", None),
                               ("get", "/openapi.json", None), ("get", "/docs", None)):
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": KEY}, {"X-API-Key": KEY}):
            r = requests.request(method, auth.url + path, json=body, headers=headers, timeout=30)
            assert r.status_code == 401, (path, headers, r.text)
            assert r.json()["type"] == "AuthenticationError" and r.headers["WWW-Authenticate"] == "Bearer"
        ok = requests.request(method, auth.url + path, json=body, headers=good, timeout=30)
        assert ok.status_code == 200, (path, ok.text)
    assert requests.post(auth.url + "/pooling", json={"input": "hi"}, timeout=30,
                         headers={"Authorization": f"bearer {KEY}"}).status_code == 200
    with RemoteWorker(auth.url, api_key=KEY) as worker:
        assert len(worker.encode(["hi", "there"], pooling_task="classify")) == 2
    with RemoteWorker(auth.url, api_key="wrong") as worker, pytest.raises(PermissionError, match="API key"):
        worker.model_info()
    assert KEY not in auth.log()


def test_api_key_from_environment(servers, monkeypatch):
    _, queue = servers
    assert requests.post(queue.url + "/pooling", json={"input": "hi"}, timeout=30).status_code == 401
    monkeypatch.setenv("RLHF_REWARDS_API_KEY", KEY)
    with RemoteWorker(queue.url) as worker:  # the client reads the same variable
        assert worker.model_info().model
    assert KEY not in queue.log()


def test_full_queue_answers_503_with_retry_after_and_remote_worker_waits(servers, llm):
    _, queue = servers
    headers = {"Authorization": f"Bearer {KEY}"}
    texts = [f"{LONG_TEXT} {i}" for i in range(8)]

    def post(_):
        return requests.post(queue.url + "/pooling", json={"input": texts}, headers=headers, timeout=120)

    with concurrent.futures.ThreadPoolExecutor(24) as pool:
        answers = list(pool.map(post, range(24)))
    codes = [a.status_code for a in answers]
    assert set(codes) <= {200, 503} and 503 in codes and 200 in codes, codes
    want = [float(o.outputs.data[0]) for o in llm.encode(texts, pooling_task="classify", use_tqdm=False)]
    for a in answers:
        if a.status_code == 503:
            assert int(a.headers["Retry-After"]) >= 1
            error = a.json()
            assert error["type"] == "ServiceUnavailableError" and "--max-queue-size=4" in error["message"]
        else:
            got = [d["data"][0] for d in a.json()["data"]]
            torch.testing.assert_close(torch.tensor(got), torch.tensor(want), atol=1e-5, rtol=0)
    metrics = requests.get(queue.url + "/metrics", headers=headers, timeout=10).text
    assert re.search(r'rlhf_rewards_rejected_total\{reason="queue_full"\} [1-9]', metrics)

    many = [f"{LONG_TEXT} #{i}" for i in range(96)]
    with RemoteWorker(queue.url, api_key=KEY, max_batch_size=8, max_concurrency=12, max_retries=50) as worker:
        outputs = worker.encode(many, pooling_task="classify")
        assert worker.stats.retries > 0  # it was refused and came back after Retry-After
        assert worker.health().down == []  # busy is not down
    ref = llm.encode(many, pooling_task="classify", use_tqdm=False)
    torch.testing.assert_close(torch.stack([o.outputs.data for o in outputs]),
                               torch.stack([o.outputs.data for o in ref]), atol=1e-5, rtol=0)
    assert requests.get(queue.url + "/health", timeout=10).status_code == 200


def _metric(url: str, name: str) -> float:
    text = requests.get(url + "/metrics", timeout=10).text
    match = re.search(rf"^{re.escape(name)} ([0-9.e+]+)$", text, re.M)
    return float(match.group(1)) if match else 0.0


def test_sigterm_finishes_in_flight_requests_then_exits_0(qwen3_rm, llm):
    proc = ServerProcess(qwen3_rm).start()
    try:
        texts = [f"{LONG_TEXT} {i}" for i in range(256)]
        finished: list[float] = []
        answers: list[requests.Response] = []

        def post() -> None:
            answers.append(requests.post(proc.url + "/pooling", json={"input": texts}, timeout=120))
            finished.append(time.monotonic())

        threads = [threading.Thread(target=post) for _ in range(4)]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 30
        while _metric(proc.url, "rlhf_rewards_running_prompts") == 0 and time.monotonic() < deadline:
            time.sleep(0.02)
        signalled = time.monotonic()
        rc = proc.terminate(timeout=120)
        for t in threads:
            t.join(60)
        assert rc == 0, proc.log()[-3000:]
        assert max(finished) > signalled  # requests were still running when SIGTERM arrived...
        assert [a.status_code for a in answers] == [200] * 4  # ...and every one of them was answered in full
        want = llm.encode(texts[:3], pooling_task="classify", use_tqdm=False)
        for a in answers:
            data = a.json()["data"]
            assert len(data) == 256
            for item, w in zip(data, want, strict=False):
                assert abs(item["data"][0] - float(w.outputs.data[0])) < 1e-5
        with pytest.raises(requests.ConnectionError):
            requests.get(proc.url + "/health", timeout=5)
    finally:
        proc.__exit__(None, None, None)


def test_metrics_docs_and_binding(server):
    requests.post(server.url + "/pooling", json={"input": "count me"}, timeout=30)
    text = requests.get(server.url + "/metrics", timeout=10).text
    for name in ("rlhf_rewards_requests_total", "rlhf_rewards_request_latency_seconds_bucket",
                 "rlhf_rewards_prompt_tokens_total", "rlhf_rewards_queue_depth", "rlhf_rewards_batch_size_prompts_bucket",
                 "rlhf_rewards_batch_tokens_bucket", "rlhf_rewards_queue_wait_seconds_bucket",
                 "rlhf_rewards_engine_seconds_bucket", 'rlhf_rewards_prompts_total{task="classify"}'):
        assert name in text, name
    assert re.search(r'rlhf_rewards_requests_total\{route="/pooling",status="200"\} [1-9]', text)
    paths = requests.get(server.url + "/openapi.json", timeout=10).json()["paths"]
    assert {"/pooling", "/classify", "/get_reward", "/tokenize", "/v1/models", "/v1/model_info", "/health",
            "/metrics"} <= set(paths)
    assert "PoolingRequest" in str(paths["/pooling"])
    assert requests.get(server.url + "/docs", timeout=10).status_code == 200
    assert "on http://127.0.0.1:" in server.log()  # the default bind is this machine only


def test_cli_errors_are_clear(qwen3_rm, capsys):
    from rlhf_rewards.cli.main import main
    from rlhf_rewards.cli.serve import default_model

    cases = [
        ([str(qwen3_rm), "--lora-modules", "no-equals-sign"], "NAME=PATH"),
        ([str(qwen3_rm), "--max-queue-size", "0"], "--max-queue-size"),
        ([str(qwen3_rm), "--pooler-config", '{"pooling_type": "LAST", "step_tag_id": 3}'], "step_tag_id"),
    ]
    if default_model() is None:
        cases.append(([], "no MODEL given"))
    for args, words in cases:
        assert main(["serve", *args]) == 2
        assert words in capsys.readouterr().err


def test_parse_lora_modules():
    from rlhf_rewards.cli.serve import parse_lora_modules

    assert parse_lora_modules(["a=/x/y", '{"name": "b", "path": "org/adapter"}']) == {"a": "/x/y", "b": "org/adapter"}
    for bad in (["a"], ["=p"], ["a="], ["a=p", "a=q"], ['{"name": "a"}']):
        with pytest.raises(ValueError):
            parse_lora_modules(bad)
