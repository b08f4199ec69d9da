"""Projection weights packed once for the CPU's matrix multiply (MKL), kept beside the modules' own weights.

``F.linear`` on a CPU re-packs the weight into the GEMM's blocked layout on every call, a cost that does not
shrink with the number of rows. With a few hundred rows per forward (one sample per request, the cross-call
cache holding its prompt) that is a tenth of the matmul time. :class:`PackedWeights` packs each projection
of the direct decoder loop once (``torch.ops.mkl._mkl_reorder_linear_weight``, the layout ``torch.compile``'s
frozen CPU graphs use) and :func:`project` multiplies by the packed copy (``torch.ops.mkl._mkl_linear``).

- **Which layers**: each layer's q/k/v stacked into one GEMM (k and v alone run slower packed), its MLP's
  gate/up stacked into another (one wider GEMM: ~5% faster than two), its o_proj and down_proj; only plain
  float32 ``nn.Linear`` on a CPU build of torch with MKL, without forward hooks (accelerate's offload hooks,
  user hooks): others keep their module call. Calls of more than
  :data:`PACKED_MAX_ROWS` rows take ``F.linear`` (no faster packed there). Engines with LoRA enabled (peft wraps
  the projections) do not pack; a split engine's sharded (DTensor) or placeholder (meta) weights are not
  packable, so its ranks pack only the plain weights they hold.
- **Numbers**: another summation order than ``F.linear``'s kernel, ~1e-7 relative; deterministic mode does
  not pack (its row tiles are validated on ``F.linear``), nor does ``torch.compile`` (it picks its own kernels).
- **Stale copies**: each packed copy remembers its weight's storage and in-place version and is packed again
  when either changes (``load_state_dict``, ``copy_``, a new ``Parameter``). Writes through ``param.data``
  bypass versions, as for the prefix cache: ``LLM.reset_prefix_cache()`` repacks them too.
- **Cost**: RAM for the packed copies: MKL allocates about twice the projection weights' bytes and touches
  about their size (stacks keep no dense copy). The engine packs only while the allocations fit in a quarter
  of the memory available at load; ``cpu_packed_weights=False`` (``rlhf-rewards serve
  --no-cpu-packed-weights``) turns packing off, ``True`` forces it.
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

logger = logging.getLogger(__name__)

#: Packing is skipped (``cpu_packed_weights=None``) when the copies exceed this share of available memory.
MAX_SHARE_OF_AVAILABLE_MEMORY = 0.25
#: Bytes a packed copy may take per byte of its weight: MKL allocates about twice (it pads its panels), of
#: which it touches little more than the weight's size (on the benchmark model the engine's RSS grew by 61 MiB
#: for 48 MiB of projections); the guard counts what is allocated.
PACKED_BYTES_PER_WEIGHT_BYTE = 2
#: Above this many rows a projection takes ``F.linear``: its own per-call packing is amortized there, and MKL's
#: packed kernel measured no faster (1400 rows: within 4% either way; 175 rows: 10-15% faster packed).
PACKED_MAX_ROWS = 1024
#: Row-count hint for MKL's packing (the packed layout serves any number of rows).
_PACK_ROWS_HINT = 256


def mkl_packing_available() -> bool:
    """Whether this torch build has MKL's packed single-precision GEMM."""
    return torch.backends.mkl.is_available() and hasattr(torch.ops.mkl, "_mkl_linear")


def _has_hooks(module: nn.Module) -> bool:
    return bool(module._forward_hooks or module._forward_pre_hooks or hasattr(module, "_hf_hook"))


def packable(module: nn.Module) -> bool:
    """A plain float32 CPU ``nn.Linear`` without hooks: :func:`project` may bypass its ``forward``."""
    weight = module.weight if type(module) is nn.Linear else None
    return (
        weight is not None
        and type(weight.data) is torch.Tensor  # not a DTensor shard or another tensor subclass
        and weight.dtype == torch.float32
        and weight.device.type == "cpu"
        and not _has_hooks(module)
    )


