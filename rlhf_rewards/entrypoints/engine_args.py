"""vLLM engine arguments that ``LLM(...)`` takes out of habit, and what each one does here.

vLLM 0.33's ``LLM`` forwards ``**kwargs`` to its ``EngineArgs`` dataclass (259 fields). Code moved from
vLLM passes many of them (``gpu_memory_utilization=0.75, max_num_seqs=...``); none of them may be a
``TypeError`` here. Each name is in exactly one row of :data:`RULES`:

- ``LLM``'s own parameters (``tensor_parallel_size``, ``max_model_len``, ``seed``, ``dtype``, ...) are
  honoured by ``LLM.__init__`` itself and never reach this module;
- :data:`HONOURED` names are mapped onto this engine (``served_model_name``, ``tokenizer_revision``,
  ``skip_tokenizer_init``, ``chat_template``, ``disable_log_stats``, ``task``, ...) by :func:`split_engine_args`;
- every other name is accepted and ignored with ONE :class:`IgnoredEngineArgWarning` per argument and
  call, whose text says what happens instead (``None``, vLLM's "unset", is accepted silently);
- ``data_parallel_size > 1`` is an error, as in vLLM's ``LLM`` (which refuses it in one process).

A name vLLM does not know either stays a ``TypeError`` (with a close match suggested), as in vLLM.
"""

from __future__ import annotations

import dataclasses
import difflib
import warnings
from collections.abc import Mapping
from typing import Any

from rlhf_rewards.checks import check_bool
from rlhf_rewards.entrypoints.llm_options import LLMOptions


class IgnoredEngineArgWarning(UserWarning):
    """A vLLM engine argument that means nothing to this engine; the message says what happens instead."""


_NO_KV_CACHE = (
    "is ignored: there is no paged KV cache to size (each call is one forward pass per micro-batch, "
    "bounded by max_num_batched_tokens); keys and values kept across calls are the prefix cache's, "
    "bounded by prefix_cache_bytes"
)
_SCHEDULER = (
    "is ignored: there is no request scheduler; a call is split into micro-batches of at most "
    "max_num_batched_tokens tokens, whatever the number of sequences"
)
_GENERATION = (
    "is ignored: it configures text generation, and this engine only pools (no sampling, no decoding)"
)
_MULTIMODAL = "is ignored: only text models are supported (no multimodal processor)"
_DISTRIBUTED = (
    "is ignored: the only splits are tensor_parallel_size and pipeline_parallel_size (see "
    "rlhf_rewards.parallel); for data parallelism run replicas with RayWorkerPool or several servers"
)
_KERNELS = (
    "is ignored: kernels are chosen by this engine (PyTorch SDPA / FlashAttention varlen on CUDA); "
    "enforce_eager=False turns on torch.compile"
)
_LOADING = (
    "is ignored: weights load with transformers' from_pretrained from a folder or hub id "
    "(set HF_HOME / HF_TOKEN for the cache and credentials)"
)
_LORA = (
    "is ignored: LoRA adapters are peft adapters loaded on demand; only enable_lora, max_loras and "
    "max_lora_rank apply"
)
_OBSERVABILITY = (
    "is ignored: this engine logs through the standard logging module and the server's /metrics; "
    "there are no engine stats or traces to configure"
)
_SLEEP = (
    "is ignored: sleep mode is ColocatedWorker(..., offload=True) with worker.sleep() / worker.wake_up() "
    "(weights moved to the CPU)"
)
_PREFIX = (
    "is ignored: prefixes are shared within a call and cached across calls by token ids (exact; "
    "enable_prefix_caching and prefix_cache_bytes configure the cache)"
)
_QUANT = (
    "is ignored: weights load as transformers loads the checkpoint (a checkpoint's own quantization_config "
    "applies); choose precision with dtype="
)
_MISC = "is ignored: it configures a vLLM engine feature this pooling engine does not have"

#: Every vLLM 0.33 ``EngineArgs`` field and ``LLM`` keyword this module handles, with what happens to it.
RULES: dict[str, str] = {}


def _rows(note: str, names: str) -> None:
    for name in names.split():
        RULES[name] = note


