"""The processes of one split engine: started by the engine itself (as vLLM does), or by ``torchrun``.

**Engine-started** (the default): the process that builds ``LLM(..., tensor_parallel_size=N)`` becomes rank 0.
It starts ranks ``1..world-1`` with ``torch.multiprocessing`` (``spawn``), each of which builds the same
``LLM`` (loading only its shard) and then waits for work in :meth:`LockstepRunner.serve
<rlhf_rewards.parallel.lockstep.LockstepRunner.serve>`. The process group is ``gloo`` on CPU and ``nccl`` on
CUDA (rank ``r`` on ``cuda:r``), rendezvous on ``127.0.0.1`` at a free port; control messages (the batches)
travel on a second, ``gloo`` group. A worker exits when rank 0 closes the engine, and by itself when its parent
process is gone.

**torchrun** (``torchrun --nproc-per-node N script.py``): ``torch.distributed`` is already initialized with
``world_size == tensor_parallel_size * pipeline_parallel_size``; every rank runs the script and calls
``encode`` (SPMD, as vLLM's ``external_launcher``); rank 0's prompts are the ones scored, and every rank gets
the outputs.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from rlhf_rewards.parallel.config import ParallelConfig

logger = logging.getLogger(__name__)

#: How long ranks wait for each other (start-up, a collective) before failing.
DEFAULT_TIMEOUT_S = 1800.0
#: Environment variable a spawned worker finds its rank in (with the usual RANK/LOCAL_RANK/WORLD_SIZE).
_WORKER_ENV = "RLHF_REWARDS_PARALLEL_WORKER"
#: The group of the split engine this process is building or running (a worker reports a failed start on it).
ACTIVE: ParallelGroup | None = None
#: Control messages wait for the next call, which may come hours later (an idle server).
_CONTROL_TIMEOUT = timedelta(days=365)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ParallelGroup:
    """This process's place in a split engine: rank, world, the control group, and (rank 0) its workers.

    Args:
        config: The sizes.
        rank: This process's global rank.
        control: A ``gloo`` process group for batches and results (objects), whatever the compute backend.
        workers: The processes rank 0 started (empty under ``torchrun`` and on workers).
        owns_process_group: Whether this engine initialized ``torch.distributed`` (and destroys it on close).
    """

    def __init__(self, config: ParallelConfig, rank: int, control: Any, workers: list[Any],
                 owns_process_group: bool) -> None:
        self.config = config
        self.rank = rank
        self.control = control
        self.workers = workers
        self.owns_process_group = owns_process_group
        #: Under torchrun: whether this engine initialized torch.distributed (from torchrun's environment).
        self.destroy_on_close = False
        #: Whether this rank took part in the start-up handshake (it happens once).
        self.handshake_done = False
        self.closed = False

    @property
    def world_size(self) -> int:
        """Ranks in the engine."""
        return self.config.world_size

    @property
    def is_driver(self) -> bool:
        """Rank 0: schedules, and returns the outputs."""
        return self.rank == 0

    @property
    def spmd(self) -> bool:
        """Launched by ``torchrun``: every rank calls ``encode`` itself."""
        return not self.owns_process_group

    def broadcast(self, obj: Any, src: int = 0) -> Any:
        """``obj`` from rank ``src`` on every rank (pickled, over the control group)."""
        box = [obj if self.rank == src else None]
        dist.broadcast_object_list(box, src=src, group=self.control)
        return box[0]

    def close(self, timeout: float = 60.0, *, stop_workers: bool = True) -> None:
        """Rank 0 of an engine-started group: tell the workers to stop (unless they are exiting already, after
        a failed start), wait for them, tear the group down."""
        if self.closed:
            return
        self.closed = True
        if not self.owns_process_group:
            if self.destroy_on_close and dist.is_initialized():
                dist.destroy_process_group()
            return
        if self.is_driver:
            try:
                if stop_workers:
                    self.broadcast(("stop",))
            except Exception as exc:  # noqa: BLE001 - a dead worker: terminate the rest below
                logger.warning("Could not tell the parallel workers to stop (%s); terminating them.", exc)
            deadline = time.monotonic() + timeout
            for proc in self.workers:
                proc.join(max(0.0, deadline - time.monotonic()))
                if proc.is_alive():
                    proc.terminate()
                    proc.join(5)
        if dist.is_initialized():
            dist.destroy_process_group()


class WorkerFailed(RuntimeError):
    """A rank of a split engine could not build its shard."""


def handshake(group: ParallelGroup, error: BaseException | None = None) -> None:
    """Start-up handshake: every rank reports whether it built its shard; all raise the first failure."""
    group.handshake_done = True
    reports: list[Any] = [None] * group.world_size
    dist.all_gather_object(reports, None if error is None else f"{type(error).__name__}: {error}", group=group.control)
    failed = [(rank, msg) for rank, msg in enumerate(reports) if msg is not None]
    if failed:
        rank, msg = failed[0]
        raise WorkerFailed(f"rank {rank} of the split engine failed to start: {msg}")


def start_group(config: ParallelConfig, device: torch.device, factory: Callable[..., Any],
                kwargs: dict[str, Any], timeout_s: float = DEFAULT_TIMEOUT_S) -> ParallelGroup:
    """Join (``torchrun``, spawned worker) or create (rank 0) the process group of a split engine.

    ``factory(**kwargs)`` is what each spawned worker builds (the ``LLM`` class and this engine's arguments).
    """
    timeout = timedelta(seconds=timeout_s)
    backend = "nccl" if device.type == "cuda" else "gloo"
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
        dist.init_process_group(backend, init_method="env://", timeout=timeout,
                                **_device_id(device, local_rank, backend))
        created = True
    if dist.is_initialized():
        world = dist.get_world_size()
        if world != config.world_size:
            raise ValueError(
                f"torch.distributed is already initialized with world_size={world}, but tensor_parallel_size * "
                f"pipeline_parallel_size = {config.world_size}: launch with `torchrun --nproc-per-node "
                f"{config.world_size}`, or build the LLM in a process without a process group (it then starts its "
                "own workers)."
            )
        rank = dist.get_rank()
        _bind_device(device, int(os.environ.get("LOCAL_RANK", rank)))
        control = dist.new_group(backend="gloo", timeout=_CONTROL_TIMEOUT)
        group = ParallelGroup(config, rank, control, [], owns_process_group=os.environ.get(_WORKER_ENV) is not None)
        group.destroy_on_close = created
        return group
    init_method = f"tcp://127.0.0.1:{_free_port()}"
    ctx = torch.multiprocessing.get_context("spawn")
    workers = []
    for rank in range(1, config.world_size):
        proc = ctx.Process(target=worker_main, name=f"rlhf-rewards-rank{rank}", daemon=True,
                           args=(rank, config.world_size, init_method, backend, timeout_s, factory, kwargs, os.getpid()))
        proc.start()
        workers.append(proc)
    try:
        # No RANK/WORLD_SIZE in this process's environment: it is the user's (a trainer's accelerate would take
        # them for its own launch). transformers binds rank 0 to cuda:0 without them.
        _bind_device(device, 0)
        dist.init_process_group(backend, init_method=init_method, rank=0, world_size=config.world_size,
                                timeout=timeout, **_device_id(device, 0, backend))
        control = dist.new_group(backend="gloo", timeout=_CONTROL_TIMEOUT)
    except BaseException:
        for proc in workers:
            proc.terminate()
        raise
    return ParallelGroup(config, 0, control, workers, owns_process_group=True)


def _launched_by_torchrun() -> bool:
    """``torchrun`` (or another launcher setting the ``env://`` variables) started this process as one rank."""
    if os.environ.get(_WORKER_ENV) is not None:
        return False
    return "TORCHELASTIC_RUN_ID" in os.environ or all(
        k in os.environ for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"))


def _set_rank_env(rank: int, world: int) -> None:
    # transformers binds each rank's accelerator from LOCAL_RANK when it builds its device mesh.
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), LOCAL_WORLD_SIZE=str(world))


def _bind_device(device: torch.device, rank: int) -> None:
    if device.type == "cuda":
        torch.cuda.set_device(rank)


def _device_id(device: torch.device, rank: int, backend: str) -> dict[str, Any]:
    return {"device_id": torch.device("cuda", rank)} if backend == "nccl" else {}


def rank_device(device: torch.device, rank: int) -> torch.device:
    """Where rank ``rank`` runs: ``cuda:LOCAL_RANK`` (``cuda:rank`` on one machine) on CUDA, else ``device``."""
    return torch.device("cuda", int(os.environ.get("LOCAL_RANK", rank))) if device.type == "cuda" else device


def _exit_with_parent(parent_pid: int) -> None:
    """A worker whose engine process died (killed, crashed) would wait in a collective for an hour: exit."""
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


def worker_main(rank: int, world: int, init_method: str, backend: str, timeout_s: float,
                factory: Callable[..., Any], kwargs: dict[str, Any], parent_pid: int) -> None:
    """A spawned rank: join the group, build the engine (its shard), run batches until rank 0 says stop."""
    _exit_with_parent(parent_pid)
    os.environ[_WORKER_ENV] = str(rank)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    _set_rank_env(rank, world)
    device_type = "cuda" if backend == "nccl" else "cpu"
    if device_type == "cpu":
        # The ranks share the machine's cores; each takes its part instead of all of them.
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))
    else:
        torch.cuda.set_device(rank)
    dist.init_process_group(backend, init_method=init_method, rank=rank, world_size=world,
                            timeout=timedelta(seconds=timeout_s),
                            **_device_id(torch.device(device_type), rank, backend))
    try:
        try:
            engine = factory(**kwargs)
        except Exception as exc:
            if ACTIVE is not None and not ACTIVE.handshake_done:  # tell rank 0 why, instead of letting it wait
                try:
                    handshake(ACTIVE, exc)
                except WorkerFailed:
                    pass
            raise
        engine.runner.serve()
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


__all__ = ["DEFAULT_TIMEOUT_S", "ParallelGroup", "WorkerFailed", "handshake", "rank_device", "start_group", "worker_main"]
