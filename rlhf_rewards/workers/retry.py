"""The one retry and down-marking policy of the workers that call endpoints.

:class:`~rlhf_rewards.workers.remote.RemoteWorker` calls server URLs and
:class:`~rlhf_rewards.workers.ray_pool.RayWorkerPool` calls replica actors; both send every request through
:meth:`~rlhf_rewards.workers.endpoint_pool.EndpointPool.call`, so both follow these rules:

- **What is retried**: an attempt that failed because of the endpoint, not the request. The worker says
  which by raising :class:`EndpointFailure` (RemoteWorker: a connection error, timeout or broken read,
  HTTP 5xx or 408, an unreadable 2xx body; RayWorkerPool: the replica's process died, is restarting or
  lost the result, or its model did not load) or :class:`EndpointBusy` (HTTP 429/503).
- **Where it goes**: to the least-loaded usable endpoint (fewest units of work in flight, then fewest
  calls, ties taken in turn) that this request has not tried yet. When every usable endpoint was tried,
  the least loaded of them, after a back-off (:meth:`RetryPolicy.backoff`: ``backoff_base`` doubling
  per retry up to ``backoff_max``, with jitter).
- **When an endpoint is down, and for how long**: after ``down_after`` consecutive failures (RemoteWorker:
  2, RayWorkerPool: 1) it is passed over for ``down_for`` seconds; each further failure doubles that
  cool-down, up to ``down_for_max``; then it is tried again, and one success clears it.
- **Busy is not down**: a 429/503 sets the endpoint aside until its ``Retry-After`` (or one back-off
  when the answer has none) without counting as a failure.
- **Waiting**: when every endpoint is down, busy or at its in-flight limit (``max_in_flight`` per
  endpoint, ``max_total_in_flight`` over all), a request waits for the first to come back; waiting is
  not a retry.
- **Budget**: at most ``max_retries`` retries (``max_retries + 1`` attempts); then the worker's own error
  (``RemoteWorkerError``, ``RayWorkerPoolError``) names the attempts, the endpoints tried and the last error.
- **Never retried**: the request's own mistakes (a :class:`~rlhf_rewards.errors.RequestError` or other
  ``ValueError``: HTTP 400/404/422, the engine's error inside a replica), HTTP 401/403, 413 (the
  RemoteWorker halves the request instead), any other unexpected error, and cancellation. They leave the
  endpoint's health as it was.

Retrying is safe because scoring has no side effects and every request fills its own result slots once.

The rules are applied by :class:`~rlhf_rewards.workers.endpoint_pool.EndpointPool`; what an HTTP status means
for a retrying client is :func:`~rlhf_rewards.workers.http_wire.classify_status`.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from rlhf_rewards.checks import check_int

T = TypeVar("T")


@dataclass
class RetryPolicy:
    """How a failed request is retried.

    Args:
        max_retries: Retries after the first attempt (so ``max_retries + 1`` attempts in all). Default 4.
        backoff_base: First back-off in seconds; it doubles per retry. Default 0.25.
        backoff_max: Longest back-off (and the longest a waiting request sleeps before looking again). Default 30.
        jitter: Random spread of each back-off, as a fraction (0.25 = +-25%). Default 0.25.
    """

    max_retries: int = 4
    backoff_base: float = 0.25
    backoff_max: float = 30.0
    jitter: float = 0.25

    def __post_init__(self) -> None:
        check_int("max_retries", self.max_retries, minimum=0, expected="a non-negative integer")
        if self.backoff_base < 0 or self.backoff_max < 0 or not 0 <= self.jitter <= 1:
            raise ValueError("backoff_base and backoff_max must be >= 0 and jitter in [0, 1].")

    def backoff(self, retry: int, rng: Callable[[], float] = random.random) -> float:
        """Seconds to wait before retry number ``retry`` (0-based) when no other endpoint is free."""
        base = min(self.backoff_max, self.backoff_base * (2**retry))
        return max(0.0, base * (1 + self.jitter * (2 * rng() - 1)))


class EndpointFailure(Exception):
    """Raised by an attempt when the endpoint, not the request, failed: the request is retried elsewhere."""


class EndpointBusy(Exception):
    """Raised by an attempt when the endpoint asked to be left alone (429/503): retried, not a failure.

    Args:
        message: What the endpoint answered.
        retry_after: Seconds it asked for (``Retry-After``); ``None``: one back-off.
    """

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


__all__ = ["EndpointBusy", "EndpointFailure", "RetryPolicy"]
