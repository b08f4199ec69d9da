"""A worker process of an engine-started split engine: :func:`worker_main` joins the workers' group, builds the
engine (its shard) and serves the driver's calls until told to stop."""

from __future__ import annotations

import logging
import multiprocessing.connection
import multiprocessing.util
import os
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from rlhf_rewards.parallel.config import ParallelConfig
from rlhf_rewards.parallel.group import ParallelGroup, device_id_kwargs, set_rank_env
from rlhf_rewards.parallel.messages import Channel, RemoteError

logger = logging.getLogger(__name__)

#: Environment variable a spawned worker finds its rank in (with the usual RANK/LOCAL_RANK/WORLD_SIZE).
WORKER_ENV = "RLHF_REWARDS_PARALLEL_WORKER"
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
#: Set in a spawned worker while it builds its engine: its pipe to the driver.
_CHANNEL: Channel | None = None


@dataclass
class WorkerSpec:
    """What a spawned worker needs (pickled to it by ``spawn``)."""

    rank: int
    config: ParallelConfig
    port: int
    backend: str
    factory: Callable[..., Any]
    kwargs: dict[str, Any]
    parent_pid: int


class WorkerGroup(ParallelGroup):
    """A spawned worker's place in its engine: its rank and its pipe to the driver."""

    spawned = True

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


def worker_main(spec: WorkerSpec, conn: multiprocessing.connection.Connection) -> None:
    """A spawned rank: join the workers' group, build the engine (its shard), serve calls until told to stop."""
    global _CHANNEL
    _exit_with_parent(spec.parent_pid)
    # Ctrl-C in a terminal reaches the whole process group: the driver decides what happens to its workers.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    config, rank, world = spec.config, spec.rank, spec.config.world_size
    for name in _LAUNCHER_ENV:
        os.environ.pop(name, None)
    os.environ[WORKER_ENV] = str(rank)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    set_rank_env(rank, world)
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
            **device_id_kwargs(torch.device("cuda" if spec.backend == "nccl" else "cpu"), rank, spec.backend),
        )
        _CHANNEL = channel
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


def spawned_group(config: ParallelConfig) -> WorkerGroup | None:
    """This process's group if it is a spawned worker building its engine (see :func:`worker_main`), else ``None``."""
    if os.environ.get(WORKER_ENV) is not None and _CHANNEL is not None:
        return WorkerGroup(config, dist.get_rank(), _CHANNEL)
    return None


__all__ = ["WORKER_ENV", "WorkerGroup", "WorkerSpec", "spawned_group", "worker_main"]
