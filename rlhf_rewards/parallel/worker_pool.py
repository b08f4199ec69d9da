"""``WorkerPool``: the driver of an engine-started split engine, its worker processes, their pipes and the store
they meet on.

Every wait of the driver watches the pipes and the processes together (``multiprocessing.connection.wait`` on
both), so a worker that exits is reported at once, with its exit code and the end of its stderr; a worker that
is alive but silent is given up on after :attr:`~rlhf_rewards.parallel.config.ParallelConfig.start_timeout_s`
(start-up) or :attr:`~rlhf_rewards.parallel.config.ParallelConfig.call_timeout_s` (without progress in a call).
"""

from __future__ import annotations

import itertools
import multiprocessing
import multiprocessing.connection
import os
import pickle
import signal
import threading
import time
from collections import deque
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from rlhf_rewards.engine.stats import RunStats
from rlhf_rewards.parallel.config import CALL_TIMEOUT_ENV, START_TIMEOUT_ENV, ParallelConfig
from rlhf_rewards.parallel.group import ParallelGroup, WorkerFailed
from rlhf_rewards.parallel.main_guard import guard_hint
from rlhf_rewards.parallel.messages import Channel, RemoteError, unpack_outputs
from rlhf_rewards.parallel.spawn import (
    TAIL_LINES,
    SpawnedWorker,
    describe_exit,
    pump_stderr,
    start_with_stderr,
)
from rlhf_rewards.parallel.worker import WorkerSpec, worker_main

#: How long ``shutdown()`` lets the workers stop by themselves before terminating them.
STOP_TIMEOUT_S = 10.0
#: How often a wait re-checks that the workers are alive (they are also watched through their sentinels).
_POLL_S = 0.5


