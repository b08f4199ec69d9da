"""``LLMOptions``: ``LLM``'s own constructor arguments, each documented and checked in one place.

``LLM(...)`` builds one from its keywords (vLLM's ``LLM`` does the same with its ``EngineArgs``); a split
engine's worker processes rebuild the same ``LLM`` from :meth:`LLMOptions.init_kwargs`.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from typing import Any

import torch

from rlhf_rewards.checks import check_bool, check_positive_int
from rlhf_rewards.pooling import PoolerConfig


@dataclass
class LLMOptions:
    """What ``LLM(model, ...)`` takes besides vLLM's other engine arguments (``engine_kwargs``).

    Model and tokenizer:
        model: Local folder or hub id of a transformers checkpoint (loaded with ``from_pretrained``).
        runner: ``"pooling"`` (or ``"auto"``); this engine only pools. Default ``"pooling"``.
        tokenizer: Tokenizer folder or id. Default ``None``: the model's own.
        revision: Hub revision of the model. Default ``None``.
        trust_remote_code: Passed to transformers; never needed by the supported architectures and never
            turned on implicitly. Default ``False``.
        hf_overrides: Fields written over ``config.json`` (e.g. ``architectures`` or ``classifier_from_token``).
        convert: vLLM's ``--convert``: ``"auto"``, ``"classify"``, ``"embed"`` or ``"none"``. Default ``"auto"``.
        pooler_config: A ``PoolerConfig``, a dict of its fields or a JSON string; unset fields keep the
            architecture's defaults. Default ``None``.

    Placement and precision:
        dtype: ``"auto"`` (checkpoint dtype on accelerators, float32 on CPU), ``"float32"``,
            ``"bfloat16"``, ``"float16"`` or a ``torch.dtype``. Heads always run in float32. Default ``"auto"``.
        device: ``"cpu"``, ``"cuda"``, ``"cuda:1"``, a ``torch.device``... Default ``None``: CUDA if present.
        seed: Seed of torch's generator. Default 0.

    Limits:
        max_model_len: Longest prompt in tokens. Default ``None``: the model's ``max_position_embeddings``.
        max_num_batched_tokens: Padded-token budget of one forward pass. Default ``None``: 16384.

    LoRA:
        enable_lora: Allow ``lora_request`` in ``encode``. Default ``False``.
        max_loras: Adapters kept loaded at once (least recently used are evicted). Default 4.
        max_lora_rank: Largest adapter rank accepted. Default 64.

    Execution:
        enforce_eager: vLLM's switch. ``True`` (default here): plain eager PyTorch. ``False``: the row-wise
            halves of each decoder layer (norms, q/k/v/o projections, RoPE, MLP) of the Llama/Qwen2/Qwen3/
            Mistral families run through ``torch.compile`` with dynamic shapes; attention stays eager. The first
            call compiles; scores are unchanged to float rounding (README "Performance" has its measurements).
        deterministic: ``True``: every score of a text is bit-identical whatever else is in the call (batch,
            order, shared prefixes, micro-batch boundaries, ``max_num_batched_tokens``, LoRA neighbours), on the
            same hardware, library versions, dtype and device (README "Reproducible rewards";
            :mod:`rlhf_rewards.engine.deterministic`). Needs ``enforce_eager=True``. Default ``False``.
        strict_vllm_compat: ``True``: every request vLLM 0.32 refuses is refused here too, with vLLM's exception
            type and message, instead of being served by one of this library's extensions (a pooling task other
            than the model's own, embeddings of a classifier, ``PoolingParams(truncate_prompt_tokens=...)``), and
            the defaults this library chooses where vLLM's are of no use (a process reward model's step tag)
            are vLLM's. The differential suite (``tests/compat/vllm_live``) checks each such case against vLLM;
            ``rlhf-rewards serve --strict-vllm-compat`` sets it. Default ``False``.

    Split engines (README "Models larger than one device", :mod:`rlhf_rewards.parallel`):
        tensor_parallel_size: vLLM's name. Split every layer over this many processes (heads and MLP columns;
            transformers' tensor-parallel plans). The engine starts the other ranks itself (``gloo`` on CPU,
            ``nccl`` on CUDA with rank ``r`` on ``cuda:r``), or joins ``torchrun``'s. Default 1.
        pipeline_parallel_size: vLLM's name. Split the layers into this many stages, one process each (times
            ``tensor_parallel_size``). Default 1.
        parallel_start_timeout_s: How long building waits for the worker ranks to start and load their shards.
            A rank that exits is reported at once; this bounds one that hangs. Default ``None``: the environment
            variable ``RLHF_REWARDS_PARALLEL_START_TIMEOUT_S``, else 900.
        parallel_call_timeout_s: How long a call waits for the ranks' next micro-batch (or result) before it
            stops them as stuck. A rank that exits is reported at once; waiting for the next call is never
            bounded. Default ``None``: ``RLHF_REWARDS_PARALLEL_CALL_TIMEOUT_S``, else 300.

    vLLM's other engine arguments:
        engine_kwargs: ``gpu_memory_utilization``, ``max_num_seqs``, ``served_model_name``,
            ``tokenizer_revision``, ``skip_tokenizer_init``, ``chat_template``, ``prefix_cache_bytes``,
            ``cpu_packed_weights`` (:mod:`rlhf_rewards.engine.packed_linear`)...: never a
            ``TypeError``. Those that mean something here are honoured; each other one is ignored with one
            ``IgnoredEngineArgWarning`` saying what happens instead (:mod:`rlhf_rewards.entrypoints.engine_args`).
    """

    model: str | os.PathLike[str]
    runner: str = "pooling"
    tokenizer: str | None = None
    pooler_config: PoolerConfig | dict[str, Any] | str | None = None
    dtype: str | torch.dtype = "auto"
    device: str | torch.device | None = None
    trust_remote_code: bool = False
    max_model_len: int | None = None
    max_num_batched_tokens: int | None = None
    enable_lora: bool = False
    max_loras: int = 4
    max_lora_rank: int = 64
    seed: int = 0
    revision: str | None = None
    hf_overrides: dict[str, Any] | None = None
    convert: str = "auto"
    enforce_eager: bool = True
    deterministic: bool = False
    tensor_parallel_size: int = 1
    pipeline_parallel_size: int = 1
    parallel_start_timeout_s: float | None = None
    parallel_call_timeout_s: float | None = None
    strict_vllm_compat: bool = False
    engine_kwargs: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.runner not in ("pooling", "auto"):
            raise ValueError(
                f"runner={self.runner!r}: rlhf-rewards only runs pooling models; use runner='pooling'."
            )
        if isinstance(self.model, os.PathLike):
            self.model = os.fspath(self.model)
        if not isinstance(self.model, str) or not self.model:
            raise ValueError(f"model must be a local folder or hub id string, got {self.model!r}.")
        for name in ("max_model_len", "max_num_batched_tokens"):
            if getattr(self, name) is not None:
                check_positive_int(name, getattr(self, name))
        for name in ("enforce_eager", "deterministic", "strict_vllm_compat"):
            check_bool(name, getattr(self, name))
        if self.deterministic and not self.enforce_eager:
            raise ValueError(
                "deterministic=True needs enforce_eager=True: compiled kernels are not batch-invariant."
            )

    def init_kwargs(self) -> dict[str, Any]:
        """The keywords that rebuild this ``LLM`` (what a split engine's worker processes are given)."""
        kwargs = {
            f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "engine_kwargs"
        }
        kwargs.update(self.engine_kwargs)
        return kwargs


__all__ = ["LLMOptions"]
