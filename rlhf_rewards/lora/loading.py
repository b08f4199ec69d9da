"""Putting one adapter into the model and taking it out again, with peft's public functions.

``inject_adapter_in_model`` adds the adapter's layers in place (the transformers model stays the model),
``set_peft_model_state_dict`` fills them, ``delete_adapter`` removes them. Loading is all or nothing: any
failure removes what was added and leaves the model as it was.
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING

import torch
from torch import nn

from rlhf_rewards.lora.config import AdapterInfo, describe
from rlhf_rewards.lora.routing import layer_adapters, peft_layers, set_active

if TYPE_CHECKING:
    from rlhf_rewards.models.base import PoolingModel

#: Module types whose ``modules_to_save`` copies peft can mix in one batch (its ModulesToSaveWrapper rule).
_MIXABLE_SAVED = (nn.Linear, nn.Embedding, nn.Conv1d, nn.Conv2d, nn.Conv3d)
_PEFT_PREFIX = "base_model.model."


def load_adapter(model: PoolingModel, info: AdapterInfo) -> None:
    """Inject and fill ``info``'s adapter under ``info.request.adapter_name``; :class:`ValueError` if unusable."""
    from peft.functional import cast_adapter_dtype, inject_adapter_in_model, set_peft_model_state_dict
    from peft.utils import load_peft_weights

    request = info.request
    name = request.adapter_name
    hf_model = model.hf_model
    device = _device_of(hf_model)
    try:
        state_dict = load_peft_weights(request.lora_path, device=str(device))
    except Exception as exc:
        raise ValueError(f"{describe(request)}: cannot read its weights: {exc}") from None
    # Saved keys carry PeftModel's "base_model.model." prefix; the adapter goes into the bare model here.
    state_dict = {k.removeprefix(_PEFT_PREFIX): v for k, v in state_dict.items()}
    configs = dict(getattr(hf_model, "peft_config", None) or {})
    try:
        with warnings.catch_warnings():
            # Several adapters in one model is the point here, not a mistake.
            warnings.filterwarnings("ignore", message="Already found a `peft_config` attribute")
            inject_adapter_in_model(info.config, hf_model, adapter_name=name)
        # As PeftModel does: float32 LoRA weights on half-precision layers (peft casts inputs per layer).
        cast_adapter_dtype(hf_model, adapter_name=name, autocast_adapter_dtype=True)
        result = set_peft_model_state_dict(hf_model, state_dict, adapter_name=name)
        _check_loaded(model, info, result.unexpected_keys, result.missing_keys)
        _heads_in_float32(model)
    except Exception as exc:
        unload_adapter(model, name, configs)
        if isinstance(exc, ValueError) and str(exc).startswith("LoRA adapter"):
            raise
        raise ValueError(
            f"{describe(request)} does not fit this model ({_summary(exc)}); it was probably trained on another "
            "base model."
        ) from exc
    configs[name] = info.config
    hf_model.peft_config = configs
    # A new adapter is made active by peft; here none is active outside a batch that names it.
    set_active(peft_layers(hf_model), None)


def unload_adapter(model: PoolingModel, name: str, configs: dict | None = None) -> None:
    """Remove adapter ``name`` everywhere, then the peft layers no adapter uses any more (the model as before)."""
    from peft.functional import delete_adapter
    from peft.tuners.tuners_utils import BaseTunerLayer

    hf_model = model.hf_model
    layers = named_peft_layers(hf_model)
    # With no adapter active (also after a failed injection, which activates the new one), peft's deletion
    # has no active adapter to hand over.
    set_active([layer for _, layer in layers], None)
    if any(name in layer_adapters(layer) for _, layer in layers):
        delete_adapter(hf_model, adapter_name=name, prefix="lora_", layer_cls=BaseTunerLayer)
    # Wrappers and LoRA layers left without adapters go (deepest first), so the model is what it was.
    for layer_name, layer in sorted(named_peft_layers(hf_model), key=lambda item: -item[0].count(".")):
        if not layer_adapters(layer):
            original = layer.get_base_layer() if isinstance(layer, BaseTunerLayer) else layer.original_module
            _replace(hf_model, layer_name, original)
    if configs is None:
        configs = dict(getattr(hf_model, "peft_config", None) or {})
    configs.pop(name, None)
    if configs:
        hf_model.peft_config = configs
    elif "peft_config" in vars(hf_model):
        del hf_model.peft_config
    set_active(peft_layers(hf_model), None)


