"""The processes of one split engine: started by the engine itself (as vLLM does), or by ``torchrun``.

**Engine-started** (the default). The process that builds ``LLM(..., tensor_parallel_size=N)`` is the *driver*: it
tokenizes, schedules and returns the outputs, holds no weights and joins no process group, so its own
``torch.distributed`` state (a trainer's) is never touched, and any number of split engines can live in it at
once. It starts ``N * M`` worker processes (:class:`WorkerPool`, ``spawn``), one per rank: rank ``r`` runs on
``cuda:r`` (``nccl``) or on the CPU (``gloo``). The workers meet in their own processes' default group, over a
``TCPStore`` the driver owns (one per engine, on ``127.0.0.1`` at a port the OS picks), build the same ``LLM``
(each loading its shard), then serve calls. Each worker has one pipe to the driver for calls and results, and
its stderr piped to the driver, which forwards it and keeps the last lines for error messages.

Every wait of the driver watches the pipes and the processes together (``multiprocessing.connection.wait`` on
both), so a worker that exits is reported at once, with its exit code and the end of its stderr; a worker that
is alive but silent is given up on after :attr:`~rlhf_rewards.parallel.config.ParallelConfig.start_timeout_s`
(start-up) or :attr:`~rlhf_rewards.parallel.config.ParallelConfig.call_timeout_s` (without progress in a call).
A worker waits for the next call without any bound (an idle server), and exits when the driver closes its pipe,
sends stop, or is gone.

**torchrun** (``torchrun --nproc-per-node N script.py``): ``torch.distributed`` is already initialized (by the
user, or here from torchrun's environment) with ``world_size == tensor_parallel_size * pipeline_parallel_size``;
every rank runs the script and calls ``encode`` (SPMD, as vLLM's ``external_launcher``); rank 0's prompts are the
ones scored, and every rank gets the outputs (:class:`SpmdGroup`). The user's group is used, never destroyed.
"""

from __future__ import annotations

import ast
import itertools
import logging
import math
import multiprocessing
import multiprocessing.connection
import multiprocessing.resource_tracker
import multiprocessing.util
import os
import pickle
import signal
import sys
import threading
import time
import tokenize
import traceback
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from rlhf_rewards.engine.stats import RunStats
from rlhf_rewards.parallel.config import CALL_TIMEOUT_ENV, START_TIMEOUT_ENV, ParallelConfig

logger = logging.getLogger(__name__)

#: Environment variable a spawned worker finds its rank in (with the usual RANK/LOCAL_RANK/WORLD_SIZE).
_WORKER_ENV = "RLHF_REWARDS_PARALLEL_WORKER"
#: How long ``shutdown()`` lets the workers stop by themselves before terminating them.
STOP_TIMEOUT_S = 10.0
#: How often a wait re-checks that the workers are alive (they are also watched through their sentinels).
_POLL_S = 0.5
#: Lines of each worker's stderr kept for error messages.
_TAIL_LINES = 40
#: torchrun's variables: a worker started from a torchrun rank must not take them for its own launch.
_LAUNCHER_ENV = (
    "TORCHELASTIC_RUN_ID",
    "MASTER_ADDR",
    "MASTER_PORT",
    "GROUP_RANK",
    "ROLE_RANK",
    "ROLE_WORLD_SIZE",
    "GROUP_WORLD_SIZE",
    "LOCAL_WORLD_SIZE",
    "TORCHELASTIC_RESTART_COUNT",
    "TORCHELASTIC_MAX_RESTARTS",
)
#: Text of the error a spawned child raises when the main script builds the engine outside a ``__main__`` guard.
_GUARD_MARKERS = (
    "_check_not_importing_main",
    "bootstrapping phase",
    "freeze_support()",
    "that is not under an `if __name__",
)  # the last: check_main_guard() refusing in the worker
#: Set in a spawned worker while it builds its engine: its pipe to the driver.
_WORKER_CHANNEL: Channel | None = None
#: Serializes the fd-2 swap around ``Process.start`` (see :func:`_start_with_stderr`).
_SPAWN_LOCK = threading.Lock()


class WorkerFailed(RuntimeError):
    """A rank of a split engine failed, died or hung; the message says which, and what to do."""


