"""Server-side batching: concurrent requests are queued and merged into few ``LLM.encode`` calls.

One asyncio task drains a bounded FIFO queue. Each round takes the oldest request and every queued request
of the same pooling task (up to a token budget), runs them as ONE ``encode`` call in the engine thread,
and resolves each request's future with its own slice of the outputs. While the engine runs, new requests
queue up and form the next round, so batches grow with load and an idle server answers at once.

Before a round starts, the loop waits (at most ``batch_wait_s``) for requests that are already arriving:
ones the server has received and is still tokenizing (``arriving()``), and, right after an engine call,
requests that keep coming less than ``arrival_gap_s`` apart (clients answered by that call sending their
next one). Without this, closed-loop clients split into a lone first request and "everyone else": at
concurrency 32 one text per request, the engine alternated calls of 1 and 31 texts, and a one-text call
costs about half a 31-text call (with GRPO texts, its prompt also misses the shared-prefix reuse). A
lone request on an idle server waits at most ``hold_s`` (a few milliseconds): a one-prompt request is held
that long after it was queued, so siblings sent at the same moment (a trainer posting each rollout of a group
as it finishes) share one forward, and with it their prompt's keys and values.

Requests are validated before they are queued, so a merged call rarely fails; when it does (or when it
yields a NaN/inf item error), its members are re-run one by one, so one bad request never fails the others.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import math
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from rlhf_rewards.lora.request import LoRARequest
from rlhf_rewards.outputs import PoolingRequestOutput
from rlhf_rewards.pooling.params import PoolingParams
from rlhf_rewards.server.metrics import ServerMetrics

logger = logging.getLogger("rlhf_rewards.server")


@dataclass
class EngineItem:
    """One validated prompt ready for the engine.

    Args:
        token_ids: Token ids, already truncated and checked against the vocabulary and ``max_model_len``.
        params: Pooling parameters (truncation already applied, so ``truncate_prompt_tokens`` is unset).
        lora: Adapter, or ``None`` for the base model.
        cache_salt: vLLM's ``cache_salt``: prefix-cache entries are shared only within one salt.
    """

    token_ids: list[int]
    params: PoolingParams
    lora: LoRARequest | None = None
    cache_salt: str | None = None


@dataclass
class _Job:
    task: str
    items: list[EngineItem]
    future: asyncio.Future[list[PoolingRequestOutput]]
    enqueued: float = field(default_factory=time.perf_counter)

    @property
    def n_tokens(self) -> int:
        return sum(len(i.token_ids) for i in self.items)


class QueueFull(Exception):
    """The queue holds ``--max-queue-size`` prompts; retry after ``retry_after`` seconds."""

    def __init__(self, pending: int, limit: int, retry_after: int) -> None:
        super().__init__(
            f"The server queue is full ({pending} prompts waiting, --max-queue-size={limit}); "
            f"retry after {retry_after} s."
        )
        self.retry_after = retry_after


EncodeFn = Callable[[str, list[EngineItem]], list[PoolingRequestOutput]]


def engine_thread() -> ThreadPoolExecutor:
    """The executor of a server's engine: one thread for ALL of the engine's torch work, model load included.

    torch's CPU kernels run on OpenMP, and every thread that enters a parallel region gets its own team of
    worker threads. Once a process holds more of them than it has cores, libgomp stops spinning between
    regions and puts workers to sleep after each one, so every kernel call pays a wake-up: a server whose
    model was loaded on the main thread and run on an engine thread scored GRPO batches ~13% slower than
    one that did both on the engine thread (two teams of 2 on 2 cores). Load the model through this
    executor and give the same executor to :class:`Batcher`.
    """
    return ThreadPoolExecutor(max_workers=1, thread_name_prefix="rlhf-rewards-engine")


class Batcher:
    """Bounded queue + batching loop in front of one engine.

    Args:
        encode: Runs one merged batch: ``encode(task, items) -> outputs`` (called in the engine thread).
        max_queue_size: Most prompts waiting at once; a request that would exceed it gets ``QueueFull``
            (a request arriving at an empty queue is always admitted, however large).
        max_batch_tokens: Token budget of one merged engine call (the first request always runs).
        metrics: Where queue depth, batch sizes and latencies are reported. Default ``None``.
        batch_wait_s: Longest delay of a round while requests are arriving (see the module docstring);
            ``0`` starts every round at once. Default 0.05.
        arrival_gap_s: Right after an engine call, the round waits while requests keep coming at most this
            far apart. Default 0.01.
        hold_s: A round whose oldest request holds one prompt starts at the earliest this long after that
            request was queued (within ``batch_wait_s``). Default 0.005.
        executor: The one-thread executor that runs ``encode`` (:func:`engine_thread`), shut down by
            :meth:`stop`. Default ``None``: a new one. Give the thread that loaded the model.
    """

    def __init__(
        self,
        encode: EncodeFn,
        *,
        max_queue_size: int,
        max_batch_tokens: int,
        metrics: ServerMetrics | None = None,
        batch_wait_s: float = 0.05,
        arrival_gap_s: float = 0.01,
        hold_s: float = 0.005,
        executor: ThreadPoolExecutor | None = None,
    ) -> None:
        if batch_wait_s < 0 or not math.isfinite(batch_wait_s):
            raise ValueError(f"batch_wait_s must be a finite number >= 0, got {batch_wait_s}.")
        if arrival_gap_s < 0 or not math.isfinite(arrival_gap_s):
            raise ValueError(f"arrival_gap_s must be a finite number >= 0, got {arrival_gap_s}.")
        if hold_s < 0 or not math.isfinite(hold_s):
            raise ValueError(f"hold_s must be a finite number >= 0, got {hold_s}.")
        self._encode = encode
        self.batch_wait_s = batch_wait_s
        self.hold_s = hold_s
        self.arrival_gap_s = arrival_gap_s
        self._arriving = 0
        self._last_event = 0.0  # loop time of the last submit or engine-call end
        self.max_queue_size = max_queue_size
        self.max_batch_tokens = max_batch_tokens
        self.metrics = metrics
        self._queue: collections.deque[_Job] = collections.deque()
        self._pending_prompts = 0
        self._pending_tokens = 0
        self._wakeup = asyncio.Event()
        self._executor = executor if executor is not None else engine_thread()
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._tokens_per_second: float | None = None

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        """Start the batching loop on the running event loop."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._loop(), name="rlhf-rewards-batcher")

    async def stop(self) -> None:
        """Finish every queued request, then stop the loop and the engine thread."""
        self._stopping = True
        self._wakeup.set()
        if self._task is not None:
            await self._task
            self._task = None
        self._executor.shutdown(wait=True)

    @property
    def alive(self) -> bool:
        """Whether the loop runs (False after ``stop`` or if it crashed)."""
        return self._task is not None and not self._task.done()

    @property
    def pending_prompts(self) -> int:
        """Prompts waiting (not yet in the engine)."""
        return self._pending_prompts

    # ------------------------------------------------------------------ submit
    @contextlib.contextmanager
    def arriving(self) -> Iterator[None]:
        """Mark a request as received but not yet submitted (being parsed/tokenized) for the block's duration.

        A round about to start waits for such requests (up to ``batch_wait_s``), so they join it.
        """
        self._arriving += 1
        try:
            yield
        finally:
            self._arriving -= 1
            if not self._arriving:
                self._wakeup.set()  # a round may be waiting for the last arrival (it may also have failed)

    def retry_after(self) -> int:
        """Seconds a refused client should wait: the queue's drain time at the observed speed, 1..30."""
        if not self._tokens_per_second:
            return 1
        return max(1, min(30, math.ceil(self._pending_tokens / self._tokens_per_second)))

    async def submit(self, task: str, items: list[EngineItem]) -> list[PoolingRequestOutput]:
        """Queue ``items`` for ``task`` and wait for their outputs (in order)."""
        if self._pending_prompts and self._pending_prompts + len(items) > self.max_queue_size:
            if self.metrics is not None:
                self.metrics.rejected.labels("queue_full").inc()
            raise QueueFull(self._pending_prompts, self.max_queue_size, self.retry_after())
        if not self.alive:
            raise RuntimeError("the batching loop is not running")
        job = _Job(task, items, asyncio.get_running_loop().create_future())
        self._queue.append(job)
        self._account(job, +1)
        self._last_event = asyncio.get_running_loop().time()
        self._wakeup.set()
        return await job.future

    def _account(self, job: _Job, sign: int) -> None:
        self._pending_prompts += sign * len(job.items)
        self._pending_tokens += sign * job.n_tokens
        if self.metrics is not None:
            self.metrics.queue_prompts.set(self._pending_prompts)
            self.metrics.queue_requests.set(len(self._queue))

    # ------------------------------------------------------------------ loop
    async def _loop(self) -> None:
        after_call = False
        while True:
            if not self._queue:
                if self._stopping:
                    return
                self._wakeup.clear()
                await self._wakeup.wait()
                after_call = False
                continue
            if self.batch_wait_s > 0 and not self._stopping:
                await self._collect(after_call)
            jobs = self._take()
            if jobs:
                await self._run(jobs)
                self._last_event = asyncio.get_running_loop().time()
                after_call = True

    async def _collect(self, after_call: bool) -> None:
        """Wait (at most ``batch_wait_s``) while requests are arriving, so they join the next round."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.batch_wait_s
        while self._pending_tokens < self.max_batch_tokens and not self._stopping:
            now = loop.time()
            if now >= deadline:
                return
            held = self._hold_left()
            if self._arriving:
                until = deadline
            elif after_call and now - self._last_event < self.arrival_gap_s:
                until = min(deadline, max(self._last_event + self.arrival_gap_s, now + held))
            elif held > 0:
                until = min(deadline, now + held)
            else:
                return
            self._wakeup.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wakeup.wait(), until - now)

    def _hold_left(self) -> float:
        """Seconds the oldest queued request still waits for siblings (one-prompt requests only)."""
        if not self.hold_s or not self._queue or len(self._queue[0].items) != 1:
            return 0.0
        return max(0.0, self.hold_s - (time.perf_counter() - self._queue[0].enqueued))

    def _take(self) -> list[_Job]:
        """The oldest live job plus every queued job of its task that fits the token budget (FIFO)."""
        head: _Job | None = None
        taken: list[_Job] = []
        rest: collections.deque[_Job] = collections.deque()
        budget = 0
        while self._queue:
            job = self._queue.popleft()
            if job.future.done():  # the client went away
                self._account(job, -1)
                continue
            if head is None:
                head, budget = job, job.n_tokens
                taken.append(job)
            elif job.task == head.task and budget + job.n_tokens <= self.max_batch_tokens:
                budget += job.n_tokens
                taken.append(job)
            else:
                rest.append(job)
        self._queue = rest
        for job in taken:
            self._account(job, -1)
        return taken

    async def _run(self, jobs: list[_Job]) -> None:
        loop = asyncio.get_running_loop()
        task = jobs[0].task
        items = [item for job in jobs for item in job.items]
        n_tokens = sum(len(i.token_ids) for i in items)
        start = time.perf_counter()
        m = self.metrics
        if m is not None:
            for job in jobs:
                m.queue_wait.observe(start - job.enqueued)
            m.running_prompts.set(len(items))
        try:
            outputs = await loop.run_in_executor(self._executor, self._encode, task, items)
        except Exception as exc:  # noqa: BLE001 - isolate the failing request, keep serving
            if len(jobs) > 1:
                logger.info(
                    "A merged batch of %d requests failed (%s); re-running them one by one.",
                    len(jobs),
                    type(exc).__name__,
                )
                for job in jobs:
                    await self._run([job])
                return
            _resolve(jobs[0].future, exc=exc)
            return
        finally:
            if m is not None:
                m.running_prompts.set(0)
        if len(jobs) > 1 and any(o.error is not None for o in outputs):
            # NaN/inf can spread between sequences that share a forward (packed rows): re-run each request
            # alone, so one request's bad output never becomes another request's error.
            for job in jobs:
                await self._run([job])
            return
        elapsed = time.perf_counter() - start
        if elapsed > 0:
            speed = n_tokens / elapsed
            self._tokens_per_second = (
                speed if self._tokens_per_second is None else (0.8 * self._tokens_per_second + 0.2 * speed)
            )
        logger.debug(
            "Engine call: %d requests, %d prompts, %d tokens, %.3f s.",
            len(jobs),
            len(items),
            n_tokens,
            elapsed,
        )
        if m is not None:
            m.engine_latency.observe(elapsed)
            m.batch_prompts.observe(len(items))
            m.batch_requests.observe(len(jobs))
            m.batch_tokens.observe(n_tokens)
        offset = 0
        for job in jobs:
            _resolve(job.future, result=outputs[offset : offset + len(job.items)])
            offset += len(job.items)


def _resolve(
    future: asyncio.Future[list[PoolingRequestOutput]],
    *,
    result: list[PoolingRequestOutput] | None = None,
    exc: BaseException | None = None,
) -> None:
    if future.done():
        return
    if exc is not None:
        future.set_exception(exc)
    else:
        future.set_result(result or [])


__all__ = ["Batcher", "EngineItem", "QueueFull", "engine_thread"]
