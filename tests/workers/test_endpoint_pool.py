"""The one endpoint pool of ``workers/endpoint_pool.py``, by itself: a fake clock, URL-like and actor-like endpoints,
down-marking with a doubling cool-down, busy-until, least-loaded picking, in-flight limits and the retry loop
(``EndpointPool.call``) that both ``RemoteWorker`` and ``RayWorkerPool`` send every request through."""

from __future__ import annotations

import asyncio

import pytest

from rlhf_rewards.workers.base import WorkerStats
from rlhf_rewards.workers.endpoint_pool import EndpointPool
from rlhf_rewards.workers.retry import EndpointBusy, EndpointFailure, RetryPolicy

NO_WAIT = RetryPolicy(max_retries=3, backoff_base=0.0, jitter=0.0)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class FakeActor:
    """Stands in for a Ray actor handle: scripted outcomes per call (the last one repeats)."""

    def __init__(self, *script: str) -> None:
        self.script = list(script) or ["ok"]
        self.calls: list[list[int]] = []

    async def encode(self, prompts: list[int]) -> list[int]:
        self.calls.append(list(prompts))
        action = self.script.pop(0) if len(self.script) > 1 else self.script[0]
        await asyncio.sleep(0)  # a real await, so concurrent calls interleave
        if action == "dead":
            raise EndpointFailure("ActorDiedError: the actor died")
        if action == "bad":
            raise ValueError("prompts[0] is an empty string")
        return [p * 10 for p in prompts]


def test_two_endpoints_down_marking_and_cooldown_doubling_with_a_fake_clock():
    clock = Clock()
    pool = EndpointPool(["u1", "u2"], down_after=2, down_for=4.0, down_for_max=20.0, clock=clock)
    u1, u2 = pool.endpoints
    pool.failure(u1, "refused")
    assert pool.down() == [] and u1.consecutive_failures == 1  # one failure is not down
    pool.success(u1)
    pool.failure(u1, "refused")
    assert pool.down() == []  # the success in between reset the count
    pool.failure(u1, "refused")
    assert pool.down() == ["u1"] and u1.cooldown == 4.0 and u1.down_until == clock.now + 4.0
    assert pool.pick()[0] is u2 and pool.pick(avoid=["u2"])[0] is u2  # a down endpoint is never picked
    clock.now += 4.0
    assert pool.down() == [] and pool.pick(avoid=["u2"])[0] is u1  # back after its cool-down
    for want in (8.0, 16.0, 20.0, 20.0):  # failing again: it doubles, up to down_for_max
        pool.failure(u1, "refused")
        assert u1.cooldown == want and pool.down() == ["u1"]
    assert u1.failures == 7 and u1.last_error == "refused"
    pool.success(u1)
    assert pool.down() == [] and u1.cooldown == 0.0 and u1.last_error is None and u1.successes == 2
    pool.failure(u1, "refused")
    pool.failure(u1, "refused")
    assert u1.cooldown == 4.0  # a cleared endpoint starts again from down_for

    # both down: the one back first, with the wait
    pool.failure(u2, "refused")
    pool.failure(u2, "refused")
    clock.now += 1.0
    endpoint, wait = pool.pick()
    assert endpoint is u1 and wait == pytest.approx(3.0)
    assert sorted(pool.down()) == ["u1", "u2"]


def test_busy_until_is_not_down_and_ends_on_time():
    clock = Clock()
    pool = EndpointPool(["u1", "u2"], clock=clock)
    u1, u2 = pool.endpoints
    pool.busy(u1, 3.0)
    pool.busy(u1, 1.0)  # a shorter Retry-After never shortens the busy period
    assert u1.busy_until == clock.now + 3.0
    assert pool.down() == [] and u1.failures == 0  # busy is not down and not a failure
    assert [pool.pick()[0] for _ in range(3)] == [u2, u2, u2]
    clock.now += 3.0
    assert {pool.pick()[0].name for _ in range(4)} == {"u1", "u2"}


def test_least_loaded_pick_with_rotation():
    clock = Clock()
    pool = EndpointPool({"a": object(), "b": object(), "c": object()}, clock=clock)
    a, b, c = pool.endpoints
    # equal load: taken in turn, so every endpoint gets work
    assert {pool.pick()[0].name for _ in range(3)} == {"a", "b", "c"}
    pool.acquire(a, units=8)
    pool.acquire(b, units=1)
    pool.acquire(b, units=1)
    assert pool.pick()[0] is c  # nothing in flight
    pool.acquire(c, units=4)
    assert pool.pick()[0] is b  # fewest units (prompts) in flight, although it has the most calls
    assert pool.pick(avoid=["b"])[0] is c  # untried before least loaded
    pool.release(b, units=1)
    pool.release(b, units=1)
    assert (b.in_flight, b.in_flight_units, a.in_flight, a.in_flight_units) == (0, 0, 1, 8)
    assert pool.pick()[0] is b