_rows(
    _NO_KV_CACHE,
    """gpu_memory_utilization kv_cache_memory_bytes kv_cache_dtype block_size num_gpu_blocks_override
    swap_space cpu_offload_gb cpu_offload_params offload_backend offload_group_size offload_num_in_group
    offload_prefetch_step offload_params kv_offloading_size kv_offloading_backend kv_cache_dtype_skip_layers
    kv_sharing_fast_prefill kv_transfer_config kv_events_config disable_hybrid_kv_cache_manager mamba_cache_dtype
    mamba_ssm_cache_dtype mamba_block_size mamba_cache_mode enable_mamba_shared_prefix_checkpoint
    enable_mamba_cache_stochastic_rounding mamba_cache_philox_rounds ec_transfer_config ec_manager_config
    replayssm_buffer_len use_replayssm swa_bounded_replay""",
)
_rows(_PREFIX, "prefix_caching_hash_algo prefix_cache_retention_interval prefix_match_unit")
_rows(
    _SCHEDULER,
    """max_num_seqs max_num_scheduled_tokens max_num_active_seqs max_num_queued_reqs
    max_num_queued_tokens long_prefill_token_threshold long_prefill_token_threshold_adaptive enable_chunked_prefill
    disable_chunked_mm_input scheduler_reserve_full_isl prefill_schedule_interval scheduling_policy scheduler_cls
    async_scheduling stream_interval disable_sliding_window disable_cascade_attn""",
)
_rows(
    _GENERATION,
    """max_logprobs logprobs_mode use_fp64_gumbel enable_trace_replay structured_outputs_config
    aux_output_config reasoning_parser reasoning_parser_plugin reasoning_config speculative_config spec_method
    spec_model spec_tokens watermark watermark_config diffusion_config generation_config override_generation_config
    logits_processors enable_return_routed_experts return_sampling_mask tokens_only per_request_spec_decode_metrics""",
)
_rows(
    _MULTIMODAL,
    """allowed_local_media_path allowed_media_domains enable_prompt_embeds limit_mm_per_prompt
    enable_mm_embeds interleave_mm_strings media_io_kwargs mm_processor_kwargs mm_processor_cache_gb
    mm_processor_cache_type mm_hasher_algorithm mm_shm_cache_max_object_size_mb mm_encoder_only mm_encoder_tp_mode
    mm_encoder_attn_backend mm_encoder_attn_dtype mm_encoder_fp8_scale_path mm_encoder_fp8_scale_save_path
    mm_encoder_fp8_scale_save_margin io_processor_plugin renderer_num_workers skip_mm_profiling video_pruning_rate
    video_pruning_method mm_tensor_ipc mm_processor_device mm_ipc_gpu_memory_gb mm_device_do_normalize
    language_model_only enable_mm_processor_stats""",
)
_rows(
    _DISTRIBUTED,
    """distributed_executor_backend master_addr master_port nnodes node_rank
    distributed_timeout_seconds cpu_distributed_timeout_seconds numa_bind numa_bind_nodes numa_bind_cpus device_ids
    prefill_context_parallel_size decode_context_parallel_size dcp_comm_backend dcp_q_replicate
    dcp_kv_cache_interleave_size cp_kv_cache_interleave_size data_parallel_rank data_parallel_start_rank
    data_parallel_size_local data_parallel_address data_parallel_rpc_port data_parallel_hybrid_lb
    data_parallel_external_lb data_parallel_multi_port_external_lb data_parallel_backend enable_hc_sp
    enable_expert_parallel enable_batch_sharded_sampling enable_ep_weight_filter all2all_backend enable_elastic_ep
    elastic_ep_max_dp_size enable_dbo ubatch_size dbo_decode_token_threshold dp_sync_interval
    dbo_prefill_token_threshold disable_nccl_for_dp_synchronization eplb_config enable_eplb expert_placement_strategy
    _api_process_count _api_process_rank ray_workers_use_nsight worker_cls worker_extension_cls
    disable_custom_all_reduce enable_shm_tensor_arena enable_nccl_comm_suspend fault_tolerance_config
    enable_fault_tolerance weight_transfer_config""",
)
_rows(
    _KERNELS,
    """cudagraph_capture_sizes max_cudagraph_capture_size ir_op_priority moe_backend linear_backend
    sparse_indexer_topk_backend compilation_config attention_config attention_backend engram_config mamba_config
    kernel_config enable_flashinfer_autotune monokernel model_impl mamba_backend mamba_ssu_algorithm optimization_level
    performance_mode gdn_prefill_backend kda_prefill_backend kda_decode_backend jit_monitor_mode jit_monitor_verbose
    enable_layerwise_nvtx_tracing""",
)
_rows(
    _LOADING,
    """model_weights hf_config_path download_dir safetensors_load_strategy safetensors_prefetch_num_threads
    safetensors_prefetch_block_size load_format config_format code_revision hf_token model_class_overrides
    max_parallel_loading_workers model_loader_extra_config ignore_patterns use_tqdm_on_load pt_load_map_location
    tokenizer_mode""",
)
_rows(_QUANT, "quantization quantization_config allow_deprecated_quantization")
_rows(
    _LORA,
    """default_mm_loras fully_sharded_loras max_cpu_loras lora_dtype lora_target_modules
    enable_tower_connector_lora specialize_active_lora enable_mixed_moe_lora_format enable_moe_shared_loras
    max_lora_cls_labels""",
)
_rows(
    _OBSERVABILITY,
    """aggregate_engine_logging show_hidden_metrics_for_version otlp_traces_endpoint
    collect_detailed_traces custom_histogram_buckets cudagraph_metrics kv_cache_metrics kv_cache_metrics_sample
    enable_mfu_metrics enable_logging_iteration_details profiler_config logging_config log_level log_config_file""",
)
_rows(
    _SLEEP,
    "enable_sleep_mode sleep_mode_backend sleep_mode_offload_cudagraph sleep_preserve_parameter_names "
    "enable_cumem_allocator",
)
_rows(_MISC, "additional_config shutdown_timeout watchdog_config fail_on_environ_validation")