class ParallelGroup:
    """This process's place in a split engine.

    Args:
        config: The sizes and time bounds.
        rank: This process's rank; the driver of an engine-started engine counts as rank 0 (it schedules).
    """

    def __init__(self, config: ParallelConfig, rank: int) -> None:
        self.config = config
        self.rank = rank
        self.closed = False

    @property
    def world_size(self) -> int:
        """Ranks in the engine."""
        return self.config.world_size

    @property
    def is_driver(self) -> bool:
        """Whether this process schedules the calls and returns the outputs."""
        return self.rank == 0 and not isinstance(self, WorkerGroup)

    @property
    def spmd(self) -> bool:
        """Launched by ``torchrun``: every rank calls ``encode`` itself."""
        return isinstance(self, SpmdGroup)

    def close(self) -> None:
        """Release what this group holds (idempotent)."""
        self.closed = True


# ---------------------------------------------------------------------------------------------------- messages
@dataclass
class RemoteError:
    """An exception raised on a worker, carried to the driver (type, message, traceback, and itself if it pickles)."""

    type_name: str
    message: str
    traceback: str
    blob: bytes | None
    #: Raised by torch.distributed (a timed-out or broken collective): the ranks are no longer in step.
    distributed: bool

    @classmethod
    def capture(cls, exc: BaseException) -> RemoteError:
        """Describe ``exc`` (call inside its ``except`` block, for the traceback)."""
        blob: bytes | None
        try:
            blob = pickle.dumps(exc)
            pickle.loads(blob)  # some exceptions pickle but do not unpickle (required __init__ arguments)
        except Exception:  # noqa: BLE001 - then the driver raises a RuntimeError with the same text
            blob = None
        text = str(exc)
        distributed = isinstance(exc, dist.DistError) or any(
            word in text for word in ("gloo", "Gloo", "NCCL", "nccl", "Connection closed by peer")
        )
        return cls(type(exc).__name__, text, traceback.format_exc(), blob, distributed)

    def rebuild(self) -> BaseException:
        """The original exception where it unpickles, else a ``RuntimeError`` with its type and message."""
        if self.blob is not None:
            try:
                return pickle.loads(self.blob)
            except Exception:  # noqa: BLE001 - fall back to the text
                pass
        return RuntimeError(f"{self.type_name}: {self.message}")

    def __str__(self) -> str:
        return f"{self.type_name}: {self.message}"


def pack_outputs(outputs: list[torch.Tensor]) -> tuple[Any, ...]:
    """``outputs`` in one buffer: pickling each tensor on its own costs a header per tensor, and a view would
    carry its whole base storage."""
    if outputs and all(t.dtype == outputs[0].dtype for t in outputs):
        flat = torch.cat([t.reshape(-1) for t in outputs])
        return ("flat", flat, [tuple(t.shape) for t in outputs])
    return ("list", [t.clone() for t in outputs])


def unpack_outputs(packed: tuple[Any, ...]) -> list[torch.Tensor]:
    """The tensors :func:`pack_outputs` packed (views of one buffer, in order)."""
    if packed[0] == "list":
        return list(packed[1])
    _, flat, shapes = packed
    sizes = [math.prod(shape) for shape in shapes]
    return [part.view(shape) for part, shape in zip(flat.split(sizes), shapes, strict=True)]


class Channel:
    """One end of a driver-worker pipe: whole pickled messages, sends serialized by a lock.

    Plain ``pickle`` (not multiprocessing's, which torch teaches to pass tensors through shared memory, one file
    descriptor per tensor).
    """

    def __init__(self, conn: multiprocessing.connection.Connection) -> None:
        self.conn = conn
        self._send_lock = threading.Lock()

    def send(self, message: Any) -> None:
        """Send ``message`` (raises ``OSError``/``BrokenPipeError`` when the other end is gone)."""
        self.send_bytes(pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL))

    def send_bytes(self, payload: bytes) -> None:
        """Send an already pickled message."""
        with self._send_lock:
            self.conn.send_bytes(payload)

    def receive(self) -> Any:
        """The next message; ``None`` once the other end closed the pipe (or exited)."""
        try:
            return pickle.loads(self.conn.recv_bytes())
        except (EOFError, OSError):
            return None

    def close(self) -> None:
        """Close this end."""
        try:
            self.conn.close()
        except OSError:
            pass


# ---------------------------------------------------------------------------------------------------- driver side
@dataclass
class _Worker:
    rank: int
    proc: Any  # multiprocessing.Process (spawn context)
    channel: Channel
    tail: deque[str]
    #: False once the pipe reported end-of-file (the worker exited or closed it).
    open: bool = True

    def stderr_tail(self, lines: int = 20) -> str:
        return "\n".join(f"    {line}" for line in list(self.tail)[-lines:]) or "    (nothing)"


