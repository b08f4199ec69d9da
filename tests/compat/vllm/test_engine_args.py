"""vLLM 0.33's engine arguments and this library's vLLM-0.33 config names (not a port: vLLM has no such test).

``VLLM_ENGINE_ARGS`` is the field list of vLLM 0.33.0's ``EngineArgs`` dataclass
(``vllm/engine/arg_utils.py``), plus ``LLM.__init__``'s own keyword ``chat_template``: every one must be
accepted by ``LLM(...)`` (never a ``TypeError``), honoured or ignored with exactly one warning.
"""

from __future__ import annotations

import json
import warnings

import pytest

from rlhf_rewards import LLM, EngineArgs, PoolerConfig, PoolingParams
from rlhf_rewards.entrypoints.cli_args import FlexibleArgumentParser
from rlhf_rewards.entrypoints.engine_args import HONOURED, RULES, IgnoredEngineArgWarning, split_engine_args

VLLM_ENGINE_ARGS = """
model enable_return_routed_experts return_sampling_mask model_weights served_model_name tokenizer
hf_config_path runner convert skip_tokenizer_init enable_prompt_embeds tokenizer_mode trust_remote_code
allowed_local_media_path allowed_media_domains download_dir safetensors_load_strategy
safetensors_prefetch_num_threads safetensors_prefetch_block_size load_format config_format dtype
kv_cache_dtype seed max_model_len cudagraph_capture_sizes max_cudagraph_capture_size ir_op_priority
distributed_executor_backend pipeline_parallel_size master_addr master_port nnodes node_rank
distributed_timeout_seconds cpu_distributed_timeout_seconds numa_bind numa_bind_nodes numa_bind_cpus
device_ids tensor_parallel_size prefill_context_parallel_size decode_context_parallel_size dcp_comm_backend
dcp_q_replicate dcp_kv_cache_interleave_size cp_kv_cache_interleave_size data_parallel_size data_parallel_rank
data_parallel_start_rank data_parallel_size_local data_parallel_address data_parallel_rpc_port
data_parallel_hybrid_lb data_parallel_external_lb data_parallel_multi_port_external_lb data_parallel_backend
enable_hc_sp enable_expert_parallel enable_batch_sharded_sampling enable_ep_weight_filter moe_backend
linear_backend sparse_indexer_topk_backend all2all_backend enable_elastic_ep elastic_ep_max_dp_size enable_dbo
ubatch_size dbo_decode_token_threshold dp_sync_interval dbo_prefill_token_threshold
disable_nccl_for_dp_synchronization eplb_config enable_eplb expert_placement_strategy _api_process_count
_api_process_rank max_parallel_loading_workers block_size enable_prefix_caching prefix_caching_hash_algo
prefix_cache_retention_interval disable_sliding_window disable_cascade_attn offload_backend cpu_offload_gb
cpu_offload_params offload_group_size offload_num_in_group offload_prefetch_step offload_params
gpu_memory_utilization kv_cache_memory_bytes max_num_batched_tokens max_num_scheduled_tokens
long_prefill_token_threshold long_prefill_token_threshold_adaptive max_num_seqs max_num_active_seqs
max_num_queued_reqs max_num_queued_tokens max_logprobs logprobs_mode use_fp64_gumbel enable_trace_replay
disable_log_stats aggregate_engine_logging revision code_revision hf_token hf_overrides model_class_overrides
tokenizer_revision quantization quantization_config allow_deprecated_quantization enforce_eager
disable_custom_all_reduce enable_shm_tensor_arena language_model_only limit_mm_per_prompt enable_mm_embeds
interleave_mm_strings media_io_kwargs mm_processor_kwargs mm_processor_cache_gb mm_processor_cache_type
mm_hasher_algorithm mm_shm_cache_max_object_size_mb mm_encoder_only mm_encoder_tp_mode mm_encoder_attn_backend
mm_encoder_attn_dtype mm_encoder_fp8_scale_path mm_encoder_fp8_scale_save_path
mm_encoder_fp8_scale_save_margin io_processor_plugin renderer_num_workers skip_mm_profiling video_pruning_rate
video_pruning_method mm_tensor_ipc mm_processor_device mm_ipc_gpu_memory_gb mm_device_do_normalize enable_lora
max_loras max_lora_rank default_mm_loras fully_sharded_loras max_cpu_loras lora_dtype lora_target_modules
enable_tower_connector_lora specialize_active_lora enable_mixed_moe_lora_format enable_moe_shared_loras
max_lora_cls_labels ray_workers_use_nsight num_gpu_blocks_override model_loader_extra_config ignore_patterns
enable_chunked_prefill disable_chunked_mm_input scheduler_reserve_full_isl prefill_schedule_interval watermark
disable_hybrid_kv_cache_manager structured_outputs_config aux_output_config reasoning_parser
reasoning_parser_plugin speculative_config spec_method spec_model spec_tokens watermark_config
diffusion_config show_hidden_metrics_for_version otlp_traces_endpoint collect_detailed_traces
per_request_spec_decode_metrics kv_cache_metrics kv_cache_metrics_sample custom_histogram_buckets
cudagraph_metrics enable_layerwise_nvtx_tracing enable_mfu_metrics enable_logging_iteration_details
jit_monitor_mode jit_monitor_verbose enable_mm_processor_stats scheduling_policy scheduler_cls pooler_config
compilation_config attention_config engram_config mamba_config kernel_config enable_flashinfer_autotune
monokernel worker_cls worker_extension_cls profiler_config logging_config log_level log_config_file
kv_transfer_config kv_events_config ec_transfer_config ec_manager_config reasoning_config generation_config
enable_sleep_mode sleep_mode_backend sleep_mode_offload_cudagraph sleep_preserve_parameter_names
enable_cumem_allocator enable_nccl_comm_suspend override_generation_config model_impl attention_backend
kv_cache_dtype_skip_layers mamba_cache_dtype mamba_ssm_cache_dtype mamba_block_size prefix_match_unit
mamba_cache_mode enable_mamba_shared_prefix_checkpoint replayssm_buffer_len use_replayssm mamba_backend
mamba_ssu_algorithm enable_mamba_cache_stochastic_rounding mamba_cache_philox_rounds additional_config
use_tqdm_on_load pt_load_map_location logits_processors async_scheduling stream_interval
kv_sharing_fast_prefill swa_bounded_replay optimization_level performance_mode fault_tolerance_config
enable_fault_tolerance kv_offloading_size kv_offloading_backend tokens_only shutdown_timeout watchdog_config
weight_transfer_config fail_on_environ_validation gdn_prefill_backend kda_prefill_backend kda_decode_backend
"""
VLLM_LLM_ONLY_ARGS = "chat_template"


