"""The batcher in isolation, with a fake engine: merging, grouping by task, isolation of failures, limits."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest
import torch

from rlhf_rewards.outputs import PoolingOutput, PoolingRequestOutput
from rlhf_rewards.pooling.params import PoolingParams
from rlhf_rewards.server.batcher import Batcher, EngineItem, QueueFull
from rlhf_rewards.server.metrics import ServerMetrics


class FakeEngine:
    """Scores a prompt as the sum of its token ids; ids containing 13 are 'bad input' (ValueError)."""

    def __init__(self, delay: float = 0.0) -> None:
        self.calls: list[tuple[str, int]] = []
        self.delay = delay
        self.gate = threading.Event()
        self.gate.set()

    def __call__(self, task: str, items: list[EngineItem]) -> list[PoolingRequestOutput]:
        self.gate.wait(10)
        self.calls.append((task, len(items)))
        time.sleep(self.delay)
        if any(13 in item.token_ids for item in items):
            raise ValueError("token 13 is not allowed")
        return [
            PoolingRequestOutput(
                f"r{i}", PoolingOutput(torch.tensor([float(sum(item.token_ids))])), item.token_ids
            )
            for i, item in enumerate(items)
        ]


def _items(*prompts: list[int]) -> list[EngineItem]:
    return [EngineItem(list(p), PoolingParams()) for p in prompts]


def _scores(outputs: list[PoolingRequestOutput]) -> list[float]:
    return [float(o.outputs.data) for o in outputs]


async def _with_batcher(engine: FakeEngine, body, **kw):
    batcher = Batcher(
        engine,
        max_queue_size=kw.pop("max_queue_size", 1000),
        max_batch_tokens=kw.pop("max_batch_tokens", 1000),
        metrics=ServerMetrics(),
        **kw,
    )
    batcher.start()
    try:
        return await body(batcher)
    finally:
        await batcher.stop()


def test_concurrent_requests_merge_into_one_engine_call_in_order():
    engine = FakeEngine()

    async def body(batcher: Batcher):
        engine.gate.clear()  # hold the engine so every request below is queued together
        first = asyncio.ensure_future(batcher.submit("classify", _items([1])))
        await asyncio.sleep(0.05)
        rest = [asyncio.ensure_future(batcher.submit("classify", _items([i], [i, i]))) for i in range(2, 7)]
        await asyncio.sleep(0.05)
        engine.gate.set()
        return await first, await asyncio.gather(*rest)

    first, rest = asyncio.run(_with_batcher(engine, body))
    assert _scores(first) == [1.0]
    assert [_scores(r) for r in rest] == [[i, 2 * i] for i in range(2, 7)]
    assert engine.calls == [("classify", 1), ("classify", 10)]  # the five queued requests ran as ONE call


@pytest.mark.parametrize(
    "wait_s, expected_calls", [(2.0, [("classify", 2)]), (0.0, [("classify", 1), ("classify", 1)])]
)
def test_a_round_waits_for_a_request_still_arriving(wait_s, expected_calls):
    """A request being parsed/tokenized (``arriving``) joins the round about to start, up to ``batch_wait_s``."""
    engine = FakeEngine()

    async def body(batcher: Batcher):
        arrived = asyncio.Event()

        async def late_request():
            with batcher.arriving():  # received, still tokenizing: the idle loop must not start without it
                await arrived.wait()
                job = asyncio.ensure_future(batcher.submit("classify", _items([5])))
                await asyncio.sleep(0)  # submitted before the arriving count drops
            return await job

        late = asyncio.ensure_future(late_request())
        await asyncio.sleep(0.02)
        first = asyncio.ensure_future(batcher.submit("classify", _items([1])))
        await asyncio.sleep(0.2)
        arrived.set()
        return await first, await late

    first, late = asyncio.run(_with_batcher(engine, body, batch_wait_s=wait_s))
    assert (_scores(first), _scores(late)) == ([1.0], [5.0])
    assert engine.calls == expected_calls


def test_tasks_are_never_mixed_and_token_budget_splits_rounds():
    engine = FakeEngine()

    async def body(batcher: Batcher):
        engine.gate.clear()
        blocker = asyncio.ensure_future(batcher.submit("classify", _items([0])))
        await asyncio.sleep(0.05)
        jobs = [
            asyncio.ensure_future(batcher.submit(task, _items([1] * 4)))
            for task in ("classify", "embed", "classify", "classify", "embed")
        ]
        await asyncio.sleep(0.05)
        engine.gate.set()
        await blocker
        return await asyncio.gather(*jobs)

    results = asyncio.run(_with_batcher(engine, body, max_batch_tokens=8))
    assert [_scores(r) for r in results] == [[4.0]] * 5
    # classify x3 (12 tokens) does not fit the 8-token budget: two classify rounds, and embed apart.
    assert engine.calls == [("classify", 1), ("classify", 2), ("embed", 2), ("classify", 1)]


def test_a_failing_request_does_not_fail_the_others_it_was_merged_with():
    engine = FakeEngine()

    async def body(batcher: Batcher):
        engine.gate.clear()
        blocker = asyncio.ensure_future(batcher.submit("classify", _items([0])))
        await asyncio.sleep(0.05)
        good1 = asyncio.ensure_future(batcher.submit("classify", _items([2])))
        bad = asyncio.ensure_future(batcher.submit("classify", _items([13])))
        good2 = asyncio.ensure_future(batcher.submit("classify", _items([3])))
        await asyncio.sleep(0.05)
        engine.gate.set()
        await blocker
        return await asyncio.gather(good1, bad, good2, return_exceptions=True)

    good1, bad, good2 = asyncio.run(_with_batcher(engine, body))
    assert _scores(good1) == [2.0] and _scores(good2) == [3.0]
    assert isinstance(bad, ValueError) and "13" in str(bad)
    # one merged attempt, then each member alone
    assert engine.calls == [
        ("classify", 1),
        ("classify", 3),
        ("classify", 1),
        ("classify", 1),
        ("classify", 1),
    ]


def test_full_queue_refuses_with_retry_after_and_stop_drains_everything():
    engine = FakeEngine()

    async def body(batcher: Batcher):
        engine.gate.clear()
        running = asyncio.ensure_future(batcher.submit("classify", _items([1])))
        await asyncio.sleep(0.05)
        big = asyncio.ensure_future(
            batcher.submit("classify", _items([1], [2], [3]))
        )  # empty queue: admitted
        await asyncio.sleep(0.01)
        with pytest.raises(QueueFull) as info:
            await batcher.submit("classify", _items([4]))
        assert info.value.retry_after >= 1 and "--max-queue-size=3" in str(info.value)
        assert batcher.metrics.rejected.labels("queue_full")._value.get() == 1
        engine.gate.set()
        await batcher.stop()  # drains: queued work completes before stop returns
        assert big.done() and _scores(big.result()) == [1.0, 2.0, 3.0]
        return await running

    assert _scores(asyncio.run(_with_batcher(engine, body, max_queue_size=3))) == [1.0]


def test_a_cancelled_request_is_skipped():
    engine = FakeEngine()

    async def body(batcher: Batcher):
        engine.gate.clear()
        blocker = asyncio.ensure_future(batcher.submit("classify", _items([0])))
        await asyncio.sleep(0.05)
        gone = asyncio.ensure_future(batcher.submit("classify", _items([5, 5])))
        kept = asyncio.ensure_future(batcher.submit("classify", _items([7])))
        await asyncio.sleep(0.01)
        gone.cancel()
        engine.gate.set()
        await blocker
        return await kept

    assert _scores(asyncio.run(_with_batcher(engine, body))) == [7.0]
    assert engine.calls == [("classify", 1), ("classify", 1)]


class SpreadingEngine(FakeEngine):
    """Like a packed forward: one NaN prompt (token 99) in a call makes every output of the call NaN."""

    def __call__(self, task: str, items: list[EngineItem]) -> list[PoolingRequestOutput]:
        outputs = super().__call__(task, items)
        if any(99 in item.token_ids for item in items):
            for o in outputs:
                o.outputs.data = torch.tensor([float("nan")])
                o.error = "the model produced non-finite output"
        return outputs


def test_a_nan_request_is_rerun_apart_so_it_never_spoils_its_batch_mates():
    engine = SpreadingEngine()

    async def body(batcher: Batcher):
        engine.gate.clear()
        blocker = asyncio.ensure_future(batcher.submit("classify", _items([0])))
        await asyncio.sleep(0.05)
        jobs = [asyncio.ensure_future(batcher.submit("classify", _items(p))) for p in ([1], [99], [2])]
        await asyncio.sleep(0.05)
        engine.gate.set()
        await blocker
        return await asyncio.gather(*jobs)

    good1, bad, good2 = asyncio.run(_with_batcher(engine, body))
    assert _scores(good1) == [1.0] and _scores(good2) == [2.0] and good1[0].error is None
    assert bad[0].error is not None
    assert engine.calls == [
        ("classify", 1),
        ("classify", 3),
        ("classify", 1),
        ("classify", 1),
        ("classify", 1),
    ]


def test_the_server_loads_and_runs_its_model_on_one_engine_thread(qwen3_rm, monkeypatch):
    """One thread does all of the engine's torch work, model load included: every thread that runs torch's
    CPU kernels gets its own OpenMP team, and more teams than cores slows every kernel call (batcher.py)."""
    import httpx

    import rlhf_rewards
    from tests.support.server import InProcessServer

    threads: dict[str, str] = {}

    class RecordingLLM(rlhf_rewards.LLM):
        def __init__(self, *args, **kwargs):
            threads["load"] = threading.current_thread().name
            super().__init__(*args, **kwargs)

        def encode(self, *args, **kwargs):
            threads["encode"] = threading.current_thread().name
            return super().encode(*args, **kwargs)

    monkeypatch.setattr(rlhf_rewards, "LLM", RecordingLLM)
    with InProcessServer(qwen3_rm) as server:
        r = httpx.post(f"{server.url}/pooling", json={"input": [5, 6, 7], "task": "classify"}, timeout=60)
    assert r.status_code == 200
    assert threads["load"] == threads["encode"] and threads["load"].startswith("rlhf-rewards-engine")


def test_a_model_that_fails_to_load_releases_the_engine_thread(tmp_path):
    from rlhf_rewards.cli.main import build_parser
    from rlhf_rewards.cli.serve import build_served_model

    before = {t.name for t in threading.enumerate()}
    args = build_parser().parse_args(["serve", str(tmp_path / "missing")])
    with pytest.raises(Exception):  # noqa: B017 - whatever transformers raises for a missing folder
        build_served_model(args)
    time.sleep(0.2)
    left = {t.name for t in threading.enumerate()} - before
    assert not any(n.startswith("rlhf-rewards-engine") for n in left)