def test_arguments_are_validated():
    for bad, match in (
        ({"endpoints": []}, "endpoints is empty"),
        ({"endpoints": ["x", "x"]}, "duplicate"),
        ({"endpoints": ["x"], "down_after": 0}, "down_after"),
        ({"endpoints": ["x"], "max_in_flight": 0}, "max_in_flight"),
        ({"endpoints": ["x"], "down_for": -1}, "down_for"),
    ):
        with pytest.raises(ValueError, match=match):
            EndpointPool(**bad)
    pool = EndpointPool({"replica-0": "handle"}, down_for=90.0)
    assert pool.endpoints[0].target == "handle" and pool.urls == ["replica-0"]
    assert pool.down_for_max == 90.0  # a longer first cool-down is never cut by the default cap


async def test_in_flight_limits_make_lease_wait_for_a_release():
    pool = EndpointPool(["a", "b"], max_in_flight=1, max_total_in_flight=2)
    first = await pool.lease()
    second = await pool.lease()
    assert {first.name, second.name} == {"a", "b"}  # one each: the per-endpoint limit spreads them
    third = asyncio.ensure_future(pool.lease())
    await asyncio.sleep(0.05)
    assert not third.done()  # both full: it waits...
    pool.release(second)
    assert await asyncio.wait_for(third, 10) is second  # ...for the slot a release frees

    total = EndpointPool(["a", "b"], max_total_in_flight=1)
    held = await total.lease()
    waiting = asyncio.ensure_future(total.lease(avoid=[held.name]))
    await asyncio.sleep(0.05)
    assert not waiting.done()  # the other endpoint is free, but the total is reached
    total.release(held)
    assert (await asyncio.wait_for(waiting, 10)).name != held.name


async def test_the_pool_drives_actor_like_endpoints_and_loses_nothing_when_one_dies():
    dead, live = FakeActor("ok", "dead"), FakeActor("ok")
    pool = EndpointPool({"replica-0": dead, "replica-1": live}, down_after=1, down_for=60.0, max_in_flight=2)
    stats = WorkerStats()

    async def chunk(prompts: list[int]) -> list[int]:
        return await pool.call(
            lambda e: e.target.encode(prompts),
            NO_WAIT,
            units=len(prompts),
            what=f"prompts {prompts}",
            stats=stats,
        )

    chunks = [[i, i + 1] for i in range(0, 16, 2)]
    results = await asyncio.gather(*(chunk(c) for c in chunks))
    assert results == [[p * 10 for p in c] for c in chunks]  # every chunk once, in order
    assert dead.calls[0] in chunks and len(dead.calls) >= 2  # it served, then died with work in flight
    assert pool.down() == ["replica-0"]  # down after one failure (the Ray pool's rule)
    done = [p for c in live.calls for p in c] + [p for c in dead.calls[:1] for p in c]
    assert sorted(done) == list(range(16))  # the dead replica's failed chunks ran again, on the live one
    assert stats.failures >= 1 and stats.retries == stats.failures
    r0, r1 = pool.endpoints
    assert r0.failures == stats.failures and r0.successes == 1 and r1.successes == len(live.calls)
    assert r0.in_flight == r1.in_flight == 0 and r0.in_flight_units == r1.in_flight_units == 0


async def test_call_retries_endpoint_faults_only_and_stops_at_the_budget():
    clock = Clock()
    pool = EndpointPool({"r0": FakeActor("bad"), "r1": FakeActor("bad")}, down_after=1, clock=clock)
    stats = WorkerStats()
    with pytest.raises(ValueError, match=r"prompts\[0\] is an empty string"):
        await pool.call(lambda e: e.target.encode([1]), NO_WAIT, stats=stats)
    # the request's own mistake: one attempt, no retry, and nobody is down
    assert sum(len(e.target.calls) for e in pool.endpoints) == 1
    assert stats.retries == 0 and stats.failures == 0 and pool.down() == []

    always_dead = EndpointPool({"r0": FakeActor("dead"), "r1": FakeActor("dead")}, down_after=5, clock=clock)
    with pytest.raises(
        KeyError,
        match=r"prompts 0\.\.0 failed 4 times over \['r0', 'r1'\]; last error: "
        "ActorDiedError",
    ):
        await always_dead.call(
            lambda e: e.target.encode([0]), NO_WAIT, what="prompts 0..0", error=KeyError, stats=stats
        )
    assert [len(e.target.calls) for e in always_dead.endpoints] == [
        2,
        2,
    ]  # alternating, max_retries + 1 in all
    assert stats.failures == 4 and stats.retries == 3


async def test_busy_answers_are_retried_elsewhere_without_counting_as_failures():
    clock = Clock()
    pool = EndpointPool(["u1", "u2"], clock=clock)
    seen: list[str] = []

    async def attempt(endpoint):
        seen.append(endpoint.name)
        if endpoint.name == "u1":
            raise EndpointBusy("HTTP 503: queue full", retry_after=7.0)
        return endpoint.name

    pool.endpoints[1].in_flight = 1  # make u1 the first pick
    assert await pool.call(attempt, NO_WAIT) == "u2"
    u1 = pool.endpoints[0]
    assert seen == ["u1", "u2"] and u1.busy_until == clock.now + 7.0
    assert u1.failures == 0 and u1.consecutive_failures == 0 and pool.down() == []
    assert u1.last_error == "HTTP 503: queue full"
