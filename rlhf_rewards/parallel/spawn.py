"""Starting one worker process of a split engine with its stderr piped back to the driver.

The driver forwards each worker's stderr line by line and keeps the last lines (:class:`SpawnedWorker`) for
its error messages, and says how a worker ended (:func:`describe_exit`).
"""

from __future__ import annotations

import multiprocessing.resource_tracker
import os
import signal
import sys
import threading
from collections import deque
from dataclasses import dataclass
from typing import Any

from rlhf_rewards.parallel.messages import Channel

#: Lines of each worker's stderr kept for error messages.
TAIL_LINES = 40
#: Serializes the fd-2 swap around ``Process.start`` (see :func:`start_with_stderr`).
_SPAWN_LOCK = threading.Lock()


@dataclass
class SpawnedWorker:
    """One worker process as the driver sees it: its rank, process, pipe and the end of its stderr."""

    rank: int
    proc: Any  # multiprocessing.Process (spawn context)
    channel: Channel
    tail: deque[str]
    #: False once the pipe reported end-of-file (the worker exited or closed it).
    open: bool = True

    def stderr_tail(self, lines: int = 20) -> str:
        """The last ``lines`` of its stderr, indented for an error message."""
        return "\n".join(f"    {line}" for line in list(self.tail)[-lines:]) or "    (nothing)"


def describe_exit(code: int | None) -> str:
    """How a process with exit code ``code`` ended, in words (the signal that killed it and what that means)."""
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


def start_with_stderr(proc: Any, stderr_fd: int) -> None:
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


def pump_stderr(fd: int, rank: int, tail: deque[str]) -> None:
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


__all__ = ["TAIL_LINES", "SpawnedWorker", "describe_exit", "pump_stderr", "start_with_stderr"]
