"""Loading any supported checkpoint (local folder or hub id) into a :class:`PoolingModel`."""

from __future__ import annotations

from typing import Any

import torch
from transformers import AutoConfig, PretrainedConfig

from rlhf_rewards.models.base import LoadContext, PoolingModel
from rlhf_rewards.models.registry import ModelSpec, resolve_spec


def read_config_dict(model: str, revision: str | None = None) -> dict[str, Any]:
    """The raw ``config.json`` of ``model`` (no model class is imported, no remote code runs)."""
    try:
        config_dict, _ = PretrainedConfig.get_config_dict(model, revision=revision)
    except OSError as exc:
        raise ValueError(
            f"model={model!r}: no config.json found (not a local folder or reachable hub id): {exc}"
        ) from None
    return config_dict


def load_pooling_model(
    model: str,
    *,
    dtype: torch.dtype,
    device: torch.device,
    revision: str | None = None,
    trust_remote_code: bool = False,
    hf_overrides: dict[str, Any] | None = None,
    convert: str = "auto",
    sharding: Any = None,
) -> PoolingModel:
    """Resolve the architecture through the registry and run its loader.

    ``sharding`` (set by ``rlhf_rewards.parallel``) maps ``(model class, config)`` to extra ``from_pretrained``
    arguments (transformers' ``distributed_config``), for a tensor/pipeline-parallel load.
    """
    config_dict = read_config_dict(model, revision)
    config_dict.update(hf_overrides or {})
    architectures = config_dict.get("architectures") or []
    if not architectures:
        raise ValueError(
            f"model={model!r}: config.json has no `architectures`; set it with hf_overrides={{'architectures': [...]}}."
        )
    if (
        convert == "auto"
        and "classifier_from_token" in config_dict
        and not architectures[0].endswith("ForSequenceClassification")
    ):
        convert = "classify"  # a head built from LM-head rows only makes sense for a classifier
    spec: ModelSpec = resolve_spec(architectures[0], convert)
    if spec.config_loader is not None:
        config = spec.config_loader(model, config_dict, {"revision": revision})
    else:
        try:
            # The architecture is implemented here, so its config never needs the checkpoint's remote code;
            # trust_remote_code=True (passed out of habit from vLLM) is only a fallback for the config class.
            try:
                config = AutoConfig.from_pretrained(model, revision=revision, trust_remote_code=False)
            except ValueError:
                if not trust_remote_code:
                    raise
                config = AutoConfig.from_pretrained(model, revision=revision, trust_remote_code=True)
        except ValueError as exc:
            raise ValueError(
                f"model={model!r}: transformers cannot build its config without remote code ({exc}). "
                "Register a config_loader for this architecture instead of enabling trust_remote_code."
            ) from None
        for key, value in (hf_overrides or {}).items():
            setattr(config, key, value)
    ctx = LoadContext(
        model=model,
        config=config,
        dtype=dtype,
        device=device,
        revision=revision,
        trust_remote_code=trust_remote_code,
        extra={"convert": convert, **({"sharding": sharding} if sharding is not None else {})},
    )
    pooling_model = spec.loader(ctx, spec)
    pooling_model.to(device)
    pooling_model.eval()
    return pooling_model
