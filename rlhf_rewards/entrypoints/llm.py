"""``LLM``: the offline pooling engine, with vLLM's constructor and ``encode`` API.

Code written for ``vllm.LLM(model, runner="pooling").encode(..., pooling_task=...)`` runs here by changing
the import.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Sequence
from typing import Any

import torch
from tqdm.auto import tqdm
from transformers import PreTrainedTokenizerBase

from rlhf_rewards.contract import ChatRenderer, ModelInfo, Prompts
from rlhf_rewards.engine.kv_cache import make_prefix_cache
from rlhf_rewards.engine.packed_linear import build_packed_weights
from rlhf_rewards.engine.placement import resolve_device, resolve_dtype
from rlhf_rewards.engine.request import EngineRequest
from rlhf_rewards.engine.runner import ModelRunner
from rlhf_rewards.entrypoints.chat_template import load_chat_template
from rlhf_rewards.entrypoints.encode_requests import (
    build_requests,
    check_pooling_task,
    check_vllm_request,
    pooling_outputs,
)
from rlhf_rewards.entrypoints.engine_args import split_engine_args
from rlhf_rewards.entrypoints.llm_lora import LoRAMethods
from rlhf_rewards.entrypoints.llm_options import LLMOptions
from rlhf_rewards.entrypoints.llm_tasks import TaskMethods
from rlhf_rewards.entrypoints.model_setup import (
    RawConfigDtype,
    pooler_config_with_task,
    resolve_max_model_len,
    task_configs,
    vllm_supported_tasks,
)
from rlhf_rewards.lora.request import LoRARequest
from rlhf_rewards.models.base import PoolingModel
from rlhf_rewards.models.loader import load_pooling_model, read_config_dict
from rlhf_rewards.models.registry import ModelSpec
from rlhf_rewards.models.tokenizer import load_tokenizer
from rlhf_rewards.outputs import PoolingRequestOutput
from rlhf_rewards.parallel import ParallelConfig, SplitModelPart
from rlhf_rewards.pooling import PoolerConfig, PoolingParams, check_task
from rlhf_rewards.pooling.step import detect_step_kind, step_tag_text

DEFAULT_MAX_NUM_BATCHED_TOKENS = 16384


class LLM(ChatRenderer, TaskMethods, LoRAMethods):
    """A reward/pooling model ready to score prompts: vLLM's offline ``LLM(model, runner="pooling")``.

    Every constructor argument is documented, grouped, in :class:`~rlhf_rewards.entrypoints.llm_options.LLMOptions`
    (which ``LLM`` builds from its keywords and which checks them); keywords beyond those are vLLM's other
    engine arguments (:mod:`rlhf_rewards.entrypoints.engine_args`), never a ``TypeError``.
    """

    def __init__(
        self,
        model: str | os.PathLike[str],
        runner: str = "pooling",
        *,
        tokenizer: str | None = None,
        pooler_config: PoolerConfig | dict[str, Any] | str | None = None,
        dtype: str | torch.dtype = "auto",
        device: str | torch.device | None = None,
        trust_remote_code: bool = False,
        max_model_len: int | None = None,
        max_num_batched_tokens: int | None = None,
        enable_lora: bool = False,
        max_loras: int = 4,
        max_lora_rank: int = 64,
        seed: int = 0,
        revision: str | None = None,
        hf_overrides: dict[str, Any] | None = None,
        convert: str = "auto",
        enforce_eager: bool = True,
        deterministic: bool = False,
        tensor_parallel_size: int = 1,
        pipeline_parallel_size: int = 1,
        parallel_start_timeout_s: float | None = None,
        parallel_call_timeout_s: float | None = None,
        strict_vllm_compat: bool = False,
        **engine_kwargs: Any,
    ) -> None:
        # vLLM's other engine arguments: honoured ones mapped here, the rest warned about once each.
        extra = split_engine_args(engine_kwargs)
        options = LLMOptions(
            model=model,
            runner=runner,
            tokenizer=tokenizer,
            pooler_config=pooler_config,
            dtype=dtype,
            device=device,
            trust_remote_code=trust_remote_code,
            max_model_len=max_model_len,
            max_num_batched_tokens=max_num_batched_tokens,
            enable_lora=enable_lora,
            max_loras=max_loras,
            max_lora_rank=max_lora_rank,
            seed=seed,
            revision=revision,
            hf_overrides=hf_overrides,
            convert=convert,
            enforce_eager=enforce_eager,
            deterministic=deterministic,
            tensor_parallel_size=tensor_parallel_size,
            pipeline_parallel_size=pipeline_parallel_size,
            parallel_start_timeout_s=parallel_start_timeout_s,
            parallel_call_timeout_s=parallel_call_timeout_s,
            strict_vllm_compat=strict_vllm_compat,
            engine_kwargs=engine_kwargs,
        )
        self.options = options
        self.strict_vllm_compat = options.strict_vllm_compat
        torch.manual_seed(options.seed)
        self._engine_lock = threading.RLock()
        self.model_name: str = str(options.model)
        self.device = resolve_device(options.device)
        self.user_pooler_config = pooler_config_with_task(
            PoolerConfig.from_any(options.pooler_config), extra.pop("task", None)
        )
        raw_config = read_config_dict(self.model_name, options.revision)
        self.dtype = resolve_dtype(options.dtype, RawConfigDtype(raw_config), self.device)
        # tensor/pipeline parallel (rlhf_rewards.parallel): the split is checked against config.json, then the
        # other ranks' processes start; each loads only its shard, and every call runs on all ranks in lockstep.
        self.parallel_config = ParallelConfig(
            options.tensor_parallel_size,
            options.pipeline_parallel_size,
            options.parallel_start_timeout_s,
            options.parallel_call_timeout_s,
        )
        self._parallel: SplitModelPart | None = None
        if self.parallel_config.enabled:
            self._parallel = SplitModelPart.start(
                self.parallel_config,
                model=self.model_name,
                config_dict=raw_config,
                device=self.device,
                enable_lora=options.enable_lora,
                factory=type(self),
                kwargs=options.init_kwargs(),
            )
            self.device = self._parallel.device
        try:
            self._load(options, extra)
        except BaseException as exc:
            if self._parallel is not None:
                self._parallel.abort(exc)  # the other ranks must not wait for this one
            raise
        if self._parallel is not None:
            self.runner = self._parallel.lockstep(self.runner)  # waits until every rank has its shard
            self.device = (
                self._parallel.user_device
            )  # the driver loaded on `meta`; the ranks hold the weights

    def _load(self, options: LLMOptions, extra: dict[str, Any]) -> None:
        """The model (this process's shard of a split one), tokenizer, adapters and runner."""
        self.model: PoolingModel = load_pooling_model(
            self.model_name,
            dtype=self.dtype,
            device=self.device,
            revision=options.revision,
            trust_remote_code=options.trust_remote_code,
            hf_overrides=options.hf_overrides,
            convert=options.convert,
            sharding=self._parallel.sharding if self._parallel is not None else None,
        )
        if self._parallel is not None:
            self.model = self._parallel.adopt(self.model)
        self.spec: ModelSpec = self.model.spec
        tokenizer_revision = extra.get("tokenizer_revision") or (
            None if options.tokenizer else options.revision
        )
        self.tokenizer: PreTrainedTokenizerBase | None = None
        if not extra.get("skip_tokenizer_init"):
            self.tokenizer = load_tokenizer(
                options.tokenizer or self.model_name,
                revision=tokenizer_revision,
                trust_remote_code=options.trust_remote_code,
            )
        served = extra.get("served_model_name")
        self.served_model_name: str | None = (
            served[0] if isinstance(served, (list, tuple)) and served else served
        )
        self.chat_template: str | None = load_chat_template(extra.get("chat_template"))
        self.max_model_len = resolve_max_model_len(self.model.config, options.max_model_len)
        self.max_num_batched_tokens = options.max_num_batched_tokens or DEFAULT_MAX_NUM_BATCHED_TOKENS
        self.enable_lora = options.enable_lora
        self.lora_manager: Any = None
        if options.enable_lora:
            from rlhf_rewards.lora.manager import LoRAManager

            self.lora_manager = LoRAManager(
                self.model, max_loras=options.max_loras, max_lora_rank=options.max_lora_rank
            )
        self.runner = ModelRunner(
            self.model,
            self.device,
            self.max_num_batched_tokens,
            forward_kwargs=self.lora_manager.forward_kwargs if self.lora_manager is not None else None,
            compile=not options.enforce_eager,
            deterministic=options.deterministic,
            prefix_cache=make_prefix_cache(extra, parallel=self.parallel_config.enabled),
            # LoRA engines wrap the projections in peft modules, which keep their own kernels.
            packed_weights=None
            if options.enable_lora
            else build_packed_weights(self.model.backbone, self.device, extra.get("cpu_packed_weights")),
        )
        self.task_configs = task_configs(
            self.spec, self.user_pooler_config, self.tokenizer, strict_vllm_compat=self.strict_vllm_compat
        )

    def reset_prefix_cache(self) -> bool:
        """Drop the keys and values kept across calls (vLLM's ``LLM.reset_prefix_cache``); ``True`` when done.

        The cache also drops itself when the weights change (a fingerprint of every parameter's storage and
        version) and on adapter changes; call this after writing weights through ``param.data`` (it also
        repacks the CPU's packed projection weights, :mod:`rlhf_rewards.engine.packed_linear`).
        """
        runner = getattr(self, "runner", None)
        cache = getattr(runner, "prefix_cache", None)
        if cache is not None:
            cache.clear()
        packed = getattr(runner, "packed_weights", None)
        if packed is not None:
            packed.refresh()
        return True

    def shutdown(self) -> None:
        """Stop the worker processes of a split engine (``tensor_parallel_size``/``pipeline_parallel_size`` > 1)
        and free their port, or release a torchrun rank's control group; later calls raise. Idempotent; garbage
        collection and interpreter exit do the same. A no-op for a single-process engine."""
        if self._parallel is not None:
            self._parallel.close()

    def close(self) -> None:
        """The same as :meth:`shutdown`."""
        self.shutdown()

    # ------------------------------------------------------------------ introspection
    @property
    def supported_tasks(self) -> tuple[str, ...]:
        """Pooling tasks this model can run (with ``strict_vllm_compat``: the tasks vLLM's pooler lists)."""
        if self.strict_vllm_compat:
            return vllm_supported_tasks(self.spec)
        return self.spec.tasks

    def get_tokenizer(self) -> PreTrainedTokenizerBase:
        """The tokenizer (as ``vllm.LLM.get_tokenizer``)."""
        if self.tokenizer is None:
            raise ValueError("This LLM has no tokenizer.")
        return self.tokenizer

    def pooler_config_for(self, task: str) -> PoolerConfig:
        """The effective model-level pooler config of ``task`` (defaults merged with the user's)."""
        check_task(task, self.supported_tasks)
        return self.task_configs[task]

    def model_info(self, served_model_name: str | None = None) -> ModelInfo:
        """Facts a reward function needs (kind, default task, step tag, chat template...)."""
        kind, step_tag_id = detect_step_kind(self.spec.kind, self.task_configs.get("token_classify"))
        tok = self.tokenizer
        step_tag = step_tag_text(tok, step_tag_id)
        reward_token_id = getattr(self.model.config, "reward_token_id", None)
        reward_token = (
            tok.decode([reward_token_id]) if (tok is not None and reward_token_id is not None) else None
        )
        return ModelInfo(
            model=served_model_name or self.served_model_name or self.model_name,
            architecture=self.spec.architecture,
            kind=kind,
            tasks=list(self.supported_tasks),
            default_task="token_classify" if kind == "process" else self.spec.default_task,
            pooler_configs={t: c.to_dict() for t, c in self.task_configs.items()},
            num_labels=self.model.num_labels,
            max_model_len=self.max_model_len,
            step_tag=step_tag,
            step_tag_id=step_tag_id,
            reward_token=reward_token,
            has_chat_template=bool(getattr(tok, "chat_template", None)),
            lora_modules=[r.lora_name for r in self.list_loras()] if self.lora_manager is not None else [],
        )

    def _render_chat(
        self,
        conversations: Sequence[Sequence[dict[str, Any]]],
        chat_template: str | None,
        add_generation_prompt: bool,
    ) -> list[list[int]]:
        tok = self.get_tokenizer()
        chat_template = chat_template if chat_template is not None else self.chat_template
        if chat_template is None and not getattr(tok, "chat_template", None):
            raise ValueError(
                f"{self.model_name} has no chat template: pass chat_template=... to score conversational input."
            )
        rendered = []
        for i, conv in enumerate(conversations):
            if not conv:
                raise ValueError(f"conversations[{i}] is empty.")
            text = tok.apply_chat_template(
                list(conv),
                chat_template=chat_template,
                tokenize=False,
                add_generation_prompt=add_generation_prompt,
            )
            # The template already holds any BOS it wants: do not add special tokens again.
            rendered.append(list(tok(text, add_special_tokens=False)["input_ids"]))
        return rendered

    # ------------------------------------------------------------------ encode
    def encode(
        self,
        prompts: Prompts,
        pooling_params: PoolingParams | Sequence[PoolingParams] | None = None,
        *,
        use_tqdm: bool | Callable[..., Any] = True,
        lora_request: LoRARequest | Sequence[LoRARequest | None] | None = None,
        pooling_task: str | None = None,
        tokenization_kwargs: dict[str, Any] | None = None,
        truncate_prompt_tokens: int | None = None,
        add_special_tokens: bool = True,
    ) -> list[PoolingRequestOutput]:
        """Pool ``prompts`` with ``pooling_task`` and return one output per prompt, in order (vLLM 0.33's
        signature, plus this library's ``truncate_prompt_tokens`` and ``add_special_tokens`` keywords).

        Args:
            prompts: A string, ``{"prompt": str}``, ``{"prompt_token_ids": [...]}`` or a list of those.
            pooling_params: One ``PoolingParams`` for all prompts, or one per prompt. Default: the config's.
            use_tqdm: Show a progress bar on calls of more than one micro-batch, or a tqdm-like factory.
            lora_request: One adapter for all prompts, or one per prompt (``None`` = base model).
            pooling_task: ``classify``, ``token_classify``, ``embed`` or ``token_embed`` (required, as in vLLM;
                unlike vLLM, any task the model supports, not only its :attr:`pooling_task`).
            tokenization_kwargs: vLLM's overrides for the tokenizer: ``truncate_prompt_tokens``,
                ``truncation`` (``True``: cut to ``max_length``, default ``max_model_len``), ``max_length``,
                ``truncation_side`` (``"left"``: keep the last tokens, ``"right"``: the first; without one a
                text prompt is cut by the tokenizer, keeping its special tokens, as vLLM does) and
                ``add_special_tokens``; other keys are ignored with a warning, as vLLM does.
            truncate_prompt_tokens: Keep k tokens of each prompt (``-1``: ``max_model_len``), as
                ``tokenization_kwargs={"truncate_prompt_tokens": k}``.
            add_special_tokens: Add the tokenizer's special tokens (BOS...) to string prompts. Default True.
        """
        if isinstance(prompts, dict) and "data" in prompts:
            raise ValueError(
                "The 'data' field is only supported for the 'plugin' pooling task, which this "
                "engine does not have (no IOProcessor plugins)."
            )
        if self.strict_vllm_compat:
            check_vllm_request(self, pooling_task, pooling_params)
        task = check_pooling_task(pooling_task, self.supported_tasks)
        requests = build_requests(
            self,
            prompts,
            task,
            pooling_params,
            lora_request,
            tokenization_kwargs,
            truncate_prompt_tokens,
            add_special_tokens,
        )
        return pooling_outputs(requests, self._run(requests, use_tqdm))

    @classmethod
    def from_engine_args(cls, engine_args: Any) -> LLM:
        """vLLM's ``LLM.from_engine_args``: ``LLM(**vars(engine_args))``."""
        return cls(**vars(engine_args))

    def _run(self, requests: list[EngineRequest], use_tqdm: bool | Callable[..., Any]) -> list[torch.Tensor]:
        # One forward at a time: async reward functions and server threads share this engine, and the LoRA
        # manager's active-adapter state belongs to the batch being run.
        with self._engine_lock:
            tensors = self._run_unlocked(requests, use_tqdm)
            if len(requests) > 1:
                # A NaN/inf in one sequence reaches the sequences packed beside it (0 x NaN = NaN where attention
                # masks its keys out), so a non-finite output is scored again alone: a neighbour's NaN never
                # costs a prompt its score, and a prompt that is non-finite by itself stays an item error.
                for i, t in enumerate(tensors):
                    if not bool(torch.isfinite(t).all()):
                        tensors[i] = self._run_unlocked([requests[i]], False)[0]
            return tensors

    def _run_unlocked(
        self, requests: list[EngineRequest], use_tqdm: bool | Callable[..., Any]
    ) -> list[torch.Tensor]:
        if self.lora_manager is not None and any(r.lora is not None for r in requests):
            # Adapters are loaded (at most max_loras at a time) and their requests run in as few waves as possible.
            return self.lora_manager.run_in_waves(requests, lambda chunk: self._run_loaded(chunk, use_tqdm))
        return self._run_loaded(requests, use_tqdm)

    def _run_loaded(
        self, requests: list[EngineRequest], use_tqdm: bool | Callable[..., Any]
    ) -> list[torch.Tensor]:
        total_tokens = sum(r.num_tokens for r in requests)
        show = bool(use_tqdm) and total_tokens > self.max_num_batched_tokens
        if not show:
            return self.runner.run(requests)
        factory = use_tqdm if callable(use_tqdm) else tqdm
        with factory(total=len(requests), desc="Scoring prompts", unit="prompt", dynamic_ncols=True) as bar:
            return self.runner.run(requests, on_batch_done=bar.update)


__all__ = ["LLM"]