class WorkerPool(ParallelGroup):
    """The driver of an engine-started split engine: its worker processes, their pipes, and the store they meet on.

    Args:
        config: The sizes and time bounds.
        backend: ``"nccl"`` (CUDA) or ``"gloo"``.
        factory: What each worker builds (the ``LLM`` class); called as ``factory(**kwargs)``.
        kwargs: The engine's arguments.
        model: The model's name, for messages.
    """

    def __init__(
        self,
        config: ParallelConfig,
        backend: str,
        factory: Callable[..., Any],
        kwargs: dict[str, Any],
        model: str,
    ) -> None:
        super().__init__(config, rank=0)
        self.model = model
        self.backend = backend
        #: Why this engine can no longer score (a worker died or hung), or ``None``.
        self.broken: str | None = None
        #: What each rank reported when ready (``pid``, ``device``, ``resident_bytes``).
        self.ready_info: list[dict[str, Any]] = []
        self._call_ids = itertools.count(1)
        self._call_lock = threading.Lock()
        self._started_at = time.monotonic()
        # The workers' rendezvous: a store private to this engine, on a port the OS picks (no race for a free one).
        self._store: Any = dist.TCPStore(
            "127.0.0.1",
            0,
            is_master=True,
            wait_for_workers=False,
            timeout=timedelta(seconds=float(config.start_timeout_s or 0)),
        )
        self.port = int(self._store.port)
        self._workers: list[SpawnedWorker] = []  # rank order
        try:
            self._spawn(factory, kwargs)
        except BaseException:
            self.close(graceful=False)
            raise

    @property
    def workers(self) -> list[Any]:
        """The worker processes (``multiprocessing.Process``), rank order."""
        return [w.proc for w in self._workers]

    def _spawn(self, factory: Callable[..., Any], kwargs: dict[str, Any]) -> None:
        ctx = multiprocessing.get_context("spawn")
        for rank in range(self.world_size):
            parent_conn, child_conn = ctx.Pipe(duplex=True)
            read_fd, write_fd = os.pipe()
            spec = WorkerSpec(rank, self.config, self.port, self.backend, factory, kwargs, os.getpid())
            proc = ctx.Process(
                target=worker_main, args=(spec, child_conn), name=f"rlhf-rewards-rank{rank}", daemon=True
            )
            tail: deque[str] = deque(maxlen=TAIL_LINES)
            try:
                start_with_stderr(proc, write_fd)
            except BaseException:
                os.close(read_fd)
                parent_conn.close()
                raise
            finally:
                # Only the child holds the write ends now: end-of-file on them means it exited.
                os.close(write_fd)
                child_conn.close()
            threading.Thread(
                target=pump_stderr,
                args=(read_fd, rank, tail),
                name=f"rlhf-rewards-rank{rank}-stderr",
                daemon=True,
            ).start()
            self._workers.append(SpawnedWorker(rank, proc, Channel(parent_conn), tail))

    # ------------------------------------------------------------------ waiting
    def _wait(
        self,
        pending: set[int],
        deadline: float,
        timeout_s: float,
        handle: Callable[[SpawnedWorker, Any], bool],
        phase: str,
    ) -> None:
        """Read messages until ``handle`` returned True for every rank in ``pending``.

        Raises :class:`WorkerFailed` as soon as a worker exits (after reading what it sent), or when nothing
        arrives before ``deadline``. In a call, every message is progress and moves the deadline ``timeout_s`` on.
        """
        while pending:
            live = [w for w in self._workers if w.open]
            waitables = [w.channel.conn for w in live] + [w.proc.sentinel for w in self._workers]
            multiprocessing.connection.wait(
                waitables, timeout=max(0.0, min(deadline - time.monotonic(), _POLL_S))
            )
            for worker in live:
                while worker.open and worker.channel.conn.poll():
                    try:
                        message = worker.channel.receive()
                    except Exception as exc:  # noqa: BLE001 - e.g. a call interrupted while its answer arrived
                        raise WorkerFailed(
                            f"a message from rank {worker.rank} of the split engine for {self.model} could not be "
                            f"read ({type(exc).__name__}: {exc}): the pipe to it is out of step. The workers were "
                            "stopped and this engine refuses further calls: build a new LLM."
                        ) from exc
                    if message is None:
                        worker.open = False
                        break
                    if handle(worker, message):
                        pending.discard(worker.rank)
                    if phase == "call":
                        deadline = time.monotonic() + timeout_s
            for worker in self._workers:
                if worker.proc.exitcode is not None or not worker.open:
                    worker.proc.join(1.0)  # a closed pipe: the exit code follows at once
                    raise self._died(worker, phase)
            if pending and time.monotonic() >= deadline:
                raise self._timed_out(sorted(pending), phase)

    def _died(self, worker: SpawnedWorker, phase: str) -> WorkerFailed:
        when = {"start": "while starting, before it was ready", "call": "during a call"}.get(
            phase, "between calls"
        )
        after = (
            ""
            if phase == "start"
            else " The other ranks were stopped and this engine refuses further calls: build a new LLM."
        )
        hint = guard_hint("\n".join(worker.tail))  # the fix first: the traceback below is long
        return WorkerFailed(
            f"rank {worker.rank} of the split engine for {self.model} (pid {worker.proc.pid}) "
            f"{describe_exit(worker.proc.exitcode)} {when}.{after}{hint}\n"
            f"Last lines of its stderr:\n{worker.stderr_tail()}"
        )

    def _timed_out(self, ranks: list[int], phase: str) -> WorkerFailed:
        if phase == "start":
            return WorkerFailed(
                f"ranks {ranks} of the split engine for {self.model} did not finish starting within "
                f"{self.config.start_timeout_s:.0f} s (start_timeout_s). They are alive, so they are stuck (for "
                "instance setting up NCCL/gloo) or load very slowly. To wait longer pass LLM(..., "
                f"parallel_start_timeout_s=...) or set {START_TIMEOUT_ENV}.\n"
                + "\n".join(
                    f"Last lines of rank {r}'s stderr:\n{self._workers[r].stderr_tail(8)}" for r in ranks
                )
            )
        return WorkerFailed(
            f"ranks {ranks} of the split engine for {self.model} sent nothing for {self.config.call_timeout_s:.0f} s "
            "during a call (call_timeout_s): they are alive but stuck (a collective that never completes, a hung "
            "device), or one micro-batch takes longer than that. They were stopped and this engine refuses further "
            "calls: build a new LLM. If one forward of max_num_batched_tokens really takes that long, pass "
            f"LLM(..., parallel_call_timeout_s=...) or set {CALL_TIMEOUT_ENV}."
        )

    # ------------------------------------------------------------------ start-up
    def wait_ready(self) -> None:
        """Wait until every worker has loaded its shard; on any failure stop them all and raise
        :class:`WorkerFailed` (the first failure reported, with its rank)."""
        infos: dict[int, dict[str, Any]] = {}

        def handle(worker: SpawnedWorker, message: Any) -> bool:
            if message[0] == "ready":
                infos[worker.rank] = message[1]
                return True
            if message[0] == "failed":
                remote: RemoteError = message[1]
                raise WorkerFailed(
                    f"rank {worker.rank} of the split engine for {self.model} failed to start: {remote}"
                ) from remote.rebuild()
            return False

        try:
            self._wait(
                set(range(self.world_size)),
                self._started_at + float(self.config.start_timeout_s or 0),
                float(self.config.start_timeout_s or 0),
                handle,
                "start",
            )
        except BaseException:
            self.close(graceful=False)
            raise
        self.ready_info = [infos[r] for r in range(self.world_size)]

    # ------------------------------------------------------------------ calls
    def call(
        self, requests: list[Any], on_batch_done: Callable[[int], None] | None = None
    ) -> tuple[list[torch.Tensor], RunStats]:
        """Run ``requests`` on every worker; the output rank's outputs and run statistics.

        An error raised alike on every rank is raised here and leaves the engine usable (as in one process); a
        worker that exits, a call without progress for ``call_timeout_s``, or ranks that fail differently (no
        longer in step) stop the workers and raise :class:`WorkerFailed`, and every later call raises it too.
        """
        with self._call_lock:
            self._check_usable()
            call_id = next(self._call_ids)
            payload = pickle.dumps(("run", call_id, requests), protocol=pickle.HIGHEST_PROTOCOL)
            # Sent from a thread: a worker that stopped reading (hung) must not block this wait, which watches it.
            threading.Thread(
                target=self._send_all, args=(payload,), name="rlhf-rewards-send", daemon=True
            ).start()
            output_rank = self.config.output_rank
            result: dict[str, Any] = {}
            errors: dict[int, RemoteError] = {}

            def handle(worker: SpawnedWorker, message: Any) -> bool:
                kind = message[0]
                if kind not in ("progress", "done", "error") or message[1] != call_id:
                    return (
                        False  # left over from an earlier call that was interrupted here (KeyboardInterrupt)
                    )
                if kind == "progress":
                    if on_batch_done is not None:
                        on_batch_done(message[2])
                    return False
                if kind == "error":
                    errors[worker.rank] = message[2]
                elif worker.rank == output_rank:
                    result["outputs"], result["stats"] = message[2], message[3]
                return True

            timeout = float(self.config.call_timeout_s or 0)
            try:
                self._wait(set(range(self.world_size)), time.monotonic() + timeout, timeout, handle, "call")
            except WorkerFailed as exc:
                self._break(str(exc).split("\n", 1)[0])
                raise
            if errors:
                self._raise_call_errors(errors)
            return unpack_outputs(result["outputs"]), result["stats"] or RunStats()

    def _raise_call_errors(self, errors: dict[int, RemoteError]) -> None:
        first = errors.get(self.config.output_rank) or errors[min(errors)]
        in_step = (
            len(errors) == self.world_size
            and len({e.type_name for e in errors.values()}) == 1
            and not any(e.distributed for e in errors.values())
        )
        if in_step:  # every rank failed the same way at the same point (e.g. an input the model cannot take)
            raise first.rebuild()
        failure = WorkerFailed(
            f"the ranks of the split engine for {self.model} failed differently in one call ("
            + "; ".join(f"rank {r}: {e}" for r, e in sorted(errors.items()))
            + (
                f"; ranks {sorted(set(range(self.world_size)) - set(errors))} succeeded"
                if len(errors) < self.world_size
                else ""
            )
            + "), so they are no longer in step. The workers were stopped and this engine refuses further calls: "
            "build a new LLM."
        )
        self._break(str(failure))
        raise failure from first.rebuild()

    def _send_all(self, payload: bytes) -> None:
        for worker in self._workers:
            try:
                worker.channel.send_bytes(payload)
            except OSError:
                pass  # that worker is gone: the waiting call reports it

    def _check_usable(self) -> None:
        if self.broken is not None:
            raise WorkerFailed(
                f"this split engine can no longer score: {self.broken} Build a new LLM (and "
                "shutdown() this one)."
            )
        if self.closed:
            raise RuntimeError("this split engine was closed (shutdown()); build a new LLM to score again.")
        for worker in self._workers:  # one that died between calls: say so before sending anything
            if worker.proc.exitcode is not None:
                failure = self._died(worker, "idle")
                self._break(str(failure).split("\n", 1)[0])
                raise failure

    def _break(self, reason: str) -> None:
        """This engine cannot score any more: remember why and stop what is left of it."""
        self.broken = reason
        self._terminate()

    # ------------------------------------------------------------------ shutdown
    def close(self, graceful: bool = True) -> None:  # type: ignore[override]
        """Stop the workers and release the store's port (idempotent; also run on garbage collection and at exit).

        ``graceful``: ask them to stop and give them :data:`STOP_TIMEOUT_S`; otherwise (a failed start, a broken
        engine) terminate them at once. Either way no worker outlives this call.
        """
        if self.closed:
            return
        self.closed = True
        if graceful and self.broken is None:
            stop = pickle.dumps(("stop",))
            for worker in self._workers:
                try:
                    if worker.proc.exitcode is None:
                        worker.channel.send_bytes(stop)
                except OSError:
                    pass
            deadline = time.monotonic() + STOP_TIMEOUT_S
            for worker in self._workers:
                worker.proc.join(max(0.0, deadline - time.monotonic()))
        self._terminate()
        for worker in self._workers:
            worker.channel.close()
        self._store = None  # closes the listening socket: the port is free again

    def _terminate(self) -> None:
        for worker in self._workers:
            if worker.proc.exitcode is None:
                worker.proc.terminate()
                try:  # a stopped process (SIGSTOP, a debugger) acts on SIGTERM only once continued
                    os.kill(worker.proc.pid, signal.SIGCONT)
                except OSError:
                    pass
        for worker in self._workers:
            worker.proc.join(3.0)
            if worker.proc.exitcode is None:  # ignored SIGTERM, or stopped (SIGSTOP): SIGKILL always works
                worker.proc.kill()
                worker.proc.join(3.0)


__all__ = ["STOP_TIMEOUT_S", "WorkerPool"]
