"""Checking a split before any weights load: does this model take ``tensor_parallel_size`` x ``pipeline_parallel_size``?

Everything here reads the raw ``config.json`` dict, so a split the model cannot take fails in milliseconds,
naming the field and the values it allows, instead of after (or halfway through) loading the weights.
"""

from __future__ import annotations

from typing import Any

import torch

from rlhf_rewards.parallel.config import ParallelConfig

#: ``model_type`` values whose decoder layers have a tensor-parallel plan (transformers' ``base_model_tp_plan``,
#: or ours for InternLM2) and a layer stack pipeline stages can split, and that the tests cover.
SUPPORTED_MODEL_TYPES: tuple[str, ...] = ("llama", "mistral", "qwen2", "qwen3", "internlm2")


def divisors(n: int) -> list[int]:
    """The sizes that split ``n`` heads evenly."""
    return [d for d in range(1, n + 1) if n % d == 0]


def check_split(
    parallel: ParallelConfig,
    config_dict: dict[str, Any],
    *,
    device: torch.device,
    enable_lora: bool = False,
    model: str = "model",
) -> None:
    """Raise ``ValueError`` naming the field and the allowed values if ``model`` cannot be split as asked.

    Checks, in order: LoRA (not supported on a split model), the architecture (``model_type`` in
    :data:`SUPPORTED_MODEL_TYPES`; token-built classifier heads are refused, and LM-head models take no pipeline
    split), attention and KV heads divisible
    by ``tensor_parallel_size``, at least one layer per pipeline stage, and on CUDA one device per rank.
    """
    if not parallel.enabled:
        return
    sizes = f"tensor_parallel_size={parallel.tensor_parallel_size}, pipeline_parallel_size={parallel.pipeline_parallel_size}"
    if enable_lora:
        raise ValueError(
            f"enable_lora=True is not supported with {sizes}: LoRA adapters run on a single-process model only "
            "(tensor_parallel_size=1 and pipeline_parallel_size=1). Merge the adapter into the weights to split it."
        )
    text = config_dict.get("text_config") or config_dict
    model_type = config_dict.get("model_type")
    architecture = (config_dict.get("architectures") or ["?"])[0]
    field = "tensor_parallel_size" if parallel.tensor_parallel_size > 1 else "pipeline_parallel_size"
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise ValueError(
            f"{field}: {model} ({architecture}, model_type={model_type!r}) has no tensor/pipeline-parallel plan "
            f"here; supported model_type values: {list(SUPPORTED_MODEL_TYPES)}. Use {field}=1."
        )
    if "classifier_from_token" in config_dict:
        raise ValueError(
            f"{field}: a classifier head built from LM-head rows (classifier_from_token) is not supported on a split "
            f"model; use {field}=1."
        )
    if parallel.pipeline_parallel_size > 1 and architecture.endswith(("ForCausalLM", "LMHeadModel")):
        raise ValueError(
            f"pipeline_parallel_size={parallel.pipeline_parallel_size}: {architecture} scores with its LM head, which "
            "transformers' pipeline split keeps on the last stage only; allowed for LM-head (math-shepherd) models: "
            "pipeline_parallel_size=1, with any valid tensor_parallel_size."
        )
    tp = parallel.tensor_parallel_size
    heads = text.get("num_attention_heads")
    kv_heads = text.get("num_key_value_heads") or heads
    for name, count in (("num_attention_heads", heads), ("num_key_value_heads", kv_heads)):
        if tp > 1 and isinstance(count, int) and count % tp:
            raise ValueError(
                f"tensor_parallel_size={tp} does not divide the model's {name}={count}; allowed tensor_parallel_size "
                f"values for {model}: {[d for d in divisors(int(kv_heads)) if int(heads) % d == 0]}."
            )
    layers = text.get("num_hidden_layers")
    if isinstance(layers, int) and parallel.pipeline_parallel_size > layers:
        raise ValueError(
            f"pipeline_parallel_size={parallel.pipeline_parallel_size} is more than the model's num_hidden_layers="
            f"{layers}: every stage needs at least one layer; allowed pipeline_parallel_size values: 1..{layers}."
        )
    if device.type == "cuda":
        available = torch.cuda.device_count()
        if parallel.world_size > available:
            raise ValueError(
                f"{sizes} needs {parallel.world_size} CUDA devices (one per rank) but {available} are visible; "
                f"allowed: tensor_parallel_size * pipeline_parallel_size <= {available}."
            )
        if device.index not in (None, 0):
            raise ValueError(
                f"device={str(device)!r}: a split model uses cuda:0..cuda:{parallel.world_size - 1} "
                "(rank r on cuda:r); pass device='cuda' and choose GPUs with CUDA_VISIBLE_DEVICES."
            )
    elif device.type != "cpu":
        raise ValueError(
            f"device={str(device)!r} is not supported with {sizes}; allowed devices: 'cpu' (gloo) and 'cuda' (nccl)."
        )
    elif torch.cuda.is_available():
        # transformers builds its device mesh on the machine's accelerator, whatever device= says.
        raise ValueError(
            f"device='cpu' with {sizes} on a machine with CUDA: transformers shards onto the accelerator; "
            "use device='cuda'."
        )


__all__ = ["SUPPORTED_MODEL_TYPES", "check_split", "divisors"]