def named_peft_layers(hf_model: nn.Module) -> list[tuple[str, nn.Module]]:
    """``(name, layer)`` of every peft layer and wrapper of the model."""
    layers = {id(m) for m in peft_layers(hf_model)}
    return [(n, m) for n, m in hf_model.named_modules() if id(m) in layers]


def _replace(root: nn.Module, dotted: str, new: nn.Module) -> None:
    parent_name, _, child = dotted.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, child, new)


def _check_loaded(model: PoolingModel, info: AdapterInfo, unexpected: list[str], missing: list[str]) -> None:
    request = info.request
    name = request.adapter_name
    if unexpected:
        raise ValueError(
            f"{describe(request)} has weights that fit no layer its config creates in this model "
            f"({_first(unexpected)}); it was trained on another base model, or its config does not list those modules."
        )
    own_missing = [k for k in missing if name in k.split(".")]
    if own_missing:
        raise ValueError(
            f"{describe(request)} lacks weights for modules its config targets ({_first(own_missing)}); "
            "it was trained on another base model, or its adapter files are incomplete."
        )
    head = _head(model)
    head_ids = {id(m) for m in head.modules()} if head is not None else set()
    tuner_variants = []
    for layer_name, layer in named_peft_layers(model.hf_model):
        if name not in layer_adapters(layer):
            continue
        variants = getattr(layer, "lora_variant", {})
        if name in variants:
            tuner_variants.append(f"{layer_name} ({type(variants[name]).__name__})")
        original = getattr(layer, "original_module", None)
        if original is not None and id(layer) not in head_ids and not isinstance(original, _MIXABLE_SAVED):
            raise ValueError(
                f"{describe(request)} saves its own copy of {layer_name} ({type(original).__name__}); peft can only "
                "mix adapters in a batch for saved Linear/Embedding/Conv modules (and the head). Merge it into "
                "the base model instead."
            )
    if tuner_variants:
        raise ValueError(
            f"{describe(request)} uses a LoRA variant peft cannot mix in one batch: {_first(tuner_variants)}."
        )


def _heads_in_float32(model: PoolingModel) -> None:
    """The head, its LoRA weights and its saved copies run in float32, as PoolingModel runs the base head."""
    if model.head_name is None:  # an LM head shares its weight with the embedding: it keeps the model dtype
        return
    for p in model.head.parameters():
        if p.is_floating_point() and p.dtype != torch.float32:
            p.data = p.data.float()


def _head(model: PoolingModel) -> nn.Module | None:
    try:
        return model.head
    except ValueError:
        return None


def _device_of(module: nn.Module) -> torch.device:
    for p in module.parameters():
        return p.device
    return torch.device("cpu")


def _summary(exc: Exception) -> str:
    """The informative line of a loading error (torch's size-mismatch lines rather than its header)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    mismatches = [line for line in lines if line.startswith("size mismatch")]
    if mismatches:
        more = f" (and {len(mismatches) - 1} more)" if len(mismatches) > 1 else ""
        return mismatches[0].rstrip(".") + more
    return f"{type(exc).__name__}: {lines[0] if lines else ''}"


def _first(items: list[str], n: int = 4) -> str:
    items = sorted(items)
    return ", ".join(items[:n]) + (f" and {len(items) - n} more" if len(items) > n else "")


__all__ = ["load_adapter", "unload_adapter"]