def _all_names() -> list[str]:
    return VLLM_ENGINE_ARGS.split() + VLLM_LLM_ONLY_ARGS.split()


def test_every_vllm_engine_argument_is_accepted():
    names = [n for n in _all_names() if n not in ("data_parallel_size",)]
    llm_params = set(LLM.__init__.__code__.co_varnames)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        honoured = split_engine_args({n: 1 for n in names if n not in llm_params})
    ignored = [str(w.message) for w in caught if issubclass(w.category, IgnoredEngineArgWarning)]
    expected = sorted(n for n in names if n not in llm_params and n in RULES)
    assert len(ignored) == len(expected)  # exactly one warning per ignored argument
    assert all("is ignored" in m for m in ignored)
    assert set(honoured) <= set(HONOURED)
    assert set(names) <= set(RULES) | set(HONOURED) | llm_params


def test_unknown_argument_is_a_type_error_with_a_suggestion():
    with pytest.raises(TypeError, match="did you mean 'gpu_memory_utilization'"):
        split_engine_args({"gpu_memory_utilisation": 0.5})


def test_habit_arguments_on_a_real_llm(reranker_like, tmp_path):
    template = tmp_path / "t.jinja"
    template.write_text("{% for m in messages %}{{ m['content'] }}|{% endfor %}")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        llm = LLM(
            str(reranker_like),
            device="cpu",
            gpu_memory_utilization=0.75,
            max_num_seqs=8,
            enable_prefix_caching=True,
            swap_space=4,
            kv_cache_dtype="fp8",
            disable_log_stats=True,
            served_model_name=["rm", "alias"],
            chat_template=str(template),
            tokenizer_revision=None,
            task="reward",
        )
    messages = [str(w.message) for w in caught if issubclass(w.category, IgnoredEngineArgWarning)]
    for name in ("gpu_memory_utilization", "max_num_seqs", "swap_space", "kv_cache_dtype"):
        assert sum(f"LLM({name}=" in m for m in messages) == 1, name
    assert any("`reward` task was removed; use `token_classify`" in m for m in messages)
    # enable_prefix_caching is honoured (the cross-call prefix cache): no warning.
    assert not any(
        "disable_log_stats" in m or "served_model_name" in m or "enable_prefix_caching" in m for m in messages
    )
    assert llm.model_info().model == "rm"
    assert llm.render_chat([[{"role": "user", "content": "hi"}]]) == [
        llm.get_tokenizer()("hi|", add_special_tokens=False)["input_ids"]
    ]
    with pytest.raises(ValueError, match="RayWorkerPool"):
        LLM(str(reranker_like), device="cpu", data_parallel_size=2)


