"""Operations on real servers: API key, bounded queue (503 + Retry-After), SIGTERM drain, client timeouts,
metrics, docs, binding, and the CLI's safety defaults."""

from __future__ import annotations

import concurrent.futures
import logging
import random
import re
import threading
import time

import pytest
import requests
import torch

from rlhf_rewards.workers import RemoteWorker
from tests.support.server import InProcessServer, ServerProcess

KEY = "s3cret-key-for-tests-0123456789"
LONG_TEXT = "The quick brown fox jumps over the lazy dog. " * 20  # ~500 tokens


@pytest.fixture(scope="module")
def drained(qwen3_rm):
    """A subprocess server for the SIGTERM test, launched first so that it loads while other tests run.

    Its key comes from the environment, and it logs at debug level (which must still never show the key)."""
    proc = ServerProcess(qwen3_rm, "--log-level", "debug", env={"RLHF_REWARDS_API_KEY": KEY}).launch()
    yield proc
    proc.__exit__(None, None, None)


@pytest.fixture(scope="module")
def servers(qwen3_rm, drained):
    """An API-key server and a tiny-queue server whose key comes from the environment (in-process threads)."""
    with (
        InProcessServer(qwen3_rm, "--api-key", KEY) as auth,
        InProcessServer(qwen3_rm, "--max-queue-size", "4", env={"RLHF_REWARDS_API_KEY": KEY}) as queue,
    ):
        yield auth, queue


def test_api_key_on_every_route_but_health(servers, caplog):
    caplog.set_level(logging.DEBUG)
    auth, _ = servers
    good = {"Authorization": f"Bearer {KEY}"}
    assert requests.get(auth.url + "/health", timeout=10).status_code == 200
    # /ping is SageMaker's health probe: open, as /health is (and as in vLLM).
    assert requests.get(auth.url + "/ping", timeout=10).status_code == 200
    for method, path, body in (
        ("post", "/pooling", {"input": "hi"}),
        ("post", "/classify", {"input": "hi"}),
        ("post", "/get_reward", {"query": ["hi"]}),
        ("post", "/tokenize", {"prompt": "hi"}),
        ("get", "/v1/models", None),
        ("get", "/v1/model_info", None),
        ("get", "/metrics", None),
        ("get", "/openapi.json", None),
        ("get", "/docs", None),
    ):
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": KEY}, {"X-API-Key": KEY}):
            r = requests.request(method, auth.url + path, json=body, headers=headers, timeout=30)
            assert r.status_code == 401, (path, headers, r.text)
            assert (
                r.json()["error"]["type"] == "AuthenticationError"
                and r.headers["WWW-Authenticate"] == "Bearer"
            )
        ok = requests.request(method, auth.url + path, json=body, headers=good, timeout=30)
        assert ok.status_code == 200, (path, ok.text)
    assert (
        requests.post(
            auth.url + "/pooling",
            json={"input": "hi"},
            timeout=30,
            headers={"Authorization": f"bearer {KEY}"},
        ).status_code
        == 200
    )
    with RemoteWorker(auth.url, api_key=KEY) as worker:
        assert len(worker.encode(["hi", "there"], pooling_task="classify")) == 2
    with RemoteWorker(auth.url, api_key="wrong") as worker, pytest.raises(PermissionError, match="API key"):
        worker.model_info()
    assert KEY not in caplog.text and all(KEY not in str(r.args) for r in caplog.records)


def test_api_key_is_compared_in_constant_time(monkeypatch):
    from rlhf_rewards.server import auth

    calls = []
    real = auth.hmac.compare_digest

    def spy(a, b):
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(auth.hmac, "compare_digest", spy)
    assert auth.key_matches(f"Bearer {KEY}", KEY) and auth.key_matches(f"bearer  {KEY} ", KEY)
    assert not auth.key_matches(f"Bearer {KEY[:-1]}", KEY) and not auth.key_matches("Bearer wrong", KEY)
    assert not auth.key_matches("Bearer \udcff", KEY)  # undecodable bytes: refused, never an exception
    assert (
        not auth.key_matches(KEY, KEY) and not auth.key_matches(None, KEY) and not auth.key_matches("", KEY)
    )
    # every comparison of a presented token went through hmac.compare_digest (no == on the secret)
    assert len(calls) == 5 and all(b == KEY.encode() for _, b in calls)


def test_api_key_from_environment(servers, monkeypatch):
    _, queue = servers
    assert requests.post(queue.url + "/pooling", json={"input": "hi"}, timeout=30).status_code == 401
    monkeypatch.setenv("RLHF_REWARDS_API_KEY", KEY)
    with RemoteWorker(queue.url) as worker:  # the client reads the same variable
        assert worker.model_info().model


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
            error = a.json()["error"]
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
    torch.testing.assert_close(
        torch.stack([o.outputs.data for o in outputs]),
        torch.stack([o.outputs.data for o in ref]),
        atol=1e-5,
        rtol=0,
    )
    assert requests.get(queue.url + "/health", timeout=10).status_code == 200


