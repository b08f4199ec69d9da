"""Projection weights packed once for the CPU's matrix multiply (MKL), kept beside the modules' own weights.

``F.linear`` on a CPU re-packs the weight into the GEMM's blocked layout on every call, a cost that does not
shrink with the number of rows. With a few hundred rows per forward (one sample per request, the cross-call
cache holding its prompt) that is a tenth of the matmul time. :class:`PackedWeights` packs each projection
of the direct decoder loop once (``torch.ops.mkl._mkl_reorder_linear_weight``, the layout ``torch.compile``'s
frozen CPU graphs use) and :func:`project` multiplies by the packed copy (``torch.ops.mkl._mkl_linear``).

- **Which layers**: plain float32 ``nn.Linear`` on a CPU build of torch with MKL, without forward hooks
  (accelerate's offload hooks, user hooks): those keep their module call. A LoRA-wrapped projection is a peft
  module, not an ``nn.Linear``, so adapters keep peft's forward.
- **Numbers**: another summation order than ``F.linear``'s kernel, ~1e-7 relative; deterministic mode does
  not pack (its row tiles are validated on ``F.linear``), nor does ``torch.compile`` (it picks its own kernels).
- **Stale copies**: each packed copy remembers its weight's storage and in-place version and is packed again
  when either changes (``load_state_dict``, ``copy_``, a new ``Parameter``). Writes through ``param.data``
  bypass versions, as for the prefix cache: ``LLM.reset_prefix_cache()`` repacks them too.
- **Cost**: RAM for the packed copies, about twice the projection weights' bytes (MKL pads its panels). The
  engine packs only while they fit in a quarter of the memory available at load; ``cpu_packed_weights=False``
  (``rlhf-rewards serve --no-cpu-packed-weights``) turns packing off, ``True`` forces it.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass

import torch
from torch import nn

from rlhf_rewards.checks import check_bool

logger = logging.getLogger(__name__)

#: Packing is skipped (``cpu_packed_weights=None``) when the copies exceed this share of available memory.
MAX_SHARE_OF_AVAILABLE_MEMORY = 0.25
#: Resident bytes of a packed copy per byte of its weight (MKL pads its panels; measured on the benchmark
#: model: +95 MiB of RSS for 48 MiB of projections).
PACKED_BYTES_PER_WEIGHT_BYTE = 2
#: Row-count hint for MKL's packing (the packed layout serves any number of rows).
_PACK_ROWS_HINT = 256


def mkl_packing_available() -> bool:
    """Whether this torch build has MKL's packed single-precision GEMM."""
    return torch.backends.mkl.is_available() and hasattr(torch.ops.mkl, "_mkl_linear")


def _has_hooks(module: nn.Module) -> bool:
    return bool(module._forward_hooks or module._forward_pre_hooks or hasattr(module, "_hf_hook"))


def packable(module: nn.Module) -> bool:
    """A plain float32 CPU ``nn.Linear`` without hooks: :func:`project` may bypass its ``forward``."""
    return (
        type(module) is nn.Linear
        and module.weight.dtype == torch.float32
        and module.weight.device.type == "cpu"
        and not _has_hooks(module)
    )


@dataclass(eq=False)
class _Packed:
    weight: torch.Tensor  # MKL's packed layout of module.weight
    source: tuple[int, int]  # (data_ptr, _version) of module.weight when packed


def _source(weight: torch.Tensor) -> tuple[int, int]:
    return weight.data_ptr(), weight._version


class PackedWeights:
    """Packed copies of some ``nn.Linear`` modules' weights (see the module docs)."""

    def __init__(self, modules: Iterable[nn.Module]) -> None:
        self._packed: dict[nn.Module, _Packed] = {}
        for m in modules:
            if packable(m):
                self._packed[m] = self._pack(m)

    @staticmethod
    def _pack(module: nn.Module) -> _Packed:
        weight = module.weight.detach()
        return _Packed(torch.ops.mkl._mkl_reorder_linear_weight(weight, _PACK_ROWS_HINT), _source(weight))

    def refresh(self) -> None:
        """Pack every weight again on its next use (after writes through ``param.data``, which keep versions)."""
        for packed in self._packed.values():
            packed.source = (0, -1)

    def __len__(self) -> int:
        return len(self._packed)

    def project(self, module: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """``module(x)``, through the packed copy when there is one."""
        packed = self._packed.get(module)
        if packed is None or _has_hooks(module):
            return module(x)
        weight = module.weight
        if packed.source != _source(weight):
            if not packable(module):  # moved, cast or hooked since: its own forward from now on
                del self._packed[module]
                return module(x)
            packed = self._packed[module] = self._pack(module)
        rows = x.reshape(-1, x.shape[-1]).contiguous()
        out = torch.ops.mkl._mkl_linear(rows, packed.weight, weight, module.bias, rows.shape[0])
        return out.view(*x.shape[:-1], out.shape[-1])


def decoder_projections(backbone: nn.Module) -> list[nn.Module]:
    """The projections the direct decoder loop multiplies by (attention q/k/v/o, MLP gate/up/down)."""
    names = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
    found = []
    for layer in getattr(backbone, "layers", ()):
        for part in (getattr(layer, "self_attn", None), getattr(layer, "mlp", None)):
            found.extend(getattr(part, n) for n in names if part is not None and hasattr(part, n))
    return found


def _available_memory_bytes() -> int | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def build_packed_weights(
    backbone: nn.Module, device: torch.device, setting: bool | None
) -> PackedWeights | None:
    """The engine's packed weights for ``backbone`` on ``device``, or ``None`` where packing does not apply.

    ``setting``: ``False`` never packs, ``True`` packs whatever the memory, ``None`` packs while the copies fit
    in :data:`MAX_SHARE_OF_AVAILABLE_MEMORY` of the memory available now.
    """
    if setting is not None:
        check_bool("cpu_packed_weights", setting)
    if setting is False or device.type != "cpu" or not mkl_packing_available():
        return None
    modules = [m for m in decoder_projections(backbone) if packable(m)]
    if not modules:
        return None
    need = PACKED_BYTES_PER_WEIGHT_BYTE * sum(m.weight.numel() * m.weight.element_size() for m in modules)
    available = _available_memory_bytes()
    if setting is None and available is not None and need > MAX_SHARE_OF_AVAILABLE_MEMORY * available:
        logger.info(
            "Not packing the projection weights for the CPU GEMM: the copies (%.0f MiB) exceed %.0f%% of the "
            "available memory (%.0f MiB); cpu_packed_weights=True forces it.",
            need / 2**20,
            100 * MAX_SHARE_OF_AVAILABLE_MEMORY,
            available / 2**20,
        )
        return None
    return PackedWeights(modules)


_ACTIVE: ContextVar[PackedWeights | None] = ContextVar("rlhf_rewards_packed_weights", default=None)


@contextlib.contextmanager
def active(packed: PackedWeights | None) -> Iterator[None]:
    """Make :func:`project` use ``packed`` in this context (``None``: every module's own forward)."""
    token = _ACTIVE.set(packed)
    try:
        yield
    finally:
        _ACTIVE.reset(token)


def project(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``module(x)``, through the active packed weights when they hold ``module``."""
    packed = _ACTIVE.get()
    return module(x) if packed is None else packed.project(module, x)


__all__ = [
    "MAX_SHARE_OF_AVAILABLE_MEMORY",
    "PackedWeights",
    "active",
    "build_packed_weights",
    "decoder_projections",
    "mkl_packing_available",
    "packable",
    "project",
]
