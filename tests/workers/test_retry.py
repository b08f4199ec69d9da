"""The retry policy and endpoint health rules, with a fake clock; and the client's behaviour against scripted
servers (503 + Retry-After, 5xx, timeouts, 400, 413)."""

from __future__ import annotations

import time

import pytest

from rlhf_rewards.errors import RequestError
from rlhf_rewards.workers import RemoteWorker
from rlhf_rewards.workers.endpoint_pool import EndpointPool
from rlhf_rewards.workers.http_wire import RemoteWorkerError, classify_status, parse_retry_after
from rlhf_rewards.workers.retry import RetryPolicy
from tests.workers.fake_server import FakeServer, score


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_backoff_doubles_is_capped_and_jittered():
    policy = RetryPolicy(backoff_base=0.5, backoff_max=3.0, jitter=0.0)
    assert [policy.backoff(i) for i in range(5)] == [0.5, 1.0, 2.0, 3.0, 3.0]
    jittered = RetryPolicy(backoff_base=1.0, jitter=0.5)
    assert jittered.backoff(0, rng=lambda: 0.0) == 0.5 and jittered.backoff(0, rng=lambda: 1.0) == 1.5
    for bad in ({"max_retries": -1}, {"max_retries": True}, {"jitter": 2.0}, {"backoff_base": -1.0}):
        with pytest.raises(ValueError):
            RetryPolicy(**bad)


def test_status_classes_and_retry_after():
    assert [classify_status(s) for s in (200, 503, 429, 500, 502, 504, 408, 413, 400, 401, 404, 422)] == [
        "ok",
        "busy",
        "busy",
        "retry",
        "retry",
        "retry",
        "retry",
        "too_large",
        "fatal",
        "fatal",
        "fatal",
        "fatal",
    ]
    assert parse_retry_after("3") == 3.0 and parse_retry_after(" 0 ") == 0.0
    assert parse_retry_after(None) is None and parse_retry_after("soon") is None
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412480.0 - 10) == pytest.approx(10.0)


def test_pool_prefers_untried_least_loaded_and_marks_down_after_repeated_failures():
    clock = Clock()
    pool = EndpointPool(["a", "b", "c"], down_after=2, down_for=5.0, down_for_max=12.0, clock=clock)
    a, b, c = pool.endpoints
    a.in_flight, b.in_flight, c.in_flight = 2, 0, 1
    assert pool.pick()[0] is b
    assert pool.pick(avoid=["b"])[0] is c
    assert pool.pick(avoid=["a", "b", "c"])[0] is b  # everything tried: still the least loaded
    pool.failure(b, "refused")
    assert pool.down() == [] and pool.pick()[0] is b  # one failure is not down
    pool.failure(b, "refused")
    assert pool.down() == ["b"] and pool.pick()[0] is c
    clock.now += 5.1
    assert pool.down() == [] and pool.pick()[0] is b  # tried again after the cool-down
    pool.failure(b, "refused")
    assert pool.down() == ["b"] and b.cooldown == 10.0  # failing again: the cool-down doubles...
    pool.failure(b, "refused")
    assert b.cooldown == 12.0  # ...up to its cap
    pool.success(b)
    assert pool.down() == [] and b.consecutive_failures == 0


def test_pool_waits_for_the_soonest_when_all_are_busy_or_down():
    clock = Clock()
    pool = EndpointPool(["a", "b"], clock=clock)
    a, b = pool.endpoints
    pool.busy(a, 3.0)
    pool.busy(b, 1.0)
    endpoint, wait = pool.pick()
    assert endpoint is b and wait == pytest.approx(1.0)
    with pytest.raises(ValueError):
        EndpointPool([])
    with pytest.raises(ValueError):
        EndpointPool(["a", "a"])


def test_503_retry_after_is_honoured():
    with FakeServer("503:1", "503:1", "ok") as fake, RemoteWorker(fake.url) as worker:
        start = time.monotonic()
        (out,) = worker.encode("hello", pooling_task="classify")
        assert time.monotonic() - start >= 1.9
        assert float(out.outputs.data[0]) == score("hello")
        assert worker.stats.retries == 2 and worker.pool.down() == []