def _describe_exit(code: int | None) -> str:
    if code is None:
        return "is still running"
    if code >= 0:
        return f"exited with code {code}"
    try:
        name = signal.Signals(-code).name
    except ValueError:
        name = f"signal {-code}"
    why = {
        "SIGKILL": " (killed: the out-of-memory killer, or kill -9)",
        "SIGSEGV": " (a crash)",
        "SIGTERM": " (terminated)",
        "SIGABRT": " (aborted)",
    }.get(name, "")
    return f"was killed by {name}{why}"


def _guard_hint(tail: str) -> str:
    """How to fix a worker that re-ran the user's script because it has no ``__main__`` guard, if its stderr
    ``tail`` shows that; else ``""``."""
    if not any(marker in tail for marker in _GUARD_MARKERS):
        return ""
    main = getattr(sys.modules.get("__main__"), "__file__", None)
    script = f" ({main})" if main else ""
    return (
        '\nCause: the script that builds the LLM has no `if __name__ == "__main__":` guard. The worker processes '
        "are started with 'spawn', which imports the main script again in each worker; without the guard each "
        f"worker re-ran the script{script} from the top and tried to start its own workers. {_GUARD_FIX}"
    )


_GUARD_FIX = (
    'Fix: put the code that builds and uses the LLM under `if __name__ == "__main__":` (as vLLM requires).'
)


def first_unguarded_line(source: str, lines: list[int]) -> int | None:
    """The first of ``lines`` (top-level lines of a script's ``source``) that is not inside an ``if`` testing
    ``__name__``; ``None`` if all are. Any ``if`` whose test names ``__name__`` counts as a guard (no false alarm
    for ``if "__main__" == __name__`` or ``if __name__ != "__mp_main__"``)."""
    tree = ast.parse(source)
    guards = [
        (node.lineno, node.end_lineno or node.lineno)
        for node in ast.walk(tree)
        if isinstance(node, ast.If)
        and any(isinstance(n, ast.Name) and n.id == "__name__" for n in ast.walk(node.test))
    ]
    for line in lines:
        if not any(start <= line <= end for start, end in guards):
            return line
    return None


def check_main_guard() -> None:
    """Refuse, before any process starts, to build an engine from top-level code of a main script that ``spawn``
    will run again in every worker (no ``if __name__ == "__main__":`` guard): each worker would build the engine
    again and die. Mirrors ``multiprocessing.spawn``'s rule for when it re-runs the main module. Anything it cannot
    tell (no source, an interactive session, a thread) passes: a worker that dies anyway is reported by rank, with
    the same advice when its stderr shows this cause."""
    main = sys.modules.get("__main__")
    path = getattr(main, "__file__", None)
    spec_name = getattr(getattr(main, "__spec__", None), "name", None)
    if (
        main is None
        or not path
        or (spec_name is not None and (spec_name == "__main__" or spec_name.endswith(".__main__")))
    ):
        return  # `python -c`, a notebook, `python -m package`: spawn does not run the main module again
    lines = []
    frame = sys._getframe(1)
    while frame is not None:
        if frame.f_globals is main.__dict__ and frame.f_code.co_name == "<module>":
            lines.append(frame.f_lineno)
        frame = frame.f_back
    if not lines:
        return
    try:
        with tokenize.open(path) as f:
            line = first_unguarded_line(f.read(), lines)
    except (OSError, SyntaxError, ValueError):
        return
    if line is not None:
        raise RuntimeError(
            f"a split engine (tensor_parallel_size/pipeline_parallel_size > 1) is being built by top-level code of "
            f'{path} (line {line}) that is not under an `if __name__ == "__main__":` guard. Its worker processes '
            "are started with 'spawn', which imports that script again in each worker: without the guard every "
            f"worker would run this line again and fail. {_GUARD_FIX}"
        )