def test_a_draining_server_refuses_new_work_with_503(servers):
    _, queue = servers  # what SIGTERM sets before uvicorn's graceful shutdown
    headers = {"Authorization": f"Bearer {KEY}"}
    queue.served.draining = True
    try:
        health = requests.get(queue.url + "/health", timeout=10)
        refused = requests.post(queue.url + "/pooling", json={"input": "hi"}, headers=headers, timeout=10)
    finally:
        queue.served.draining = False
    assert health.status_code == 503 and health.content == b"" and health.headers["Retry-After"] == "1"
    assert refused.status_code == 503 and refused.headers["Retry-After"] == "1"
    assert "shutting down" in refused.json()["error"]["message"]
    assert (
        requests.post(queue.url + "/pooling", json={"input": "hi"}, headers=headers, timeout=30).status_code
        == 200
    )


def _metric(url: str, name: str, headers: dict | None = None) -> float:
    text = requests.get(url + "/metrics", headers=headers, timeout=10).text
    match = re.search(rf"^{re.escape(name)} ([0-9.e+]+)$", text, re.M)
    return float(match.group(1)) if match else 0.0


def test_sigterm_finishes_in_flight_requests_then_exits_0(drained, llm):
    proc = drained.wait()
    headers = {"Authorization": f"Bearer {KEY}"}
    try:
        assert requests.post(proc.url + "/pooling", json={"input": "hi"}, timeout=30).status_code == 401
        texts = [f"{LONG_TEXT[:500]} {i}" for i in range(32)]
        finished: list[float] = []
        answers: list[requests.Response] = []

        def post() -> None:
            answers.append(
                requests.post(proc.url + "/pooling", json={"input": texts}, headers=headers, timeout=120)
            )
            finished.append(time.monotonic())

        threads = [threading.Thread(target=post) for _ in range(4)]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 30
        while _metric(proc.url, "rlhf_rewards_running_prompts", headers) == 0 and time.monotonic() < deadline:
            time.sleep(0.02)
        signalled = time.monotonic()
        rc = proc.terminate(timeout=120)
        for t in threads:
            t.join(60)
        assert rc == 0, proc.log()[-3000:]
        assert max(finished) > signalled  # requests were still running when SIGTERM arrived...
        assert [a.status_code for a in answers] == [200] * 4  # ...and every one of them was answered in full
        want = llm.encode(texts, pooling_task="classify", use_tqdm=False)
        for a in answers:
            got = [item["data"][0] for item in a.json()["data"]]
            torch.testing.assert_close(
                torch.tensor(got), torch.stack([w.outputs.data[0] for w in want]), atol=1e-5, rtol=0
            )
        with pytest.raises(requests.ConnectionError):
            requests.get(proc.url + "/health", timeout=5)
        log = proc.log()
        assert "DEBUG" in log and "API key required" in log
        assert KEY not in log  # no secret in the logs, even at debug level
    finally:
        proc.kill()


def test_client_timeout_leaves_the_server_consistent(server, llm):
    # Distinct token ids (no shared prefix, nothing cached): each request is real work for the engine.
    rng = random.Random(7)
    batches = [[[rng.randrange(5, 440) for _ in range(400)] for _ in range(32)] for _ in range(3)]
    prompts_before = _metric(server.url, 'rlhf_rewards_prompts_total{task="classify"}')
    for ids in batches:
        with pytest.raises(requests.ReadTimeout):  # sent in full, then the client gives up waiting
            requests.post(server.url + "/pooling", json={"input": ids}, timeout=(10, 0.01))
    texts = [{"prompt_token_ids": ids} for ids in batches[0][:4]]
    # The abandoned requests are finished (not half-run, not stuck in the queue)...
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and (
        _metric(server.url, "rlhf_rewards_queue_depth")
        or _metric(server.url, "rlhf_rewards_running_prompts")
        or _metric(server.url, 'rlhf_rewards_prompts_total{task="classify"}') < prompts_before + 3 * 32
    ):
        time.sleep(0.1)
    assert _metric(server.url, "rlhf_rewards_queue_depth") == 0
    assert _metric(server.url, "rlhf_rewards_running_prompts") == 0
    assert _metric(server.url, 'rlhf_rewards_prompts_total{task="classify"}') == prompts_before + 3 * 32
    # ...and the server keeps answering correctly, with no server error recorded.
    assert requests.get(server.url + "/health", timeout=10).status_code == 200
    body = requests.post(server.url + "/pooling", json={"input": batches[0][:4]}, timeout=60).json()
    want = llm.encode(texts, pooling_task="classify", use_tqdm=False)
    torch.testing.assert_close(
        torch.tensor([d["data"][0] for d in body["data"]]),
        torch.stack([w.outputs.data[0] for w in want]),
        atol=1e-5,
        rtol=0,
    )
    metrics = requests.get(server.url + "/metrics", timeout=10).text
    assert not re.search(r'rlhf_rewards_requests_total\{[^}]*status="5\d\d"', metrics)