#: Engine arguments mapped onto this engine by :func:`split_engine_args` (no warning), and how.
HONOURED: dict[str, str] = {
    "served_model_name": "the model name model_info() reports (the first, if a list)",
    "tokenizer_revision": "the hub revision of the tokenizer",
    "skip_tokenizer_init": "True: no tokenizer is loaded; prompts must be token ids",
    "chat_template": "the default template of render_chat (a string or a file path)",
    "disable_log_stats": "nothing logs engine stats here, so it always holds",
    "data_parallel_size": "1 only: more is an error, as in vLLM's LLM (use RayWorkerPool for replicas)",
    "enable_prefix_caching": (
        "the cross-call prefix cache (keys/values of recent prefixes, exact); default on "
        "here, False turns it off"
    ),
    "prefix_cache_bytes": "the prefix cache's bound in bytes (LRU; default 1 GiB; 0 turns it off); not a vLLM name",
    "cpu_packed_weights": (
        "on CPU, float32 projection weights packed once for MKL's GEMM (about twice their bytes in RAM); default None: "
        "packed when the copy fits in a quarter of the available memory, True forces, False never; not a vLLM name"
    ),
    "task": (
        "removed from vLLM's engine arguments; a pooling task becomes PoolerConfig(task=...), the removed "
        "names (reward, score, encode) warn naming the replacement"
    ),
}

#: ``LLM.__init__``'s own parameters (honoured there, never warned about): the fields of ``LLMOptions``.
LLM_PARAMETERS: tuple[str, ...] = tuple(
    f.name for f in dataclasses.fields(LLMOptions) if f.name != "engine_kwargs"
)


def known_engine_args() -> frozenset[str]:
    """Every keyword ``LLM`` accepts: its parameters, the honoured engine arguments and the ignored ones."""
    return frozenset(LLM_PARAMETERS) | frozenset(HONOURED) | frozenset(RULES)


def split_engine_args(kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """Check the extra keywords of ``LLM(...)``; return the honoured ones, warn once about each ignored one.

    Raises ``TypeError`` (with a close match) for a name vLLM does not know either, and ``ValueError`` for
    ``data_parallel_size > 1``.
    """
    honoured: dict[str, Any] = {}
    for name, value in kwargs.items():
        if name in HONOURED:
            honoured[name] = value
        elif name in RULES:
            if value is None:
                continue  # vLLM's "unset": nothing is asked, so nothing is ignored
            warnings.warn(f"LLM({name}=...) {RULES[name]}.", IgnoredEngineArgWarning, stacklevel=3)
        else:
            close = difflib.get_close_matches(name, sorted(known_engine_args()), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise TypeError(f"LLM() got an unexpected keyword argument {name!r}{hint}")
    dp = honoured.pop("data_parallel_size", 1)
    if dp is not None and dp != 1:
        raise ValueError(
            f"LLM(data_parallel_size={dp}) is not supported in one process (nor in vLLM's LLM); run "
            "replicas with rlhf_rewards.workers.RayWorkerPool(num_replicas=...) or several servers."
        )
    if honoured.pop("disable_log_stats", None) not in (None, True, False):
        raise ValueError("disable_log_stats must be True or False.")
    if honoured.get("cpu_packed_weights") is not None:
        check_bool("cpu_packed_weights", honoured["cpu_packed_weights"])
    return honoured


__all__ = [
    "HONOURED",
    "IgnoredEngineArgWarning",
    "LLM_PARAMETERS",
    "RULES",
    "known_engine_args",
    "split_engine_args",
]