def _start_with_stderr(proc: Any, stderr_fd: int) -> None:
    """``proc.start()`` with the child's stderr (fd 2) on ``stderr_fd``.

    ``spawn`` gives the child this process's fds 0-2, and a child that dies during its bootstrap (a script without
    a ``__main__`` guard) writes its traceback before any of our code runs there, so fd 2 is swapped for the
    instant of the fork. multiprocessing's resource tracker is started first so that it does not inherit the pipe.
    """
    multiprocessing.resource_tracker.ensure_running()
    with _SPAWN_LOCK:
        try:
            saved = os.dup(2)
        except OSError:  # no stderr at all (a daemon): the child gets none either
            proc.start()
            return
        try:
            try:
                sys.stderr.flush()
            except Exception:  # noqa: BLE001 - a closed or replaced sys.stderr
                pass
            os.dup2(stderr_fd, 2)
            proc.start()
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def _pump_stderr(fd: int, rank: int, tail: deque[str]) -> None:
    """Forward a worker's stderr to ours, line by line, keeping the last lines for error messages."""
    prefix = f"(rlhf-rewards rank {rank}) "
    with os.fdopen(fd, "rb") as stream:
        for raw in stream:
            line = raw.decode("utf-8", "replace").rstrip("\r\n")
            tail.append(line[-2000:])
            try:
                sys.stderr.write(prefix + line + "\n")
            except Exception:  # noqa: BLE001 - interpreter shutdown, or a closed stderr: keep the tail anyway
                pass