def test_a_failing_url_is_marked_down_and_its_work_goes_elsewhere():
    prompts = [f"prompt {i}" * (i + 1) for i in range(20)]
    with (
        FakeServer("500") as broken,
        FakeServer("ok") as good,
        RemoteWorker([broken.url, good.url], max_batch_size=2, max_concurrency=2, down_for=60) as worker,
    ):
        outputs = worker.encode(prompts, pooling_task="classify")
        assert [float(o.outputs.data[0]) for o in outputs] == [score(p) for p in prompts]
        assert worker.pool.down() == [broken.url]
        assert 2 <= len(broken.calls) <= 4  # marked down after 2 failures in a row (plus what was in flight)
        assert sum(good.calls) == len(prompts)  # every prompt scored exactly once where it succeeded
        health = worker.health()
        assert health.ok and health.down == [broken.url]


def test_a_timeout_fails_over_to_another_url():
    with (
        FakeServer("sleep:3") as slow,
        FakeServer("ok") as fast,
        RemoteWorker([slow.url, fast.url], timeout=0.5, max_concurrency=1) as worker,
    ):
        worker.pool.endpoints[1].in_flight = 1  # make the slow URL the first pick
        outputs = worker.encode(["a", "bb", "ccc"], pooling_task="classify")
        worker.pool.endpoints[1].in_flight = 0
        assert [float(o.outputs.data[0]) for o in outputs] == [1.0, 2.0, 3.0]
        # one attempt timed out on the slow URL, the retry went to the other one and nothing ran twice there
        assert slow.calls == [3] and fast.calls == [3]
        assert worker.stats.failures == 1 and worker.stats.retries == 1


def test_client_errors_are_not_retried_and_name_the_callers_prompt():
    with FakeServer("400") as fake, RemoteWorker(fake.url, max_batch_size=2) as worker:
        with pytest.raises(ValueError, match=r"prompts\[\d\] is an empty string"):
            worker.encode(["a", "b"], pooling_task="classify")
        assert fake.calls == [2]


def test_the_servers_structured_error_is_moved_to_the_callers_prompt():
    # texts and token ids travel in separate requests: the second (ids, prompts 1 and 3) is refused
    prompts = ["a", {"prompt_token_ids": [1]}, "b", {"prompt_token_ids": [2]}]
    with FakeServer("ok", "400") as fake, RemoteWorker(fake.url, max_concurrency=1) as worker:
        with pytest.raises(RequestError) as info:
            worker.encode(prompts, pooling_task="classify")
    # the server's input[1] of that request is the caller's prompts[3], found from the header, not the text
    assert (info.value.field, info.value.index, info.value.subfield) == ("prompts", 3, None)
    assert str(info.value) == "prompts[3] is an empty string" and fake.calls == [2, 2]
    assert worker.stats.retries == 0


def test_without_the_structured_header_the_servers_message_is_kept_as_it_is():
    with FakeServer("400-plain") as fake, RemoteWorker(fake.url) as worker:
        with pytest.raises(ValueError) as info:
            worker.encode(["a", "b"], pooling_task="classify")
        assert not isinstance(info.value, RequestError)  # nothing to relocate: no text is parsed
        assert str(info.value) == "input[1] is an empty string"
        assert fake.calls == [2] and worker.stats.retries == 0


def test_413_splits_the_request():
    prompts = [f"p{i}" for i in range(10)]
    with FakeServer("413>3") as fake, RemoteWorker(fake.url, max_batch_size=10) as worker:
        outputs = worker.encode(prompts, pooling_task="classify")
        assert [float(o.outputs.data[0]) for o in outputs] == [score(p) for p in prompts]
        assert sum(c for c in fake.calls if c <= 3) == len(prompts)  # halved until each part fits


def test_retries_are_bounded():
    with (
        FakeServer("500") as fake,
        RemoteWorker(
            fake.url, max_retries=2, down_for=0.05, retry=RetryPolicy(max_retries=2, backoff_base=0.01)
        ) as worker,
    ):
        with pytest.raises(RemoteWorkerError, match="failed 3 times"):
            worker.encode("x", pooling_task="classify")
        assert len(fake.calls) == 3


def test_results_keep_input_order_when_answers_arrive_out_of_order():
    prompts = [[i] * (i % 7 + 1) for i in range(60)]
    with (
        FakeServer("sleep:0.2", "ok", "sleep:0.1", "ok") as a,
        FakeServer("sleep:0.05", "ok") as b,
        RemoteWorker([a.url, b.url], max_batch_size=4, max_concurrency=6) as worker,
    ):
        outputs = worker.encode([{"prompt_token_ids": p} for p in prompts], pooling_task="classify")
    assert [float(o.outputs.data[0]) for o in outputs] == [score(p) for p in prompts]
    assert len({o.request_id for o in outputs}) == len(prompts)