def _listening_addresses(port: int) -> set[str]:
    """Local addresses listening on ``port`` (from /proc/net/tcp and tcp6)."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = open(table).read().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            local, state = line.split()[1], line.split()[3]
            addr, _, hex_port = local.partition(":")
            if state == "0A" and int(hex_port, 16) == port:  # 0A = LISTEN
                found.add(addr)
    return found


def test_metrics_docs_and_binding(server):
    requests.post(server.url + "/pooling", json={"input": "count me"}, timeout=30)
    text = requests.get(server.url + "/metrics", timeout=10).text
    for name in (
        "rlhf_rewards_requests_total",
        "rlhf_rewards_request_latency_seconds_bucket",
        "rlhf_rewards_prompt_tokens_total",
        "rlhf_rewards_queue_depth",
        "rlhf_rewards_batch_size_prompts_bucket",
        "rlhf_rewards_batch_tokens_bucket",
        "rlhf_rewards_queue_wait_seconds_bucket",
        "rlhf_rewards_engine_seconds_bucket",
        'rlhf_rewards_prompts_total{task="classify"}',
    ):
        assert name in text, name
    assert re.search(r'rlhf_rewards_requests_total\{route="/pooling",status="200"\} [1-9]', text)
    paths = requests.get(server.url + "/openapi.json", timeout=10).json()["paths"]
    assert {
        "/pooling",
        "/classify",
        "/get_reward",
        "/tokenize",
        "/v1/models",
        "/v1/model_info",
        "/health",
        "/metrics",
    } <= set(paths)
    assert "PoolingRequest" in str(paths["/pooling"])
    assert requests.get(server.url + "/docs", timeout=10).status_code == 200
    # The server was started without --host: it listens on the loopback interface only.
    assert "on http://127.0.0.1:" in server.log()
    if _listening_addresses(server.port):
        assert _listening_addresses(server.port) == {"0100007F"}  # 127.0.0.1, not 0.0.0.0 (00000000) or ::


def test_cli_safety_defaults(qwen3_rm, monkeypatch):
    import inspect

    import rlhf_rewards
    from rlhf_rewards.cli.main import build_parser
    from rlhf_rewards.cli.serve import build_served_model

    args = build_parser().parse_args(["serve", str(qwen3_rm)])
    assert args.host == "127.0.0.1" and args.api_key is None and not args.trust_remote_code
    assert not args.trust_request_chat_template
    assert inspect.signature(rlhf_rewards.LLM).parameters["trust_remote_code"].default is False
    seen: list[dict] = []

    class Captured(Exception):
        pass

    def fake_llm(*a, **kw):
        seen.append(kw)
        raise Captured

    monkeypatch.setattr(rlhf_rewards, "LLM", fake_llm)
    for argv, expected in (([], False), (["--trust-remote-code"], True)):
        with pytest.raises(Captured):
            build_served_model(build_parser().parse_args(["serve", str(qwen3_rm), *argv]))
        assert seen[-1]["trust_remote_code"] is expected  # only the explicit flag turns it on
    for argv, expected in (([], True), (["--no-enforce-eager"], False)):
        with pytest.raises(Captured):
            build_served_model(build_parser().parse_args(["serve", str(qwen3_rm), *argv]))
        assert seen[-1]["enforce_eager"] is expected  # eager unless asked, as vLLM's flag reads


def test_cli_errors_are_clear(qwen3_rm, capsys):
    from rlhf_rewards.cli.main import main

    cases = [
        ([str(qwen3_rm), "--lora-modules", "no-equals-sign"], "NAME=PATH"),
        ([str(qwen3_rm), "--max-queue-size", "0"], "--max-queue-size"),
        ([str(qwen3_rm), "--max-client-batch-size", "-1"], "--max-client-batch-size"),
        ([str(qwen3_rm), "--hf-overrides", "[1]"], "--hf-overrides"),
        ([str(qwen3_rm), "--pooler-config", '{"pooling_type": "LAST", "step_tag_id": 3}'], "step_tag_id"),
        ([str(qwen3_rm), "--lora-modules", f"rm={qwen3_rm}/no-such-adapter"], "no-such-adapter"),
        (["/no/such/model/folder"], "/no/such/model/folder"),
    ]
    for args, words in cases:
        assert main(["serve", *args]) == 2, args
        assert words in capsys.readouterr().err, args


def test_parse_lora_modules():
    from rlhf_rewards.cli.serve_flags import parse_lora_modules

    assert parse_lora_modules(["a=/x/y", '{"name": "b", "path": "org/adapter"}']) == {
        "a": "/x/y",
        "b": "org/adapter",
    }
    for bad in (["a"], ["=p"], ["a="], ["a=p", "a=q"], ['{"name": "a"}']):
        with pytest.raises(ValueError):
            parse_lora_modules(bad)