def test_skip_tokenizer_init_and_task(reranker_like):
    llm = LLM(str(reranker_like), device="cpu", skip_tokenizer_init=True, task="embed")
    assert llm.pooling_task == "embed"
    (out,) = llm.encode({"prompt_token_ids": [5, 6, 7]}, pooling_task="classify")
    assert out.outputs.data.shape == (1,)
    with pytest.raises(ValueError, match="no tokenizer"):
        llm.encode("text", pooling_task="classify")


def test_engine_args_cli_and_from_engine_args(reranker_like):
    parser = EngineArgs.add_cli_args(FlexibleArgumentParser())
    parser.set_defaults(model=str(reranker_like), runner="pooling")
    args = parser.parse_args(
        [
            "--max_model_len",
            "128",
            "--enforce-eager",
            "--pooler-config",
            '{"seq_pooling_type": "MEAN", "use_activation": false}',
        ]
    )
    assert vars(args) == {
        "model": str(reranker_like),
        "runner": "pooling",
        "max_model_len": 128,
        "enforce_eager": True,
        "pooler_config": {"seq_pooling_type": "MEAN", "use_activation": False},
    }
    llm = LLM.from_engine_args(EngineArgs.from_cli_args(args))
    assert llm.max_model_len == 128
    assert llm.pooler_config_for("classify").pooling_type == "MEAN"
    with pytest.raises(TypeError):
        EngineArgs(model="x", not_an_engine_arg=1)


def test_pooler_config_vllm_033_fields():
    # vLLM's documented form, its JSON CLI form, and the alias.
    c = PoolerConfig(seq_pooling_type="MEAN", use_activation=False)
    assert (c.seq_pooling_type, c.tok_pooling_type, c.type_for("embed"), c.type_for("token_embed")) == (
        "MEAN",
        None,
        "MEAN",
        None,
    )
    j = PoolerConfig.from_any(
        json.dumps(
            {
                "tok_pooling_type": "STEP",
                "step_tag_id": 3,
                "returned_token_ids": [1, 2],
                "task": "token_classify",
            }
        )
    )
    assert j.is_step and j.task == "token_classify"
    assert PoolerConfig(pooling_type="step").tok_pooling_type == "STEP"
    assert PoolerConfig(pooling_type="CLS").seq_pooling_type == "CLS"
    with pytest.raises(ValueError, match="Cannot set both"):
        PoolerConfig(pooling_type="LAST", seq_pooling_type="MEAN")
    with pytest.raises(ValueError, match="valid fields are .*seq_pooling_type"):
        PoolerConfig.from_any({"seq_pooling": "MEAN"})
    with pytest.raises(ValueError, match="`score` task was removed; use `classify`"):
        PoolerConfig(task="score")
    with pytest.raises(ValueError, match="`encode` task was removed; use `token_embed` or `token_classify`"):
        PoolingParams(task="encode")
    with pytest.raises(ValueError, match="tok_pooling_type='STEP'"):
        PoolerConfig(tok_pooling_type="ALL", step_tag_id=3)
    with pytest.raises(ValueError, match="enable_chunked_processing is not supported"):
        PoolerConfig(enable_chunked_processing=True)


def test_activation_is_the_old_name_of_use_activation():
    with pytest.warns(DeprecationWarning, match="use_activation"):
        import rlhf_rewards.pooling.params as params_module

        params_module._warned.discard("activation")
        p = PoolingParams(activation=False)
    assert p.use_activation is False and p.activation is None
    with pytest.raises(ValueError, match="disagree"):
        PoolingParams(activation=True, use_activation=False)


def test_encode_requires_the_pooling_task_with_vllms_guidance(reranker_like):
    llm = LLM(str(reranker_like), device="cpu")
    with pytest.raises(ValueError, match="pooling_task is required for `LLM.encode`.*LLM.score"):
        llm.encode("hi")
    with pytest.raises(ValueError, match="`score` task was removed; use `classify`"):
        llm.encode("hi", pooling_task="score")


