"""Loading a reward model whole inside a trainer that shards its own model (DeepSpeed ZeRO-3, FSDP).

A colocated reward model is never handed to the trainer: it is not wrapped by DeepSpeed or FSDP, so its
weights must be complete on every rank. Two process-wide switches would otherwise make ``from_pretrained``
shard or skip them:

- DeepSpeed ZeRO-3. ``TrainingArguments(deepspeed=...)`` and accelerate's DeepSpeed plugin keep an
  ``HfDeepSpeedConfig`` alive and register it in ``transformers.integrations.deepspeed`` (a weak
  reference). While it says stage 3, ``is_deepspeed_zero3_enabled()`` is True and ``from_pretrained``
  builds the model under ``deepspeed.zero.Init``: every parameter is partitioned (shape ``(0,)``, with
  ``ds_id``/``ds_shape`` attributes) and only a DeepSpeed engine could gather it again. A
  ``with deepspeed.zero.Init():`` block entered by user code patches module construction the same way.
- FSDP's ``cpu_ram_efficient_loading`` (``FSDP_CPU_RAM_EFFICIENT_LOADING=1``): ranks other than 0 load
  no weights and wait for FSDP to broadcast them, which never happens for a model FSDP does not wrap.

TRL loads its reference and reward models under ZeRO-3 partitioned and then wraps them in their own
DeepSpeed inference engines (``trl.models.prepare_deepspeed``). A reward model served by this engine runs
its own forward (packing, pruned last layer), so it is loaded whole instead, with :func:`unsharded_loading`.
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from torch import nn

_LOCK = threading.RLock()
_FSDP_ENV = "FSDP_CPU_RAM_EFFICIENT_LOADING"


@contextmanager
def unsharded_loading() -> Iterator[None]:
    """Within the block, models load with complete weights even under DeepSpeed ZeRO-3 or FSDP.

    - Unregisters transformers' ``HfDeepSpeedConfig`` weak reference, so ``is_deepspeed_zero3_enabled()``
      is False and ``from_pretrained`` neither enters ``deepspeed.zero.Init`` nor gathers through it.
    - Suspends a ``deepspeed.zero.Init`` context in force (``shutdown_init_context``), so modules built
      directly (heads, LoRA layers) are not partitioned either.
    - Turns off FSDP's ``cpu_ram_efficient_loading`` for ranks other than 0.

    Everything is restored on exit, also on error. The switches are process-wide: another thread that
    loads the *trainer's* model at the same moment would load it unsharded too, so load reward models
    before or after the trainer's model, not concurrently with it (the usual order in a training script).
    Re-entrant.
    """
    with _LOCK:
        hf_ds = _hf_deepspeed_module()
        saved_ref = getattr(hf_ds, "_hf_deepspeed_config_weak_ref", None) if hf_ds is not None else None
        ds_pp = sys.modules.get("deepspeed.runtime.zero.partition_parameters")
        init_context = getattr(ds_pp, "top_level_context", None) if ds_pp is not None else None
        saved_env = os.environ.get(_FSDP_ENV)
        try:
            if saved_ref is not None:
                hf_ds._hf_deepspeed_config_weak_ref = None
            if init_context is not None:
                ds_pp.shutdown_init_context()
            if saved_env is not None:
                os.environ[_FSDP_ENV] = "false"
            yield
        finally:
            if saved_env is not None:
                os.environ[_FSDP_ENV] = saved_env
            if init_context is not None:
                ds_pp.restore_init_context()
            if saved_ref is not None:
                hf_ds._hf_deepspeed_config_weak_ref = saved_ref


def zero3_enabled() -> bool:
    """Whether transformers currently sees a DeepSpeed ZeRO-3 config (``is_deepspeed_zero3_enabled()``)."""
    hf_ds = _hf_deepspeed_module()
    return bool(hf_ds is not None and hf_ds.is_deepspeed_zero3_enabled())


def partitioned_parameters(module: nn.Module) -> list[str]:
    """Names of ``module``'s parameters that DeepSpeed ZeRO-3 has partitioned (they carry ``ds_id``)."""
    return [name for name, p in module.named_parameters() if _is_partitioned(p)]


def _is_partitioned(param: Any) -> bool:
    return hasattr(param, "ds_id") or hasattr(param, "ds_shape")


def _hf_deepspeed_module() -> Any:
    try:
        import transformers.integrations.deepspeed as hf_ds
    except ImportError:  # pragma: no cover - transformers always has it
        return None
    return hf_ds


__all__ = ["partitioned_parameters", "unsharded_loading", "zero3_enabled"]
