"""Single-threaded execution of small CPU forwards.

On CPU every parallel kernel call synchronises the intra-op thread pool. For a forward of a few million
FLOPs (tiny models, a handful of short texts) that synchronisation costs more than the arithmetic, and
on a busy machine each call can wait a whole scheduler time slice for the second thread, so a test-sized
forward can run many times slower with 2 threads than with 1. Forwards below
:data:`SMALL_FORWARD_FLOPS` therefore run on the calling thread alone. The numbers are unaffected (the
same kernels run, only their work split changes; reductions in float32 may round differently in the
last bit, well inside the 1e-5 the tests require).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

#: Forwards estimated below this many FLOPs run single-threaded on CPU (about 10-20 ms on one core).
SMALL_FORWARD_FLOPS = 1e9


def dense_parameters(backbone: nn.Module) -> int:
    """Parameters a token multiplies through (every backbone weight but the input embedding table)."""
    embedding = backbone.get_input_embeddings() if hasattr(backbone, "get_input_embeddings") else None
    skip = {id(p) for p in embedding.parameters()} if embedding is not None else set()
    return sum(p.numel() for p in backbone.parameters() if id(p) not in skip)


@contextlib.contextmanager
def threads_for(device: torch.device, flops: float, threshold: float = SMALL_FORWARD_FLOPS) -> Iterator[None]:
    """Run the block on one intra-op thread when it is CPU work under ``threshold`` FLOPs."""
    if device.type != "cpu" or flops >= threshold:
        yield
        return
    saved = torch.get_num_threads()
    if saved <= 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(saved)


__all__ = ["SMALL_FORWARD_FLOPS", "dense_parameters", "threads_for"]