def test_score_follows_the_models_pooling_task(e5_like, reranker_like):
    """Not a port: vLLM's SCORE_TYPE_MAP (embed: cosine, token_embed: MaxSim, classify: cross-encoder)."""
    import torch
    import torch.nn.functional as F

    llm = LLM(str(e5_like), device="cpu")
    assert llm.pooling_task == "embed"
    docs = ["The capital of France is Paris.", "Berlin."]
    scores = [o.outputs.score for o in llm.score("capital of France?", docs)]
    q, *d = [torch.tensor(o.outputs.embedding) for o in llm.embed(["capital of France?", *docs])]
    assert scores == pytest.approx([F.cosine_similarity(q, x, dim=0).item() for x in d], abs=1e-6)
    late = LLM(str(e5_like), device="cpu", pooler_config={"task": "token_embed"})
    (maxsim,) = late.score("capital of France?", docs[0])
    qt, dt = [
        F.normalize(o.outputs.data, dim=-1)
        for o in late.encode(["capital of France?", docs[0]], pooling_task="token_embed")
    ]
    assert maxsim.outputs.score == pytest.approx((qt @ dt.T).amax(dim=-1).sum().item(), abs=1e-5)
    # A reranker converted from an LLM (config.use_sep_token false) scores query + document as one text.
    rr = LLM(str(reranker_like), device="cpu", hf_overrides={"use_sep_token": False})
    (pair,) = rr.score("query ", "document", pooling_params=PoolingParams(use_activation=False))
    (whole,) = rr.encode("query document", PoolingParams(use_activation=False), pooling_task="classify")
    assert pair.prompt_token_ids == whole.prompt_token_ids
    assert pair.outputs.score == pytest.approx(whole.outputs.data.item(), abs=1e-6)


# vLLM's examples/pooling/score/template/qwen3_reranker.jinja (GitHub commit 5d6a1c2492914feea387f49a86eacdc3f99b29a1).
QWEN3_RERANKER_TEMPLATE = (
    "<|im_start|>system\nJudge whether the Document meets the requirements based on the Query and the Instruct "
    'provided. Note that the answer can only be "yes" or "no".<|im_end|>\n<|im_start|>user\n<Instruct>: {{ '
    'instruction | default(instruct | default(messages | selectattr("role", "eq", "system") | map(attribute="content")'
    ' | first | default("Given a web search query, retrieve relevant passages that answer the query", true), true), '
    'true) }}\n<Query>: {{ messages | selectattr("role", "eq", "query") | map(attribute="content") | first }}\n'
    '<Document>: {{ messages | selectattr("role", "eq", "document") | map(attribute="content") | first }}<|im_end|>\n'
    "<|im_start|>assistant\n<think>\n\n</think>\n\n"
)


def test_original_qwen3_reranker_scores_with_vllms_template(checkpoint_factory):
    """Not a port: vLLM's Qwen3-Reranker recipe (hf_overrides + the template) against the LM's own logits."""
    import torch
    from transformers import AutoModelForCausalLM

    lm = checkpoint_factory("Qwen3ForCausalLM", seed=171)
    overrides = {
        "architectures": ["Qwen3ForSequenceClassification"],
        "classifier_from_token": ["-", "+"],
        "is_original_qwen3_reranker": True,
    }
    llm = LLM(str(lm), device="cpu", hf_overrides=overrides)
    query, doc = "What is 2 + 2?", "2 + 2 = 4"
    (out,) = llm.score(query, doc, chat_template=QWEN3_RERANKER_TEMPLATE)
    tok = llm.get_tokenizer()
    text = tok.apply_chat_template(
        [{"role": "query", "content": query}, {"role": "document", "content": doc}],
        chat_template=QWEN3_RERANKER_TEMPLATE,
        tokenize=False,
    )
    ids = tok(text)["input_ids"]
    assert "<Query>: What is 2 + 2?" in text and out.prompt_token_ids == ids
    model = AutoModelForCausalLM.from_pretrained(str(lm), dtype=torch.float32).eval()
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0, -1]
    no, yes = (tok.convert_tokens_to_ids(t) for t in ("-", "+"))
    assert out.outputs.score == pytest.approx(torch.sigmoid(logits[yes] - logits[no]).item(), abs=1e-5)
    # The LLM-level chat_template is the default of score, as in vLLM.
    with_default = LLM(str(lm), device="cpu", hf_overrides=overrides, chat_template=QWEN3_RERANKER_TEMPLATE)
    assert with_default.score(query, doc)[0].outputs.score == pytest.approx(out.outputs.score, abs=1e-6)
