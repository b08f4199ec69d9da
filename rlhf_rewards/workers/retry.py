"""Retry policy and endpoint health for :class:`~rlhf_rewards.workers.remote.RemoteWorker`.

- :class:`RetryPolicy`: how many times to retry and how long to back off (exponential, with jitter).
- :class:`EndpointPool`: picks the least-loaded usable URL, marks a URL down after consecutive failures and
  tries it again after a cool-down (which doubles while it keeps failing), and keeps a URL that answered
  503/429 aside until its ``Retry-After`` has passed.
- :func:`classify_status`: what an HTTP status means for a retrying client.
"""

from __future__ import annotations

import email.utils
import random
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

#: Statuses worth sending again (elsewhere): the server, not the request, is at fault or busy.
RETRY_STATUSES = frozenset({408, 500, 502, 503, 504, 429})
#: Statuses that mean "busy, come back later" (honour ``Retry-After``), not "broken".
BUSY_STATUSES = frozenset({429, 503})


def classify_status(status: int) -> str:
    """``"ok"``, ``"busy"`` (429/503), ``"retry"`` (other transient 5xx/408), ``"too_large"`` (413) or ``"fatal"``."""
    if 200 <= status < 300:
        return "ok"
    if status in BUSY_STATUSES:
        return "busy"
    if status in RETRY_STATUSES:
        return "retry"
    if status == 413:
        return "too_large"
    return "fatal"


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds from a ``Retry-After`` header (delta-seconds or an HTTP date); ``None`` if absent or malformed."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


@dataclass
class RetryPolicy:
    """How a failed request is retried.

    Args:
        max_retries: Retries after the first attempt (so ``max_retries + 1`` attempts in all). Default 4.
        backoff_base: First back-off in seconds; it doubles per retry. Default 0.25.
        backoff_max: Longest back-off (and longest ``Retry-After`` honoured). Default 30.
        jitter: Random spread of each back-off, as a fraction (0.25 = +-25%). Default 0.25.
    """

    max_retries: int = 4
    backoff_base: float = 0.25
    backoff_max: float = 30.0
    jitter: float = 0.25

    def __post_init__(self) -> None:
        if isinstance(self.max_retries, bool) or not isinstance(self.max_retries, int) or self.max_retries < 0:
            raise ValueError(f"max_retries must be a non-negative integer, got {self.max_retries!r}.")
        if self.backoff_base < 0 or self.backoff_max < 0 or not 0 <= self.jitter <= 1:
            raise ValueError("backoff_base and backoff_max must be >= 0 and jitter in [0, 1].")

    def backoff(self, retry: int, rng: Callable[[], float] = random.random) -> float:
        """Seconds to wait before retry number ``retry`` (0-based) when no other URL is free."""
        base = min(self.backoff_max, self.backoff_base * (2 ** retry))
        return max(0.0, base * (1 + self.jitter * (2 * rng() - 1)))


@dataclass
class Endpoint:
    """One server URL and what the client knows about it."""

    url: str
    in_flight: int = 0
    consecutive_failures: int = 0
    failures: int = 0
    down_until: float = 0.0
    busy_until: float = 0.0
    cooldown: float = 0.0
    last_error: str | None = None

    def available_at(self) -> float:
        """When this endpoint may be used again (monotonic seconds)."""
        return max(self.down_until, self.busy_until)


@dataclass
class EndpointPool:
    """The URLs of a remote worker and their health.

    Args:
        urls: Server base URLs.
        down_after: Consecutive failures that mark a URL down. Default 2.
        down_for: First cool-down of a down URL in seconds; doubles each time it is marked down again,
            up to ``down_for_max``. Default 5.
        down_for_max: Longest cool-down. Default 60.
        clock: Monotonic clock (tests pass a fake one).
    """

    urls: Sequence[str]
    down_after: int = 2
    down_for: float = 5.0
    down_for_max: float = 60.0
    clock: Callable[[], float] = time.monotonic
    endpoints: list[Endpoint] = field(init=False)

    def __post_init__(self) -> None:
        if not self.urls:
            raise ValueError("urls is empty: pass at least one server URL.")
        if len(set(self.urls)) != len(self.urls):
            raise ValueError(f"urls has duplicates: {list(self.urls)}.")
        self.endpoints = [Endpoint(u) for u in self.urls]
        self._turn = 0

    def pick(self, avoid: Iterable[str] = ()) -> tuple[Endpoint, float]:
        """The endpoint to use next and how long to wait before using it.

        Usable endpoints (not down, not busy) not in ``avoid`` come first, the least loaded of them (ties in
        turn); then usable ones in ``avoid``; when none is usable, the one available soonest, with the wait.
        """
        now = self.clock()
        avoid = set(avoid)
        usable = [e for e in self.endpoints if e.available_at() <= now]
        for group in ([e for e in usable if e.url not in avoid], usable):
            if group:
                self._turn += 1
                n = len(self.endpoints)
                order = {e.url: (i - self._turn) % n for i, e in enumerate(self.endpoints)}
                best = min(group, key=lambda e: (e.in_flight, order[e.url]))
                return best, 0.0
        soonest = min(self.endpoints, key=Endpoint.available_at)
        return soonest, max(0.0, soonest.available_at() - now)

    def success(self, endpoint: Endpoint) -> None:
        """The endpoint answered: it is up."""
        endpoint.consecutive_failures = 0
        endpoint.down_until = 0.0
        endpoint.cooldown = 0.0
        endpoint.last_error = None

    def failure(self, endpoint: Endpoint, error: str) -> None:
        """The endpoint failed (connection error, timeout, 5xx); after ``down_after`` in a row it is down."""
        endpoint.failures += 1
        endpoint.consecutive_failures += 1
        endpoint.last_error = error
        if endpoint.consecutive_failures >= self.down_after:
            endpoint.cooldown = min(self.down_for_max, endpoint.cooldown * 2 if endpoint.cooldown else self.down_for)
            endpoint.down_until = self.clock() + endpoint.cooldown

    def busy(self, endpoint: Endpoint, seconds: float) -> None:
        """The endpoint asked to be left alone for ``seconds`` (503/429 with ``Retry-After``)."""
        endpoint.busy_until = max(endpoint.busy_until, self.clock() + seconds)

    def down(self) -> list[str]:
        """URLs marked down now."""
        now = self.clock()
        return [e.url for e in self.endpoints if e.down_until > now]


__all__ = ["BUSY_STATUSES", "RETRY_STATUSES", "Endpoint", "EndpointPool", "RetryPolicy", "classify_status",
           "parse_retry_after"]
