"""What the driver and the workers of a split engine send each other: pickled messages over one pipe each.

:class:`Channel` (one end of a pipe), :class:`RemoteError` (an exception raised on a worker, carried to the
driver) and :func:`pack_outputs` / :func:`unpack_outputs` (a call's output tensors in one buffer).
"""

from __future__ import annotations

import math
import multiprocessing.connection
import pickle
import threading
import traceback
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist


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


__all__ = ["Channel", "RemoteError", "pack_outputs", "unpack_outputs"]
