"""``EndpointPool``: the endpoints of a worker, their load and health, and the retry loop over them.

It applies the retry and down-marking policy of :mod:`rlhf_rewards.workers.retry` (what is retried, where
it goes, when an endpoint is down and for how long) to every request a
:class:`~rlhf_rewards.workers.remote.RemoteWorker` sends to a server URL or a
:class:`~rlhf_rewards.workers.ray_pool.RayWorkerPool` sends to a replica actor.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from rlhf_rewards.checks import check_int, check_number
from rlhf_rewards.workers.retry import EndpointBusy, EndpointFailure, RetryPolicy

T = TypeVar("T")


@dataclass(eq=False)  # endpoints are compared by identity (targets may be actor handles)
class Endpoint:
    """One endpoint (a server URL, a replica actor) and what the pool knows about it.

    Args:
        name: How it is named in errors, health and :meth:`EndpointPool.down` (the URL; ``replica-<i>``).
        target: What the worker calls (the URL, the actor handle). Default: ``name``.
    """

    name: str
    target: Any = None
    in_flight: int = 0
    in_flight_units: int = 0
    successes: int = 0
    consecutive_failures: int = 0
    failures: int = 0
    down_until: float = 0.0
    busy_until: float = 0.0
    cooldown: float = 0.0
    last_error: str | None = None

    def __post_init__(self) -> None:
        if self.target is None:
            self.target = self.name

    @property
    def url(self) -> str:
        """``name`` (the URL, for a RemoteWorker's endpoints)."""
        return self.name

    def available_at(self) -> float:
        """When this endpoint may be used again (monotonic seconds)."""
        return max(self.down_until, self.busy_until)


class EndpointPool:
    """Endpoints of a worker, their load and health, and the retry loop over them (see the module docstring).

    Args:
        endpoints: Names (each also the target, e.g. URLs), or a mapping of name to target (e.g. actors).
        down_after: Consecutive failures that mark an endpoint down. Default 2.
        down_for: First cool-down of a down endpoint in seconds; doubles each time it fails again while
            down, up to ``down_for_max``. Default 5.
        down_for_max: Longest cool-down. Default: 60, or ``down_for`` if that is longer.
        max_in_flight: Most calls in flight on one endpoint (``None``: no limit).
        max_total_in_flight: Most calls in flight over all endpoints (``None``: no limit).
        clock: Monotonic clock (tests pass a fake one).
    """

    def __init__(
        self,
        endpoints: Sequence[str] | Mapping[str, Any],
        *,
        down_after: int = 2,
        down_for: float = 5.0,
        down_for_max: float | None = None,
        max_in_flight: int | None = None,
        max_total_in_flight: int | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        pairs = list(endpoints.items()) if isinstance(endpoints, Mapping) else [(n, n) for n in endpoints]
        names = [n for n, _ in pairs]
        if not names:
            raise ValueError("endpoints is empty: pass at least one endpoint (server URL or actor).")
        if len(set(names)) != len(names):
            raise ValueError(f"endpoints has duplicate names: {names}.")
        check_int("down_after", down_after, minimum=1)
        for name, limit in (("max_in_flight", max_in_flight), ("max_total_in_flight", max_total_in_flight)):
            if limit is not None:
                check_int(name, limit, minimum=1)
        check_number("down_for", down_for, minimum=0, expected="a number of seconds >= 0")
        self.endpoints = [Endpoint(n, t) for n, t in pairs]
        self.down_after = down_after
        self.down_for = float(down_for)
        self.down_for_max = max(60.0, self.down_for) if down_for_max is None else float(down_for_max)
        self.max_in_flight = max_in_flight
        self.max_total_in_flight = max_total_in_flight
        self.clock = clock
        self._turn = 0
        self._total_in_flight = 0
        self._changed = asyncio.Event()  # set on every release; binds to the loop that first waits on it

    @property
    def urls(self) -> list[str]:
        """The endpoints' names (for a RemoteWorker, its URLs)."""
        return [e.name for e in self.endpoints]

    # ------------------------------------------------------------------ choosing
    def pick(self, avoid: Iterable[str] = ()) -> tuple[Endpoint, float]:
        """The endpoint to use next and how long to wait before using it.

        Usable endpoints (not down, not busy, below ``max_in_flight``) not in ``avoid`` come first, the
        least loaded of them (ties in turn); then usable ones in ``avoid``; when none is usable, the one
        available soonest, with the wait (``0`` when they are only full: :meth:`lease` waits for a release).
        """
        endpoint, wait = self._select(set(avoid))
        if endpoint is not None:
            return endpoint, 0.0
        now = self.clock()
        waiting = [e for e in self.endpoints if e.available_at() > now]
        if wait is not None and waiting:
            soonest = min(waiting, key=Endpoint.available_at)
            return soonest, max(0.0, soonest.available_at() - now)
        return self._least_loaded(
            [e for e in self.endpoints if all(e is not w for w in waiting)] or self.endpoints
        ), 0.0

    def _select(self, avoid: set[str]) -> tuple[Endpoint | None, float | None]:
        """``(endpoint, 0)`` if one can take a call now, else ``(None, seconds until one is back)``, with
        ``None`` seconds when only a release can free one."""
        now = self.clock()
        usable = [e for e in self.endpoints if e.available_at() <= now]
        full = self.max_total_in_flight is not None and self._total_in_flight >= self.max_total_in_flight
        free = (
            []
            if full
            else [e for e in usable if self.max_in_flight is None or e.in_flight < self.max_in_flight]
        )
        for group in ([e for e in free if e.name not in avoid], free):
            if group:
                return self._least_loaded(group), 0.0
        waits = [e.available_at() - now for e in self.endpoints if e.available_at() > now]
        return None, (min(waits) if waits else None)

    def _least_loaded(self, group: list[Endpoint]) -> Endpoint:
        self._turn += 1
        n = len(self.endpoints)
        order = {e.name: (i - self._turn) % n for i, e in enumerate(self.endpoints)}
        return min(group, key=lambda e: (e.in_flight_units, e.in_flight, order[e.name]))

    def _untried_usable(self, tried: Iterable[str]) -> bool:
        now = self.clock()
        tried = set(tried)
        return any(e.name not in tried and e.available_at() <= now for e in self.endpoints)

    # ------------------------------------------------------------------ load
    def acquire(self, endpoint: Endpoint, units: int = 1) -> None:
        """Count a call (of ``units`` of work, e.g. prompts) in flight on ``endpoint``."""
        endpoint.in_flight += 1
        endpoint.in_flight_units += units
        self._total_in_flight += 1

    def release(self, endpoint: Endpoint, units: int = 1) -> None:
        """The call counted by :meth:`acquire` is over; wakes requests waiting in :meth:`lease`."""
        endpoint.in_flight -= 1
        endpoint.in_flight_units -= units
        self._total_in_flight -= 1
        self._changed.set()

    async def lease(
        self, units: int = 1, avoid: Iterable[str] = (), max_wait: float | None = None
    ) -> Endpoint:
        """Wait for an endpoint that can take a call (preferring one not in ``avoid``) and :meth:`acquire`
        it. Looks again after every release, when a cool-down or busy period ends, and at least every
        ``max_wait`` seconds."""
        avoid = set(avoid)
        while True:
            endpoint, wait = self._select(avoid)
            if endpoint is not None:
                self.acquire(endpoint, units)
                return endpoint
            if max_wait is not None:
                wait = max_wait if wait is None else min(wait, max_wait)
            self._changed.clear()  # no await since _select: no release can have been missed
            try:
                await asyncio.wait_for(self._changed.wait(), wait)
            except asyncio.TimeoutError:
                pass

    # ------------------------------------------------------------------ health
    def success(self, endpoint: Endpoint) -> None:
        """The endpoint answered: it is up."""
        endpoint.successes += 1
        endpoint.consecutive_failures = 0
        endpoint.down_until = 0.0
        endpoint.cooldown = 0.0
        endpoint.last_error = None

    def failure(self, endpoint: Endpoint, error: str) -> None:
        """The endpoint failed; after ``down_after`` in a row it is down for a cool-down that doubles on
        every further failure (up to ``down_for_max``)."""
        endpoint.failures += 1
        endpoint.consecutive_failures += 1
        endpoint.last_error = error
        if endpoint.consecutive_failures >= self.down_after:
            endpoint.cooldown = min(
                self.down_for_max, endpoint.cooldown * 2 if endpoint.cooldown else self.down_for
            )
            endpoint.down_until = self.clock() + endpoint.cooldown

    def busy(self, endpoint: Endpoint, seconds: float) -> None:
        """The endpoint asked to be left alone for ``seconds`` (503/429 with ``Retry-After``)."""
        endpoint.busy_until = max(endpoint.busy_until, self.clock() + seconds)

    def down(self) -> list[str]:
        """Names of the endpoints marked down now."""
        now = self.clock()
        return [e.name for e in self.endpoints if e.down_until > now]

    # ------------------------------------------------------------------ the retry loop
    async def call(
        self,
        attempt: Callable[[Endpoint], Awaitable[T]],
        policy: RetryPolicy,
        *,
        units: int = 1,
        what: str = "request",
        error: Callable[[str], Exception] = RuntimeError,
        stats: Any = None,
    ) -> T:
        """Run ``attempt(endpoint)`` until it returns, following the policy of the module docstring.

        Args:
            attempt: One try on one endpoint. It raises :class:`EndpointFailure` or :class:`EndpointBusy`
                for a fault of the endpoint; anything else it raises is the request's and goes to the caller.
            policy: Retry budget and back-off.
            units: Work the call puts on the endpoint (prompts), for least-loaded picking.
            what: The request, for the final error (``"POST /pooling"``, ``"prompts 0..3"``).
            error: Builds the worker's error raised when the budget is spent.
            stats: A :class:`~rlhf_rewards.workers.base.WorkerStats`; its ``failures`` and ``retries`` count up.
        """
        tried: list[str] = []
        retries = 0
        while True:
            endpoint = await self.lease(units, avoid=tried, max_wait=policy.backoff_max)
            try:
                result = await attempt(endpoint)
            except EndpointBusy as exc:
                busy, last = True, exc
                self.busy(endpoint, policy.backoff(retries) if exc.retry_after is None else exc.retry_after)
                endpoint.last_error = str(exc)
            except EndpointFailure as exc:
                busy, last = False, exc
                self.failure(endpoint, str(exc))
            else:
                self.success(endpoint)
                return result
            finally:
                self.release(endpoint, units)
            if stats is not None:
                stats.failures += 1
            tried.append(endpoint.name)
            retries += 1
            if retries > policy.max_retries:
                raise error(
                    f"{what} failed {retries} times over {sorted(set(tried))}; last error: {last}"
                ) from last
            if stats is not None:
                stats.retries += 1
            if not busy and not self._untried_usable(tried):
                await asyncio.sleep(policy.backoff(retries - 1))  # nowhere new to go: back off first


__all__ = ["Endpoint", "EndpointPool"]