@dataclass
class _WorkerSpec:
    """What a spawned worker needs (pickled to it by ``spawn``)."""

    rank: int
    config: ParallelConfig
    port: int
    backend: str
    factory: Callable[..., Any]
    kwargs: dict[str, Any]
    parent_pid: int


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
        self._workers: list[_Worker] = []  # rank order
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
            spec = _WorkerSpec(rank, self.config, self.port, self.backend, factory, kwargs, os.getpid())
            proc = ctx.Process(
                target=worker_main, args=(spec, child_conn), name=f"rlhf-rewards-rank{rank}", daemon=True
            )
            tail: deque[str] = deque(maxlen=_TAIL_LINES)
            try:
                _start_with_stderr(proc, write_fd)
            except BaseException:
                os.close(read_fd)
                parent_conn.close()
                raise
            finally:
                # Only the child holds the write ends now: end-of-file on them means it exited.
                os.close(write_fd)
                child_conn.close()
            threading.Thread(
                target=_pump_stderr,
                args=(read_fd, rank, tail),
                name=f"rlhf-rewards-rank{rank}-stderr",
                daemon=True,
            ).start()
            self._workers.append(_Worker(rank, proc, Channel(parent_conn), tail))

    # ------------------------------------------------------------------ waiting
    def _wait(
        self,
        pending: set[int],
        deadline: float,
        timeout_s: float,
        handle: Callable[[_Worker, Any], bool],
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

    def _died(self, worker: _Worker, phase: str) -> WorkerFailed:
        when = {"start": "while starting, before it was ready", "call": "during a call"}.get(
            phase, "between calls"
        )
        after = (
            ""
            if phase == "start"
            else " The other ranks were stopped and this engine refuses further calls: build a new LLM."
        )
        hint = _guard_hint("\n".join(worker.tail))  # the fix first: the traceback below is long
        return WorkerFailed(
            f"rank {worker.rank} of the split engine for {self.model} (pid {worker.proc.pid}) "
            f"{_describe_exit(worker.proc.exitcode)} {when}.{after}{hint}\n"
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

        def handle(worker: _Worker, message: Any) -> bool:
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

            def handle(worker: _Worker, message: Any) -> bool:
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


# ---------------------------------------------------------------------------------------------------- worker side
class WorkerGroup(ParallelGroup):
    """A spawned worker's place in its engine: its rank and its pipe to the driver."""

    def __init__(self, config: ParallelConfig, rank: int, channel: Channel) -> None:
        super().__init__(config, rank)
        self.channel = channel


def _exit_with_parent(parent_pid: int) -> None:
    """A worker whose driver died (killed, crashed) would wait for it forever: exit."""

    def watch() -> None:
        while True:
            time.sleep(1.0)
            try:
                os.kill(parent_pid, 0)
            except OSError:
                os._exit(0)
            if os.getppid() != parent_pid:
                os._exit(0)

    threading.Thread(target=watch, name="rlhf-rewards-parent-watch", daemon=True).start()


def _set_group_timeouts(seconds: float) -> None:
    """Collectives from now on wait ``seconds`` at most (start-up needed the start-up bound)."""
    from torch.distributed import distributed_c10d

    for group in list(distributed_c10d._world.pg_map):
        try:
            distributed_c10d._set_pg_timeout(timedelta(seconds=seconds), group)
        except Exception as exc:  # noqa: BLE001 - best effort: the driver bounds every call anyway
            logger.debug("could not set the timeout of a process group: %s", exc)


def worker_main(spec: _WorkerSpec, conn: multiprocessing.connection.Connection) -> None:
    """A spawned rank: join the workers' group, build the engine (its shard), serve calls until told to stop."""
    global _WORKER_CHANNEL
    _exit_with_parent(spec.parent_pid)
    # Ctrl-C in a terminal reaches the whole process group: the driver decides what happens to its workers.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    config, rank, world = spec.config, spec.rank, spec.config.world_size
    for name in _LAUNCHER_ENV:
        os.environ.pop(name, None)
    os.environ[_WORKER_ENV] = str(rank)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    _set_rank_env(rank, world)
    channel = Channel(conn)
    start_timeout = timedelta(seconds=float(config.start_timeout_s or 0))
    # tqdm's default lock is a multiprocessing semaphore, registered with the driver's resource tracker, which
    # reports it as leaked when the worker is terminated (a broken engine). One process needs a thread lock only.
    from tqdm import tqdm

    tqdm.set_lock(threading.RLock())
    try:
        if spec.backend == "nccl":
            torch.cuda.set_device(rank)
        else:
            # The ranks share the machine's cores; each takes its part instead of all of them.
            torch.set_num_threads(max(1, len(os.sched_getaffinity(0)) // world))
        store = dist.TCPStore("127.0.0.1", spec.port, is_master=False, timeout=start_timeout)
        dist.init_process_group(
            spec.backend,
            store=dist.PrefixStore("rlhf-rewards", store),
            rank=rank,
            world_size=world,
            timeout=start_timeout,
            **_device_id(torch.device("cuda" if spec.backend == "nccl" else "cpu"), rank, spec.backend),
        )
        _WORKER_CHANNEL = channel
        engine = spec.factory(**spec.kwargs)
        _set_group_timeouts(float(config.call_timeout_s or 0))
        parallel = engine._parallel
        channel.send(
            (
                "ready",
                {
                    "pid": os.getpid(),
                    "device": str(parallel.device),
                    "resident_bytes": parallel.resident_bytes,
                },
            )
        )
    except BaseException as exc:  # noqa: BLE001 - reported to the driver, which raises it
        traceback.print_exc()
        try:
            channel.send(("failed", RemoteError.capture(exc)))
        except Exception:  # noqa: BLE001 - the driver is gone: nothing to tell
            pass
        sys.exit(1)
    try:
        engine.runner.serve()
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    # Told to stop (or the driver is gone): nothing is left to save, and tearing down an interpreter that holds
    # torch, transformers and a model takes seconds that shutdown() and the driver's exit would wait for. Only
    # multiprocessing's own finalizers run (they release the named semaphores tqdm made, which the resource tracker
    # would otherwise report as leaked).
    multiprocessing.util._run_finalizers(0)
    multiprocessing.util._run_finalizers()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:  # noqa: BLE001 - a closed stream: nothing to flush
            pass
    os._exit(0)


# ---------------------------------------------------------------------------------------------------- torchrun
class SpmdGroup(ParallelGroup):
    """A rank of a ``torchrun`` launch: the default group is the user's (or torchrun's); calls travel on a
    ``gloo`` control group of this engine's own, destroyed with it.

    Args:
        config: The sizes and time bounds.
        rank: ``torch.distributed``'s rank.
        control: This engine's control group.
        destroy_default_on_close: Whether this engine initialized ``torch.distributed`` itself (from torchrun's
            environment) and so tears it down on close.
    """

    def __init__(
        self, config: ParallelConfig, rank: int, control: Any, destroy_default_on_close: bool
    ) -> None:
        super().__init__(config, rank)
        self.control = control
        self.destroy_default_on_close = destroy_default_on_close
        #: Whether this rank took part in the start-up handshake (it happens once).
        self.handshake_done = False

    def broadcast(self, obj: Any, src: int = 0) -> Any:
        """``obj`` from rank ``src`` on every rank (pickled, over the control group)."""
        box = [obj if self.rank == src else None]
        dist.broadcast_object_list(box, src=src, group=self.control)
        return box[0]

    def close(self) -> None:
        """Destroy this engine's control group, and the default group only if this engine created it."""
        if self.closed:
            return
        self.closed = True
        if not dist.is_initialized():
            return
        try:
            dist.destroy_process_group(self.control)
        except Exception as exc:  # noqa: BLE001 - already gone with the default group
            logger.debug("could not destroy the control group: %s", exc)
        if self.destroy_default_on_close:
            dist.destroy_process_group()


def handshake(group: SpmdGroup, error: BaseException | None = None) -> None:
    """torchrun start-up: every rank reports whether it built its shard; all raise the first failure."""
    group.handshake_done = True
    reports: list[Any] = [None] * group.world_size
    dist.all_gather_object(
        reports, None if error is None else f"{type(error).__name__}: {error}", group=group.control
    )
    failed = [(rank, msg) for rank, msg in enumerate(reports) if msg is not None]
    if failed:
        rank, msg = failed[0]
        raise WorkerFailed(f"rank {rank} of the split engine failed to start: {msg}")
    # Started: a call waits for the other ranks' calls, not for their loading.
    from torch.distributed import distributed_c10d

    distributed_c10d._set_pg_timeout(
        timedelta(seconds=float(group.config.call_timeout_s or 0)), group.control
    )


# ---------------------------------------------------------------------------------------------------- choosing
def start_group(
    config: ParallelConfig,
    device: torch.device,
    factory: Callable[..., Any],
    kwargs: dict[str, Any],
    model: str = "the model",
) -> ParallelGroup:
    """This process's group: a spawned worker's, a torchrun rank's, or (the default) a driver starting its workers.

    ``factory(**kwargs)`` is what each spawned worker builds (the ``LLM`` class and this engine's arguments).
    """
    backend = "nccl" if device.type == "cuda" else "gloo"
    if os.environ.get(_WORKER_ENV) is not None and _WORKER_CHANNEL is not None:
        return WorkerGroup(config, dist.get_rank(), _WORKER_CHANNEL)
    start_timeout = timedelta(seconds=float(config.start_timeout_s or 0))
    created = False
    if not dist.is_initialized() and _launched_by_torchrun():
        world = int(os.environ["WORLD_SIZE"])
        if world != config.world_size:
            raise ValueError(
                f"torchrun started {world} processes (WORLD_SIZE), but tensor_parallel_size * pipeline_parallel_size "
                f"= {config.world_size}; allowed: torchrun --nproc-per-node {config.world_size}."
            )
        local_rank = int(os.environ.get("LOCAL_RANK", os.environ["RANK"]))
        _bind_device(device, local_rank)
        dist.init_process_group(
            backend, init_method="env://", timeout=start_timeout, **_device_id(device, local_rank, backend)
        )
        created = True
    if dist.is_initialized():
        world = dist.get_world_size()
        if world == config.world_size:
            rank = dist.get_rank()
            _bind_device(device, int(os.environ.get("LOCAL_RANK", rank)))
            control = dist.new_group(backend="gloo", timeout=start_timeout)
            return SpmdGroup(config, rank, control, destroy_default_on_close=created)
        # The process's own group (a trainer's) has another size: it is not a launch of this engine's ranks.
        # Leave it alone and start this engine's own workers, as in a plain process.
        logger.info(
            "torch.distributed is initialized with world_size=%d, not tensor_parallel_size * "
            "pipeline_parallel_size = %d: this engine starts its own %d worker processes and leaves that "
            "group alone.",
            world,
            config.world_size,
            config.world_size,
        )
    check_main_guard()
    return WorkerPool(config, backend, factory, kwargs, model)


def _launched_by_torchrun() -> bool:
    """``torchrun`` (or another launcher setting the ``env://`` variables) started this process as one rank."""
    if os.environ.get(_WORKER_ENV) is not None:
        return False
    return "TORCHELASTIC_RUN_ID" in os.environ or all(
        k in os.environ for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
    )


def _set_rank_env(rank: int, world: int) -> None:
    # transformers binds each rank's accelerator from LOCAL_RANK when it builds its device mesh.
    os.environ.update(
        RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), LOCAL_WORLD_SIZE=str(world)
    )


def _bind_device(device: torch.device, rank: int) -> None:
    if device.type == "cuda":
        torch.cuda.set_device(rank)


def _device_id(device: torch.device, rank: int, backend: str) -> dict[str, Any]:
    return {"device_id": torch.device("cuda", rank)} if backend == "nccl" else {}


def rank_device(device: torch.device, rank: int) -> torch.device:
    """Where rank ``rank`` runs: ``cuda:LOCAL_RANK`` (``cuda:rank`` on one machine) on CUDA, else ``device``."""
    return torch.device("cuda", int(os.environ.get("LOCAL_RANK", rank))) if device.type == "cuda" else device


__all__ = [
    "STOP_TIMEOUT_S",
    "Channel",
    "ParallelGroup",
    "RemoteError",
    "SpmdGroup",
    "WorkerFailed",
    "WorkerGroup",
    "WorkerPool",
    "check_main_guard",
    "first_unguarded_line",
    "handshake",
    "pack_outputs",
    "rank_device",
    "start_group",
    "unpack_outputs",
    "worker_main",
]
