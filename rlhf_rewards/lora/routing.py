"""Sending each row of a batch through its own adapter, with peft's layers.

- The backbone uses peft's mixed-adapter batch: every LoRA layer (and ``modules_to_save`` wrapper) gets
  ``adapter_names`` (one entry per batch row, ``"__base__"`` for the base model) as peft's own
  ``_enable_peft_forward_hooks`` does, so one forward serves rows of different adapters. The hooks are
  removed even when the forward raises.
- The head runs once per adapter present in the rows, with that adapter made active on the head's peft
  layers. Heads are small, and this also covers what peft cannot mix in a batch: a ``modules_to_save``
  copy of a non-Linear head (``Sequential`` in Qwen2.5-Math-RM) or a LoRA'd LM head read column by column.

Outside these contexts no adapter is active, so a forward without ``adapter_names`` is the base model's.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from functools import partial

import torch
from torch import nn

from rlhf_rewards.models.base import PoolingModel

#: peft's name for "no adapter" in ``adapter_names``.
BASE = "__base__"


def _peft_classes() -> tuple[type, type]:
    from peft.tuners.tuners_utils import BaseTunerLayer
    from peft.utils.other import AuxiliaryTrainingWrapper

    return BaseTunerLayer, AuxiliaryTrainingWrapper


def peft_layers(module: nn.Module) -> list[nn.Module]:
    """peft's adapter layers and ``modules_to_save`` wrappers inside ``module`` (itself included)."""
    if "peft" not in sys.modules:  # no adapter was ever loaded: nothing to look for
        return []
    classes = _peft_classes()
    return [m for m in module.modules() if isinstance(m, classes)]


def layer_adapters(layer: nn.Module) -> set[str]:
    """Names of the adapters a peft layer or wrapper holds."""
    tuner_layer, _ = _peft_classes()
    if isinstance(layer, tuner_layer):
        return set(layer._all_available_adapter_names())
    return set(getattr(layer, "_adapters", ()))


def adapters_in(module: nn.Module) -> set[str]:
    """Names of the adapters that change ``module`` (through any peft layer inside it)."""
    names: set[str] = set()
    for layer in peft_layers(module):
        names |= layer_adapters(layer)
    return names


def _adapter_names_hook(
    _module: nn.Module, args: tuple, kwargs: dict, adapter_names: list[str], layer_name: str
) -> tuple:
    x = args[0] if args else next(iter(kwargs.values()), None)
    # peft picks each adapter's rows by index along dim 0. A layer that sees tokens flattened or regrouped
    # (MoE experts, for one) would silently give rows the wrong adapter, so it is refused instead.
    if isinstance(x, torch.Tensor) and (x.dim() == 0 or x.shape[0] != len(adapter_names)):
        raise RuntimeError(
            f"LoRA layer {layer_name!r} sees an input of shape {tuple(x.shape)} whose first dimension is not the "
            f"batch of {len(adapter_names)} rows, so rows of different adapters cannot be told apart there; "
            "run such adapters one per call or merge them into the model."
        )
    kwargs["adapter_names"] = adapter_names
    return args, kwargs


@contextmanager
def mixed_adapter_batch(module: nn.Module, adapter_names: Sequence[str] | None) -> Iterator[None]:
    """While inside, row ``i`` of every batch that ``module``'s peft layers see uses ``adapter_names[i]``.

    A ``modules_to_save`` wrapper is told ``"__base__"`` for adapters it does not hold (peft would fail on
    them). ``None`` does nothing.
    """
    if adapter_names is None:
        yield
        return
    names = list(adapter_names)
    tuner_layer, wrapper = _peft_classes()
    handles = []
    try:
        layers = {id(m) for m in peft_layers(module)}
        for layer_name, layer in module.named_modules():
            if id(layer) not in layers:
                continue
            if isinstance(layer, tuner_layer):
                own = names
            else:
                held = layer_adapters(layer)
                own = [n if n in held else BASE for n in names]
            hook = partial(_adapter_names_hook, adapter_names=own, layer_name=layer_name)
            handles.append(layer.register_forward_pre_hook(hook, with_kwargs=True))
        yield
    finally:
        for handle in handles:
            handle.remove()


def set_active(layers: Sequence[nn.Module], adapter: str | None) -> None:
    """Make ``adapter`` the only active adapter of ``layers`` (``None``: none active, the base model)."""
    tuner_layer, _ = _peft_classes()
    for layer in layers:
        if adapter is not None and adapter in layer_adapters(layer):
            layer.set_adapter([adapter] if isinstance(layer, tuner_layer) else adapter, inference_mode=True)
        else:
            layer.set_adapter([], inference_mode=True)


@contextmanager
def active_adapter(module: nn.Module, adapter: str) -> Iterator[None]:
    """While inside, ``module``'s peft layers apply ``adapter`` (and only it); afterwards none is active."""
    layers = peft_layers(module)
    try:
        set_active(layers, adapter)
        yield
    finally:
        set_active(layers, None)


def score_rows_by_adapter(
    model: PoolingModel, states: torch.Tensor, columns: tuple[int, ...] | None, adapter_names: Sequence[str]
) -> torch.Tensor:
    """``model.score`` where row ``i`` of ``states`` goes through the head as adapter ``adapter_names[i]`` has it.

    Rows of adapters that leave the head alone (and base rows) take the model's own ``score`` (e.g. the
    column-only LM-head product); rows of adapters that change the head run the (peft-wrapped) head module.
    """
    names = list(adapter_names)
    if len(names) != states.shape[0]:
        raise ValueError(f"adapter_names has {len(names)} entries for {states.shape[0]} head rows.")
    head = model.head
    changed = adapters_in(head)
    if not changed.intersection(names):
        return model.head_logits(states, columns)
    groups: dict[str, list[int]] = {}
    for row, name in enumerate(names):
        groups.setdefault(name, []).append(row)
    out: torch.Tensor | None = None
    for name, rows in groups.items():
        index = torch.tensor(rows, device=states.device)
        part = states.index_select(0, index)
        if name in changed:
            with active_adapter(head, name):  # the (peft-wrapped) head module itself, not a shortcut
                logits = PoolingModel.head_logits(model, part, columns)
        else:
            logits = model.head_logits(part, columns)
        if out is None:
            out = logits.new_empty((len(names), *logits.shape[1:]))
        out[index.to(out.device)] = logits
    assert out is not None
    return out


class PeftAdapterRouter:
    """:class:`~rlhf_rewards.models.base.AdapterRouter` over peft's layers (installed by ``LoRAManager``):
    :func:`mixed_adapter_batch` over the backbone, :func:`score_rows_by_adapter` for the head."""

    backbone_rows = staticmethod(mixed_adapter_batch)
    score_rows = staticmethod(score_rows_by_adapter)


__all__ = [
    "BASE",
    "PeftAdapterRouter",
    "active_adapter",
    "adapters_in",
    "layer_adapters",
    "mixed_adapter_batch",
    "peft_layers",
    "score_rows_by_adapter",
    "set_active",
]