#: Projections of one attention module multiplied as one GEMM (their weights stacked): q, k and v.
QKV = ("q_proj", "k_proj", "v_proj")
#: Projections of one gated MLP multiplied as one GEMM: gate and up.
GATE_UP = ("gate_proj", "up_proj")
#: Projections packed one by one (k and v alone are not: at ``512 -> 256`` MKL's packed kernel is slower;
#: gate and up are, where they cannot be stacked).
SINGLE = ("o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass(eq=False)
class _Packed:
    parts: tuple[nn.Module, ...]  # the linears whose weights are stacked (one for a plain projection)
    packed: torch.Tensor  # MKL's packed layout of the stacked weight
    # The module's own weight for one part; for a stack, a zero-stride stand-in of its shape.
    dense: torch.Tensor
    bias: torch.Tensor | None  # the stacked bias (read live from the module for one part)
    source: tuple[tuple[int, ...], ...]  # storage and version of every weight and bias when packed


def _sources(parts: tuple[nn.Module, ...]) -> tuple[tuple[int, ...], ...]:
    out = []
    for m in parts:
        out.append((m.weight.data_ptr(), m.weight._version))
        if m.bias is not None:
            out.append((m.bias.data_ptr(), m.bias._version))
    return tuple(out)


def _pack(parts: tuple[nn.Module, ...]) -> _Packed:
    weights = [m.weight.detach() for m in parts]
    stacked = weights[0] if len(parts) == 1 else torch.cat(weights)
    bias = None
    if len(parts) > 1 and any(m.bias is not None for m in parts):
        bias = torch.cat(
            [m.bias.detach() if m.bias is not None else m.weight.new_zeros(m.out_features) for m in parts]
        )
    packed = torch.ops.mkl._mkl_reorder_linear_weight(stacked, _PACK_ROWS_HINT)
    # ``_mkl_linear`` reads the dense weight only for its shape when told the true row count (it multiplies
    # by the dense weight when the count differs): a stack keeps no dense copy, which for a 7B model's
    # gate/up alone would be gigabytes. ``_multiply`` always passes the true row count.
    dense = stacked if len(parts) == 1 else stacked.new_zeros(()).expand(stacked.shape)
    return _Packed(parts, packed, dense, bias, _sources(parts))


class PackedWeights:
    """Packed copies of projection weights (see the module docs): ``plan`` lists ``(key, parts)``, where
    ``key`` is the linear itself, or the module whose projections (:data:`QKV`, :data:`GATE_UP`) are stacked."""

    def __init__(self, plan: Iterable[tuple[nn.Module, tuple[nn.Module, ...]]]) -> None:
        self._entries: dict[nn.Module, _Packed] = {key: _pack(parts) for key, parts in plan}

    def refresh(self) -> None:
        """Pack every weight again on its next use (after writes through ``param.data``, which keep versions)."""
        for entry in self._entries.values():
            entry.source = ()

    def __len__(self) -> int:
        return len(self._entries)

    def _fresh(self, key: nn.Module, entry: _Packed) -> _Packed | None:
        if entry.source == _sources(entry.parts):
            return entry
        if not all(packable(m) for m in entry.parts):  # moved, cast or hooked since: their own forward
            del self._entries[key]
            return None
        entry = self._entries[key] = _pack(entry.parts)
        return entry

    @staticmethod
    def _few_rows(x: torch.Tensor) -> bool:
        return x.numel() <= PACKED_MAX_ROWS * x.shape[-1]

    @staticmethod
    def _multiply(entry: _Packed, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        rows = x.reshape(-1, x.shape[-1]).contiguous()
        out = torch.ops.mkl._mkl_linear(rows, entry.packed, entry.dense, bias, rows.shape[0])
        return out.view(*x.shape[:-1], out.shape[-1])

    def project(self, module: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """``module(x)``, through the packed copy when there is one and ``x`` has few enough rows."""
        entry = self._entries.get(module)
        if entry is None or not self._few_rows(x) or _has_hooks(module):
            return module(x)
        entry = self._fresh(module, entry)
        return module(x) if entry is None else self._multiply(entry, x, module.bias)

    def project_stacked(
        self, owner: nn.Module, names: tuple[str, ...], x: torch.Tensor
    ) -> torch.Tensor | None:
        """``[owner.<name>(x) for name in names]`` side by side as one GEMM, or ``None`` where the stacked copy
        does not apply (not packed, too many rows, a projection replaced or hooked)."""
        entry = self._entries.get(owner)
        if entry is None or not self._few_rows(x) or len(entry.parts) != len(names):
            return None
        if any(
            getattr(owner, n, None) is not m or _has_hooks(m) for n, m in zip(names, entry.parts, strict=True)
        ):
            return None  # e.g. wrapped by peft since
        entry = self._fresh(owner, entry)
        return None if entry is None else self._multiply(entry, x, entry.bias)


def _stackable(owner: nn.Module | None, names: tuple[str, ...]) -> tuple[nn.Module, ...] | None:
    parts = tuple(getattr(owner, n, None) for n in names)
    if all(m is not None and packable(m) for m in parts) and len({m.in_features for m in parts}) == 1:
        return parts
    return None


def packing_plan(backbone: nn.Module) -> list[tuple[nn.Module, tuple[nn.Module, ...]]]:
    """What :class:`PackedWeights` packs for the direct decoder loop: each layer's q/k/v and its MLP's gate/up
    stacked (where each group is packable with one input size), its o_proj and down_proj (and gate/up that
    could not be stacked) one by one."""
    plan: list[tuple[nn.Module, tuple[nn.Module, ...]]] = []
    for layer in getattr(backbone, "layers", ()):
        attn, mlp = getattr(layer, "self_attn", None), getattr(layer, "mlp", None)
        stacked: list[nn.Module] = []
        for owner, names in ((attn, QKV), (mlp, GATE_UP)):
            parts = _stackable(owner, names)
            if parts is not None:
                plan.append((owner, parts))
                stacked += parts
        for part in (attn, mlp):
            for name in SINGLE:
                m = getattr(part, name, None)
                if m is not None and packable(m) and not any(m is p for p in stacked):
                    plan.append((m, (m,)))
    return plan


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
    if setting is False or device.type != "cpu" or not mkl_packing_available():
        return None
    plan = packing_plan(backbone)
    if not plan:
        return None
    weights = sum(m.weight.numel() * m.weight.element_size() for _, parts in plan for m in parts)
    need = PACKED_BYTES_PER_WEIGHT_BYTE * weights
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
    return PackedWeights(plan)


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
    if torch.compiler.is_compiling():  # compiled graphs never pack; and a context variable would break them
        return module(x)
    packed = _ACTIVE.get()
    return module(x) if packed is None else packed.project(module, x)


def _stacked(owner: nn.Module, names: tuple[str, ...], x: torch.Tensor) -> torch.Tensor | None:
    packed = None if torch.compiler.is_compiling() else _ACTIVE.get()
    return packed.project_stacked(owner, names, x) if packed is not None else None


def project_qkv(attn: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int]:
    """``attn``'s projections of ``x`` as ``(queries | keys side by side, values, query width)``: one GEMM
    through the active packed weights when they stack them (the first two are views of its output), else three
    :func:`project` calls."""
    stacked = _stacked(attn, QKV, x)
    if stacked is not None:
        q_width, k_width = attn.q_proj.out_features, attn.k_proj.out_features
        return stacked[..., : q_width + k_width], stacked[..., q_width + k_width :], q_width
    q, k, v = (project(getattr(attn, n), x) for n in QKV)
    return torch.cat((q, k), dim=-1), v, q.shape[-1]


def project_gate_up(mlp: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(mlp.gate_proj(x), mlp.up_proj(x))``: views of one GEMM through the active packed weights when they
    stack them, else two :func:`project` calls."""
    stacked = _stacked(mlp, GATE_UP, x)
    if stacked is not None:
        width = mlp.gate_proj.out_features
        return stacked[..., :width], stacked[..., width:]
    return project(mlp.gate_proj, x), project(mlp.up_proj, x)


__all__ = [
    "MAX_SHARE_OF_AVAILABLE_MEMORY",
    "PackedWeights",
    "active",
    "build_packed_weights",
    "packing_plan",
    "project_gate_up",
    "project_qkv",
    "mkl_packing_available",
    "packable",
    "project",
]
