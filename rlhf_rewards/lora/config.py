"""Reading and checking a peft adapter's ``adapter_config.json`` before anything is loaded.

Everything here is decided from the config and the model's (unadapted) module names, without touching the
model: a bad adapter is refused before it is half-loaded, and the manager can tell in advance which
adapters cannot be loaded side by side (:class:`Footprint`).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any

from torch import nn

from rlhf_rewards.lora.request import LoRARequest

logger = logging.getLogger(__name__)

#: LoraConfig switches whose layers peft cannot mix with other adapters in one batch (or that change the
#: base model itself). Each maps to the name used in the error message.
UNSUPPORTED_FEATURES: dict[str, str] = {
    "use_dora": "DoRA (use_dora=True)",
    "alora_invocation_tokens": "activated LoRA (alora_invocation_tokens)",
    "target_parameters": "target_parameters (LoRA on raw parameters)",
    "layer_replication": "layer_replication",
    "use_bdlora": "block-diagonal LoRA (use_bdlora=True)",
    "arrow_config": "Arrow routing (arrow_config)",
}


def describe(request: LoRARequest) -> str:
    """How errors name an adapter: its name, id and path."""
    return (
        f"LoRA adapter {request.lora_name!r} (lora_int_id={request.lora_int_id}, path={request.lora_path!r})"
    )


@dataclass(frozen=True)
class Footprint:
    """Which modules (by their names in the unadapted model) an adapter changes, and how.

    Args:
        lora: Modules that get LoRA layers.
        saved: Modules replaced by the adapter's own trained copy (``modules_to_save``), e.g. a reward head.
    """

    lora: frozenset[str]
    saved: frozenset[str]

    def conflicts_with(self, other: Footprint) -> bool:
        """Whether peft cannot hold both adapters at once: one saves a module that the other puts LoRA in."""
        return _overlaps(self.saved, other.lora) or _overlaps(other.saved, self.lora)


def _overlaps(saved: frozenset[str], lora: frozenset[str]) -> bool:
    for s in saved:
        for t in lora:
            if s == t or t.startswith(s + ".") or s.startswith(t + "."):
                return True
    return False


@dataclass(frozen=True)
class AdapterInfo:
    """A checked adapter: its peft config and its footprint on this model."""

    request: LoRARequest
    config: Any  # peft.LoraConfig
    footprint: Footprint
    rank: int


class ModuleIndex:
    """Names and types of the model's modules before any adapter is injected (what adapters were trained on)."""

    def __init__(self, hf_model: nn.Module) -> None:
        from peft.tuners.tuners_utils import BaseTunerLayer
        from peft.utils.other import AuxiliaryTrainingWrapper

        self.types: dict[str, type] = {}
        for name, module in hf_model.named_modules():
            if isinstance(module, (BaseTunerLayer, AuxiliaryTrainingWrapper)):
                raise ValueError(
                    "The model already holds peft layers; LoRAManager needs the unadapted model."
                )
            if name:
                self.types[name] = type(module)
        output = hf_model.get_output_embeddings() if hasattr(hf_model, "get_output_embeddings") else None
        self.output_name = next(
            (n for n, m in hf_model.named_modules() if output is not None and m is output), None
        )
        self.model_name: str = str(getattr(hf_model, "name_or_path", "") or "")

    def footprint(self, config: Any) -> Footprint:
        """Modules the adapter would put LoRA in and modules it would replace (peft's own matching rules)."""
        from peft.tuners.tuners_utils import check_target_module_exists
        from transformers.pytorch_utils import Conv1D

        # Matching rule of peft's _set_trainable for modules_to_save.
        saved = {n for n in self.types if any(n.endswith(k) for k in (config.modules_to_save or ()))}
        target = config.target_modules
        if isinstance(target, str) and target.lower() == "all-linear":
            # peft's choice, or a superset of it (it also skips some heads): only used to predict conflicts.
            linear = {
                n
                for n, t in self.types.items()
                if issubclass(t, (nn.Linear, Conv1D)) and n != self.output_name
            }
            lora = {n for n in linear if not _overlaps(frozenset(saved), frozenset([n]))}
        else:
            lora = {n for n in self.types if check_target_module_exists(config, n)}
        return Footprint(lora=frozenset(lora), saved=frozenset(saved))


def read_adapter_config(request: LoRARequest, index: ModuleIndex, max_lora_rank: int) -> AdapterInfo:
    """Load and check ``adapter_config.json``; a :class:`ValueError` names the adapter and what is wrong."""
    from peft import PeftConfig, PeftType

    path = request.lora_path
    if os.path.isdir(path) and not os.path.isfile(os.path.join(path, "adapter_config.json")):
        raise ValueError(
            f"{describe(request)}: the folder has no adapter_config.json; it is not a peft adapter."
        )
    try:
        config = PeftConfig.from_pretrained(path)
    except Exception as exc:  # peft/hub raise many types (OSError, HFValidationError, ValueError...)
        where = (
            "no such local folder, and it could not be read from the hub"
            if not os.path.exists(path)
            else "unreadable"
        )
        raise ValueError(f"{describe(request)}: cannot read the adapter ({where}): {exc}") from None
    if config.peft_type != PeftType.LORA:
        kind = getattr(config.peft_type, "value", config.peft_type)
        raise ValueError(f"{describe(request)}: it is a {kind} adapter; only LoRA adapters are supported.")
    for field, what in UNSUPPORTED_FEATURES.items():
        if getattr(config, field, None):
            raise ValueError(
                f"{describe(request)} uses {what}, which cannot be mixed with other adapters in one batch; "
                "merge it into the base model instead (peft's merge_and_unload)."
            )
    rank = max([int(config.r), *(int(r) for r in (config.rank_pattern or {}).values())])
    if rank > max_lora_rank:
        raise ValueError(
            f"{describe(request)} has rank {rank}, above max_lora_rank={max_lora_rank}; "
            f"raise max_lora_rank (LLM(..., max_lora_rank={rank})) to serve it."
        )
    footprint = index.footprint(config)
    if not footprint.lora and not footprint.saved:
        raise ValueError(
            f"{describe(request)}: its target_modules={_short(config.target_modules)} match no module of this model; "
            f"it was made for another base model ({config.base_model_name_or_path!r})."
        )
    _warn_on_other_base(request, config, index.model_name)
    # Loading must never re-initialise from (or rewrite) the base weights: PiSSA/OLoRA/LoftQ/EVA/CorDA
    # initialisation changes base layers. The weights all come from the adapter file.
    config.init_lora_weights = False
    config.inference_mode = True
    return AdapterInfo(request=request, config=config, footprint=footprint, rank=rank)


def _warn_on_other_base(request: LoRARequest, config: Any, model_name: str) -> None:
    base = str(getattr(config, "base_model_name_or_path", None) or "")
    if not base or not model_name:
        return
    # Local copies and hub ids of one model differ in path, so only the last component is compared, and a
    # difference is a warning: shapes and module names (checked at load) are what make an adapter unusable.
    if _last_part(base) != _last_part(model_name):
        logger.warning(
            "%s was trained on %r, not on this model (%r); loading it anyway (its module names and weight shapes "
            "are checked when it loads).",
            describe(request),
            base,
            model_name,
        )


def _last_part(name: str) -> str:
    return os.path.basename(os.path.normpath(name)).lower()


def _short(value: Any) -> str:
    if isinstance(value, (set, frozenset, list, tuple)):
        return repr(sorted(value))
    return repr(value)


__all__ = [
    "AdapterInfo",
    "Footprint",
    "ModuleIndex",
    "UNSUPPORTED_FEATURES",
    "describe",
    "read_adapter_config",
]
