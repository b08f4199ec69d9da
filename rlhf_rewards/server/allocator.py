"""glibc malloc settings for the ``rlhf-rewards serve`` process: freed memory is kept for the next forward.

Every forward allocates activations of a few MiB and frees them; the cross-call prefix cache allocates a
tensor per cached run and frees it on eviction. With glibc's defaults, blocks over the (adaptive) mmap
threshold are fresh mappings, freed heap tops go back to the kernel, and the engine thread allocates from
its own arena, so the same memory is faulted in again call after call: tens of thousands of page faults per
second under per-sample traffic. vLLM's CPU backend preloads tcmalloc for the same reason. :func:`tune_malloc`
sets, through ``mallopt`` (the same parameters as glibc's ``MALLOC_*_`` variables):

- ``M_MMAP_THRESHOLD`` 32 MiB (glibc's largest): smaller blocks come from the heap, where they are reused;
- ``M_TRIM_THRESHOLD`` 1 GiB and ``M_TOP_PAD`` 64 MiB: freed memory stays in the heap;
- ``M_ARENA_MAX`` 1: the engine thread shares the main arena (its blocks can outgrow a thread arena's 64 MiB).

On this project's benchmark (``rlhf-rewards serve``, one ``/pooling`` request per sample at concurrency 8) the
server was ~8% faster. The cost: the process's resident memory stays near its high-water mark instead of
shrinking after a large batch. Nothing is changed when the C library is not glibc, when the environment
already sets a ``MALLOC_*`` variable or preloads another allocator (``LD_PRELOAD``), or when
``RLHF_REWARDS_MALLOC_TUNING=0``.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
from collections.abc import Mapping

logger = logging.getLogger(__name__)

#: ``mallopt`` parameters (glibc's ``malloc.h``) and the values set.
SETTINGS: dict[str, tuple[int, int]] = {
    "M_MMAP_THRESHOLD": (-3, 32 << 20),
    "M_TRIM_THRESHOLD": (-1, 1 << 30),
    "M_TOP_PAD": (-2, 64 << 20),
    "M_ARENA_MAX": (-8, 1),
}
#: Set to ``0`` to leave the allocator alone.
ENV_SWITCH = "RLHF_REWARDS_MALLOC_TUNING"
_OTHER_ALLOCATORS = ("tcmalloc", "jemalloc", "mimalloc")


def _skip_reason(environ: Mapping[str, str]) -> str | None:
    if environ.get(ENV_SWITCH, "1") == "0":
        return f"{ENV_SWITCH}=0"
    given = sorted(k for k in environ if k.startswith("MALLOC_"))
    if given:
        return f"the environment sets {', '.join(given)}"
    preload = environ.get("LD_PRELOAD", "")
    if any(name in preload for name in _OTHER_ALLOCATORS):
        return f"LD_PRELOAD loads another allocator ({preload})"
    return None


def tune_malloc(environ: Mapping[str, str] | None = None) -> dict[str, int]:
    """Apply :data:`SETTINGS` to this process's glibc malloc; returns what was set (empty when skipped)."""
    reason = _skip_reason(os.environ if environ is None else environ)
    if reason is not None:
        logger.debug("malloc left as is: %s.", reason)
        return {}
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        logger.debug("malloc left as is: no glibc mallopt here.")
        return {}
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    applied = {}
    for name, (param, value) in SETTINGS.items():
        if mallopt(param, value) == 1:  # mallopt returns 1 on success
            applied[name] = value
    logger.debug("malloc settings: %s.", applied)
    return applied


__all__ = ["ENV_SWITCH", "SETTINGS", "tune_malloc"]
