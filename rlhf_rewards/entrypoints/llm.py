"""``LLM``: the offline pooling engine, with vLLM's constructor and ``encode`` API.

Code written for ``vllm.LLM(model, runner="pooling").encode(..., pooling_task=...)`` runs here by changing
the import.
"""

from __future__ import annotations

import dataclasses
import itertools
import os
import threading
import uuid
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import torch
from tqdm.auto import tqdm
from transformers import PreTrainedTokenizerBase

from rlhf_rewards.contract import ModelInfo, Prompts, normalize_prompts, per_prompt, truncation_of
from rlhf_rewards.engine.inputs import tokenize_prompts
from rlhf_rewards.engine.kv_cache import make_prefix_cache
from rlhf_rewards.engine.placement import resolve_device, resolve_dtype
from rlhf_rewards.engine.request import EngineRequest
from rlhf_rewards.engine.runner import ModelRunner
from rlhf_rewards.entrypoints.chat_template import load_chat_template
from rlhf_rewards.entrypoints.engine_args import IgnoredEngineArgWarning, split_engine_args
from rlhf_rewards.entrypoints.generative_scoring import GenerativeScoringOutput, generative_score
from rlhf_rewards.entrypoints.scoring import ScoringRequestOutput, score_pairs
from rlhf_rewards.entrypoints.tokenization import tokenization_options
from rlhf_rewards.errors import RequestError
from rlhf_rewards.lora.request import LoRARequest
from rlhf_rewards.models.base import PoolingModel
from rlhf_rewards.models.loader import load_pooling_model
from rlhf_rewards.models.registry import ModelSpec
from rlhf_rewards.models.tokenizer import load_tokenizer
from rlhf_rewards.outputs import (
    ClassificationOutput,
    ClassificationRequestOutput,
    EmbeddingOutput,
    EmbeddingRequestOutput,
    PoolingOutput,
    PoolingRequestOutput,
)
from rlhf_rewards.parallel import ParallelConfig, SplitModelPart
from rlhf_rewards.pooling import PoolerConfig, PoolingParams, check_task, resolve_pooling
from rlhf_rewards.pooling.step import (
    VLLM_DEFAULT_STEP_TAG_IDS,
    default_step_tag_id,
    detect_step_kind,
    step_tag_text,
    user_config_for_task,
)
from rlhf_rewards.pooling.tasks import POOLING_TASKS, REMOVED_POOLING_TASKS

DEFAULT_MAX_NUM_BATCHED_TOKENS = 16384
_request_counter = itertools.count()


class LLM:
    """A reward/pooling model ready to score prompts.

    Args:
        model: Local folder or hub id of a transformers checkpoint (loaded with ``from_pretrained``).
        runner: ``"pooling"`` (or ``"auto"``); this engine only pools. Default ``"pooling"``.
        tokenizer: Tokenizer folder or id. Default ``None``: the model's own.
        pooler_config: A ``PoolerConfig``, a dict of its fields or a JSON string; unset fields keep the
            architecture's defaults. Default ``None``.
        dtype: ``"auto"`` (checkpoint dtype on accelerators, float32 on CPU), ``"float32"``,
            ``"bfloat16"``, ``"float16"`` or a ``torch.dtype``. Heads always run in float32. Default ``"auto"``.
        device: ``"cpu"``, ``"cuda"``, ``"cuda:1"``, a ``torch.device``... Default ``None``: CUDA if present.
        trust_remote_code: Passed to transformers; never needed by the supported architectures and never
            turned on implicitly. Default ``False``.
        max_model_len: Longest prompt in tokens. Default ``None``: the model's ``max_position_embeddings``.
        max_num_batched_tokens: Padded-token budget of one forward pass. Default 16384.
        enable_lora: Allow ``lora_request`` in ``encode``. Default ``False``.
        max_loras: Adapters kept loaded at once (least recently used are evicted). Default 4.
        max_lora_rank: Largest adapter rank accepted. Default 64.
        seed: Seed of torch's generator. Default 0.
        revision: Hub revision of the model. Default ``None``.
        hf_overrides: Fields written over ``config.json`` (e.g. ``architectures`` or ``classifier_from_token``).
        convert: vLLM's ``--convert``: ``"auto"``, ``"classify"``, ``"embed"`` or ``"none"``. Default ``"auto"``.
        enforce_eager: vLLM's switch. ``True`` (default here): plain eager PyTorch. ``False``: the row-wise
            halves of each decoder layer (norms, q/k/v/o projections, RoPE, MLP) of the Llama/Qwen2/Qwen3/
            Mistral families run through ``torch.compile`` with dynamic shapes; attention stays eager. The first
            call compiles (about 15 s on a CPU); scores are unchanged to float rounding. On the 2-core CPU
            benchmark it changed throughput by under 5% (``python -m benchmarks.run --ablation``).
        tensor_parallel_size: vLLM's name. Split every layer over this many processes (heads and MLP columns;
            transformers' tensor-parallel plans). The engine starts the other ranks itself (``gloo`` on CPU,
            ``nccl`` on CUDA with rank ``r`` on ``cuda:r``), or joins ``torchrun``'s. Default 1. See the README
            "Models larger than one device" and :mod:`rlhf_rewards.parallel`.
        pipeline_parallel_size: vLLM's name. Split the layers into this many stages, one process each (times
            ``tensor_parallel_size``). Default 1.
        parallel_start_timeout_s: Split engines only: how long building waits for the worker ranks to start and
            load their shards. A rank that exits is reported at once; this bounds one that hangs. Default
            ``None``: the environment variable ``RLHF_REWARDS_PARALLEL_START_TIMEOUT_S``, else 900.
        parallel_call_timeout_s: Split engines only: how long a call waits for the ranks' next micro-batch (or
            result) before it stops them as stuck. A rank that exits is reported at once; waiting for the next
            call is never bounded. Default ``None``: ``RLHF_REWARDS_PARALLEL_CALL_TIMEOUT_S``, else 300.
        **engine_kwargs: vLLM's other engine arguments (``gpu_memory_utilization``, ``max_num_seqs``,
            ``served_model_name``, ``tokenizer_revision``, ``skip_tokenizer_init``, ``chat_template``, ...): never a
            ``TypeError``. Those that mean something here are honoured; each other one is ignored with one
            ``IgnoredEngineArgWarning`` saying what happens instead (:mod:`rlhf_rewards.entrypoints.engine_args`).
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
        # What a split engine's worker processes build (the same LLM, each loading its shard).
        init_arguments = {
            k: v for k, v in locals().items() if k not in ("self", "__class__", "engine_kwargs")
        }
        init_arguments.update(engine_kwargs)
        # vLLM's other engine arguments: honoured ones mapped here, the rest warned about once each.
        extra = split_engine_args(engine_kwargs)
        if isinstance(pooler_config, (dict, str)) or pooler_config is None:
            pooler_config = PoolerConfig.from_any(pooler_config)
        pooler_config = _pooler_config_with_task(pooler_config, extra.pop("task", None))
        if runner not in ("pooling", "auto"):
            raise ValueError(
                f"runner={runner!r}: rlhf-rewards only runs pooling models; use runner='pooling'."
            )
        if isinstance(model, os.PathLike):
            model = os.fspath(model)
        if not isinstance(model, str) or not model:
            raise ValueError(f"model must be a local folder or hub id string, got {model!r}.")
        for name, value in (
            ("max_model_len", max_model_len),
            ("max_num_batched_tokens", max_num_batched_tokens),
        ):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ValueError(f"{name} must be a positive integer, got {value!r}.")
        if not isinstance(enforce_eager, bool):
            raise ValueError(f"enforce_eager must be True or False, got {enforce_eager!r}.")
        if not isinstance(deterministic, bool):
            raise ValueError(f"deterministic must be True or False, got {deterministic!r}.")
        if not isinstance(strict_vllm_compat, bool):
            raise ValueError(f"strict_vllm_compat must be True or False, got {strict_vllm_compat!r}.")
        self.strict_vllm_compat = strict_vllm_compat
        if deterministic and not enforce_eager:
            raise ValueError(
                "deterministic=True needs enforce_eager=True: compiled kernels are not batch-invariant."
            )
        torch.manual_seed(seed)
        self._engine_lock = threading.RLock()
        self.model_name = model
        self.device = resolve_device(device)
        self.user_pooler_config = PoolerConfig.from_any(pooler_config)
        from rlhf_rewards.models.loader import read_config_dict

        raw_config = read_config_dict(model, revision)
        self.dtype = resolve_dtype(dtype, _DictConfig(raw_config), self.device)
        # tensor/pipeline parallel (rlhf_rewards.parallel): the split is checked against config.json, then the
        # other ranks' processes start; each loads only its shard, and every call runs on all ranks in lockstep.
        self.parallel_config = ParallelConfig(
            tensor_parallel_size, pipeline_parallel_size, parallel_start_timeout_s, parallel_call_timeout_s
        )
        self._parallel: SplitModelPart | None = None
        if self.parallel_config.enabled:
            self._parallel = SplitModelPart.start(
                self.parallel_config,
                model=model,
                config_dict=raw_config,
                device=self.device,
                enable_lora=enable_lora,
                factory=type(self),
                kwargs=init_arguments,
            )
            self.device = self._parallel.device
        try:
            self.model: PoolingModel = load_pooling_model(
                model,
                dtype=self.dtype,
                device=self.device,
                revision=revision,
                trust_remote_code=trust_remote_code,
                hf_overrides=hf_overrides,
                convert=convert,
                sharding=self._parallel.sharding if self._parallel is not None else None,
            )
            if self._parallel is not None:
                self.model = self._parallel.adopt(self.model)
            self.spec: ModelSpec = self.model.spec
            tokenizer_revision = extra.get("tokenizer_revision") or (None if tokenizer else revision)
            self.tokenizer: PreTrainedTokenizerBase | None = (
                None
                if extra.get("skip_tokenizer_init")
                else (
                    load_tokenizer(
                        tokenizer or model, revision=tokenizer_revision, trust_remote_code=trust_remote_code
                    )
                )
            )
            served = extra.get("served_model_name")
            self.served_model_name: str | None = (
                served[0] if isinstance(served, (list, tuple)) and served else served
            )
            self.chat_template: str | None = load_chat_template(extra.get("chat_template"))
            self.max_model_len = self._resolve_max_model_len(max_model_len)
            self.max_num_batched_tokens = max(max_num_batched_tokens or DEFAULT_MAX_NUM_BATCHED_TOKENS, 1)
            self.enable_lora = enable_lora
            self.lora_manager: Any = None
            if enable_lora:
                from rlhf_rewards.lora.manager import LoRAManager

                self.lora_manager = LoRAManager(self.model, max_loras=max_loras, max_lora_rank=max_lora_rank)
            self.runner = ModelRunner(
                self.model,
                self.device,
                self.max_num_batched_tokens,
                forward_kwargs=self.lora_manager.forward_kwargs if self.lora_manager is not None else None,
                compile=not enforce_eager,
                deterministic=deterministic,
                prefix_cache=make_prefix_cache(extra, parallel=self.parallel_config.enabled),
            )
            self.task_configs = self._task_configs()
        except BaseException as exc:
            if self._parallel is not None:
                self._parallel.abort(exc)  # the other ranks must not wait for this one
            raise
        if self._parallel is not None:
            self.runner = self._parallel.lockstep(self.runner)  # waits until every rank has its shard
            self.device = (
                self._parallel.user_device
            )  # the driver loaded on `meta`; the ranks hold the weights

    def reset_prefix_cache(self) -> bool:
        """Drop the keys and values kept across calls (vLLM's ``LLM.reset_prefix_cache``); ``True`` when done.

        The cache also drops itself when the weights change (a fingerprint of every parameter's storage and
        version) and on adapter changes; call this after writing weights through ``param.data``.
        """
        cache = getattr(getattr(self, "runner", None), "prefix_cache", None)
        if cache is not None:
            cache.clear()
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
            return _vllm_supported_tasks(self.spec)
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

    def _task_configs(self) -> dict[str, PoolerConfig]:
        # The STEP rules (which user fields reach which task, the default step tag) live in pooling.step.
        defaults = self.spec.task_defaults
        configs: dict[str, PoolerConfig] = {}
        for task, default in defaults.items():
            config = (
                user_config_for_task(self.user_pooler_config, task, defaults)
                .merged_over(default)
                .for_task(task)
            )
            vllm_tag = VLLM_DEFAULT_STEP_TAG_IDS.get(self.spec.architecture)
            if (
                self.strict_vllm_compat
                and config.is_step
                and config.step_tag_id is None
                and vllm_tag is not None
            ):
                config.step_tag_id = vllm_tag  # vLLM's fixed id, whatever the tokenizer
            else:
                config.step_tag_id = default_step_tag_id(
                    config, self.spec.default_step_tag, self.tokenizer, self.spec.architecture
                )
            configs[task] = config
        return configs

    def _resolve_max_model_len(self, requested: int | None) -> int:
        config = self.model.config
        text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
        limit = getattr(text_config, "max_position_embeddings", None)
        if requested is None:
            return int(limit) if limit else 8192
        if limit and requested > limit:
            raise ValueError(
                f"max_model_len={requested} is over the model's max_position_embeddings={limit}."
            )
        return requested

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

    def render_chat(
        self,
        conversations: Sequence[Sequence[dict[str, Any]]],
        *,
        chat_template: str | None = None,
        add_generation_prompt: bool = False,
    ) -> list[list[int]]:
        """Token ids of each conversation rendered with this model's chat template (or ``chat_template``)."""
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

    # ------------------------------------------------------------------ LoRA adapters
    def add_lora(self, lora_request: LoRARequest) -> bool:
        """Register an adapter under its ``lora_name`` and load it now (a bad adapter raises ValueError here).

        Registered adapters are found by name with :meth:`get_lora` (the server's ``--lora-modules``). They
        are not pinned: with more than ``max_loras`` the least recently used are unloaded and come back on
        demand. Returns ``False`` if this exact adapter was already registered.
        """
        with self._engine_lock:  # loading changes the model's modules: never during another thread's forward
            self.reset_prefix_cache()  # cached keys/values of a re-registered name may be another adapter's
            return self._lora().add_lora(lora_request)

    def remove_lora(self, lora: int | str | LoRARequest) -> bool:
        """Unregister and unload an adapter (by ``lora_int_id``, name or request); ``False`` if unknown."""
        with self._engine_lock:
            self.reset_prefix_cache()
            return self._lora().remove_lora(lora)

    def list_loras(self) -> list[LoRARequest]:
        """Adapters registered with :meth:`add_lora`, in registration order."""
        return self._lora().list_loras()

    def get_lora(self, name: str) -> LoRARequest:
        """The registered adapter called ``name`` (ValueError listing the registered names otherwise)."""
        return self._lora().get_lora(name)

    def _lora(self) -> Any:
        if self.lora_manager is None:
            raise ValueError("LoRA adapters need LLM(..., enable_lora=True).")
        return self.lora_manager

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
            self._check_vllm_request(pooling_task, pooling_params)
        if pooling_task is None:
            raise RequestError(
                _POOLING_TASK_REQUIRED.format(tasks=list(self.supported_tasks)), field="pooling_task", sep=" "
            )
        if pooling_task in POOLING_TASKS and pooling_task not in self.supported_tasks:
            api, convert = (
                ("Embedding", "embed") if "embed" in pooling_task else ("Classification", "classify")
            )
            raise RequestError(
                f"{pooling_task!r}: {api} API is not supported by this model (it supports "
                f"{list(self.supported_tasks)}). Try converting the model using `convert={convert!r}`.",
                field="pooling_task",
                sep="=",
            )
        task = check_task(pooling_task, self.supported_tasks)
        tok_options = tokenization_options(
            tokenization_kwargs,
            truncate_prompt_tokens=truncate_prompt_tokens,
            add_special_tokens=add_special_tokens,
            max_model_len=self.max_model_len,
        )
        truncate_prompt_tokens = tok_options.truncate_prompt_tokens
        add_special_tokens = tok_options.add_special_tokens
        items = normalize_prompts(prompts)
        params_list = per_prompt("pooling_params", pooling_params, len(items), PoolingParams)
        lora_list = per_prompt("lora_request", lora_request, len(items), LoRARequest)
        if any(lora is not None for lora in lora_list):
            if self.lora_manager is None:
                raise ValueError("lora_request was given but this LLM was built with enable_lora=False.")
            self.lora_manager.check(lora_list)  # bad adapters fail before anything runs; loading is in _run
        truncations = [truncation_of(params, truncate_prompt_tokens) for params in params_list]
        token_ids = tokenize_prompts(
            items,
            self.tokenizer,
            vocab_size=self.model.vocab_size,
            add_special_tokens=add_special_tokens,
            max_lengths=[tok_options.tokenizer_max_length(t, self.max_model_len) for t in truncations],
        )
        requests: list[EngineRequest] = []
        config = self.task_configs[task]
        for i, (ids, params, lora) in enumerate(zip(token_ids, params_list, lora_list, strict=True)):
            params = params or PoolingParams()
            ids = tok_options.cut(i, ids, truncations[i], self.max_model_len)
            resolved = resolve_pooling(task, params, config)
            requests.append(
                EngineRequest(
                    index=i,
                    request_id=f"{next(_request_counter)}-{uuid.uuid4().hex[:8]}",
                    token_ids=ids,
                    pooling=resolved,
                    lora=lora,
                    cache_salt=_cache_salt(items[i]),
                )
            )
        tensors = self._run(requests, use_tqdm)
        return [
            PoolingRequestOutput(
                request_id=r.request_id,
                outputs=PoolingOutput(data=t),
                prompt_token_ids=r.token_ids,
                error=_non_finite_error(t),
            )
            for r, t in zip(requests, tensors, strict=True)
        ]

    def classify(
        self,
        prompts: Prompts,
        pooling_params: PoolingParams | Sequence[PoolingParams] | None = None,
        *,
        lora_request: LoRARequest | Sequence[LoRARequest | None] | None = None,
        truncate_prompt_tokens: int | None = None,
        use_tqdm: bool | Callable[..., Any] = True,
        tokenization_kwargs: dict[str, Any] | None = None,
    ) -> list[ClassificationRequestOutput]:
        """vLLM's ``LLM.classify``: ``encode(..., pooling_task="classify")`` with ``outputs.probs`` lists."""
        outs = self.encode(
            prompts,
            pooling_params,
            pooling_task="classify",
            lora_request=lora_request,
            truncate_prompt_tokens=truncate_prompt_tokens,
            use_tqdm=use_tqdm,
            tokenization_kwargs=tokenization_kwargs,
        )
        return [
            ClassificationRequestOutput(
                o.request_id, ClassificationOutput(o.outputs.data.tolist()), o.prompt_token_ids
            )
            for o in outs
        ]

    def embed(
        self,
        prompts: Prompts,
        pooling_params: PoolingParams | Sequence[PoolingParams] | None = None,
        *,
        lora_request: LoRARequest | Sequence[LoRARequest | None] | None = None,
        truncate_prompt_tokens: int | None = None,
        use_tqdm: bool | Callable[..., Any] = True,
        tokenization_kwargs: dict[str, Any] | None = None,
    ) -> list[EmbeddingRequestOutput]:
        """vLLM's ``LLM.embed``: ``encode(..., pooling_task="embed")`` with ``outputs.embedding`` lists."""
        outs = self.encode(
            prompts,
            pooling_params,
            pooling_task="embed",
            lora_request=lora_request,
            truncate_prompt_tokens=truncate_prompt_tokens,
            use_tqdm=use_tqdm,
            tokenization_kwargs=tokenization_kwargs,
        )
        return [
            EmbeddingRequestOutput(o.request_id, EmbeddingOutput(o.outputs.data.tolist()), o.prompt_token_ids)
            for o in outs
        ]

    def score(
        self,
        data_1: str | Sequence[str],
        data_2: str | Sequence[str],
        /,
        *,
        use_tqdm: bool | Callable[..., Any] = True,
        pooling_params: PoolingParams | None = None,
        lora_request: LoRARequest | Sequence[LoRARequest | None] | None = None,
        tokenization_kwargs: dict[str, Any] | None = None,
        chat_template: str | None = None,
    ) -> list[ScoringRequestOutput]:
        """vLLM's ``LLM.score``: one score per ``(data_1[i], data_2[i])`` pair (``1 -> 1``, ``1 -> N``, ``N -> N``).

        The kind follows the model's :attr:`pooling_task`, as in vLLM: ``classify`` (a one-label classifier or
        a converted reranker) is a cross-encoder over the pair, encoded as vLLM builds it (the tokenizer's
        pair encoding, or ``query + document`` when ``config.use_sep_token`` is false, or ``chat_template``
        rendered over ``[{"role": "query"}, {"role": "document"}]`` when one is given, here or to ``LLM``);
        ``embed`` is the cosine similarity of the two embeddings; ``token_embed`` is late interaction
        (MaxSim). ``pooling_params.extra_kwargs={"max_tokens_per_doc": k}`` cuts documents to k tokens,
        ``"max_tokens_per_query"`` queries (vLLM's; each under ``max_model_len``, 0: no cut).
        See :mod:`rlhf_rewards.entrypoints.scoring`.
        """
        return score_pairs(
            self,
            data_1,
            data_2,
            use_tqdm=use_tqdm,
            pooling_params=pooling_params,
            lora_request=lora_request,
            tokenization_kwargs=tokenization_kwargs,
            chat_template=chat_template if chat_template is not None else self.chat_template,
        )

    def generative_score(
        self,
        query: str | Sequence[int],
        items: str | Sequence[str] | Sequence[Sequence[int]],
        label_token_ids: Sequence[int],
        *,
        apply_softmax: bool = True,
        item_first: bool = False,
        add_special_tokens: bool = True,
        lora_request: LoRARequest | None = None,
        use_tqdm: bool | Callable[..., Any] = True,
    ) -> list[GenerativeScoringOutput]:
        """vLLM's ``POST /generative_scoring`` offline: for each item, the probability that a causal LM's next
        token after ``query + item`` is ``label_token_ids[0]`` (a judge read through its answer token).

        One packed forward, no decoding: the query shared by all items is computed once (prefix sharing),
        and only the label rows of the LM head are multiplied at each sequence's last position
        (``apply_softmax=False``: one full-vocabulary row per item). See
        :mod:`rlhf_rewards.entrypoints.generative_scoring`.

        Args:
            query: Text (tokenized with ``add_special_tokens``) or token ids.
            items: Texts (tokenized without special tokens) or token-id lists, not mixed; one string is one item.
            label_token_ids: The label tokens; the score is the probability of the first.
            apply_softmax: ``True``: softmax over the label tokens' logits only; ``False``: the label's
                probability over the whole vocabulary.
            item_first: Put each item before the query instead of after it.
            add_special_tokens: Add the tokenizer's special tokens to a text query (never to items).
            lora_request: One adapter for every item (``None``: the base model).
            use_tqdm: Progress bar on calls of more than one micro-batch.

        Returns:
            One :class:`~rlhf_rewards.entrypoints.generative_scoring.GenerativeScoringOutput` per item, in
            order: ``.score``, ``.label_probs`` (every label's probability), ``.prompt_token_ids``.
            Prompts are cut to their first ``max_model_len - 1`` tokens, as vLLM does.
        """
        return generative_score(
            self,
            query,
            items,
            label_token_ids,
            apply_softmax=apply_softmax,
            item_first=item_first,
            add_special_tokens=add_special_tokens,
            lora_request=lora_request,
            use_tqdm=use_tqdm,
        )

    def reward(self, *args: Any, **kwargs: Any) -> list[PoolingRequestOutput]:
        """Removed, as in vLLM 0.33: raises ``AttributeError`` naming the replacement."""
        raise AttributeError(
            "LLM.reward() was removed (as in vLLM): use llm.encode(prompts, "
            "pooling_task='token_classify') for token reward models, or pooling_task='classify' "
            "for sequence reward models."
        )

    def _check_vllm_request(self, pooling_task: str | None, pooling_params: Any) -> None:
        """``strict_vllm_compat``: refuse what vLLM 0.32's ``LLM.encode`` refuses, with its messages
        (``vllm/entrypoints/pooling/offline.py``, ``vllm/pooling_params.py``)."""
        supported = _vllm_supported_tasks(self.spec)
        if pooling_task in ("embed", "token_embed") and pooling_task not in supported:
            raise ValueError(
                "Embedding API is not supported by this model. "
                "Try converting the model using `--convert embed`."
            )
        if pooling_task in ("classify", "token_classify") and pooling_task not in supported:
            raise ValueError(
                "Classification API is not supported by this model. "
                "Try converting the model using `--convert classify`."
            )
        if pooling_task in POOLING_TASKS and pooling_task != self.pooling_task:
            raise ValueError(
                f'Try switching the model\'s pooling_task via `PoolerConfig(task="{pooling_task}")`'
            )
        params_list = pooling_params if isinstance(pooling_params, Sequence) else [pooling_params]
        for params in params_list:
            if not isinstance(params, PoolingParams):
                continue
            if params.truncate_prompt_tokens is not None or params.normalize is not None:
                name = "truncate_prompt_tokens" if params.truncate_prompt_tokens is not None else "normalize"
                raise TypeError(f"Unexpected keyword argument {name!r}")
            if pooling_task in ("embed", "token_embed") and params.dimensions is not None:
                config = self.model.config
                if not (
                    getattr(config, "matryoshka_dimensions", None) or getattr(config, "is_matryoshka", False)
                ):
                    name = self.served_model_name or self.model_name
                    raise ValueError(
                        f"Model {name!r} does not support Matryoshka embeddings; dimensions must be "
                        f"unset (received dimensions={params.dimensions})."
                    )

    @property
    def pooling_task(self) -> str:
        """The model's own pooling task (vLLM's ``LLM.pooling_task``): ``PoolerConfig(task=...)`` if set,
        else the architecture's default (``token_classify`` for process reward models)."""
        if self.user_pooler_config.task is not None:
            return check_task(self.user_pooler_config.task, self.supported_tasks)
        if self.strict_vllm_compat:  # vLLM's ModelConfig.get_pooling_task priority
            supported = self.supported_tasks
            return next(t for t in ("embed", "classify", "token_embed", "token_classify") if t in supported)
        return self.model_info().default_task

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


def _cache_salt(prompt: Any) -> str | None:
    """vLLM's ``cache_salt`` of a dict prompt: the prefix cache namespace it shares (``None``: unsalted)."""
    salt = prompt.get("cache_salt") if isinstance(prompt, dict) else None
    if salt is not None and not isinstance(salt, str):
        raise ValueError(f"cache_salt must be a string, got {type(salt).__name__}.")
    return salt


def _vllm_supported_tasks(spec: ModelSpec) -> tuple[str, ...]:
    """The tasks vLLM 0.32's pooler lists for ``spec``'s model: a classifier or reward model has no embedding
    tasks there (its ``embed``/``token_embed`` here are this library's extension)."""
    if spec.kind == "embedding":
        return spec.tasks
    return tuple(t for t in spec.tasks if t not in ("embed", "token_embed")) or spec.tasks


def _non_finite_error(data: torch.Tensor) -> str | None:
    """An error message if the model produced NaN/inf, so no consumer takes it for a score."""
    if bool(torch.isfinite(data).all()):
        return None
    n_nan = int(torch.isnan(data).sum())
    n_inf = int(torch.isinf(data).sum())
    return f"the model produced non-finite output ({n_nan} NaN, {n_inf} inf values); this item has no score"


_POOLING_TASK_REQUIRED = (
    "is required for `LLM.encode` (this model supports {tasks}). Please use one of the more specific methods or set "
    'the pooling_task when using `LLM.encode`: for embeddings, use `LLM.embed(...)` or `pooling_task="embed"`; for '
    'classification logits, use `LLM.classify(...)` or `pooling_task="classify"`; for similarity scores, use '
    '`LLM.score(...)`; for rewards, `pooling_task="classify"` or `pooling_task="token_classify"`; for token '
    'classification, use `pooling_task="token_classify"`; for multi-vector retrieval, use '
    '`pooling_task="token_embed"`.'
)


def _pooler_config_with_task(config: Any, task: Any) -> Any:
    """Old vLLM's ``LLM(task=...)`` engine argument, as the ``PoolerConfig.task`` it became (one warning)."""
    if task is None or task == "auto":
        return config
    if task in REMOVED_POOLING_TASKS or task not in POOLING_TASKS:
        hint = REMOVED_POOLING_TASKS.get(task, f"{task!r} is not a pooling task")
        warnings.warn(
            f"LLM(task={task!r}) is ignored: the `task` engine argument was removed from vLLM; {hint} "
            "Pass pooling_task=... to encode().",
            IgnoredEngineArgWarning,
            stacklevel=3,
        )
        return config
    warnings.warn(
        f"LLM(task={task!r}): the `task` engine argument was removed from vLLM; used as "
        f"PoolerConfig(task={task!r}).",
        IgnoredEngineArgWarning,
        stacklevel=3,
    )
    if isinstance(config, PoolerConfig) and config.task is None:
        return dataclasses.replace(config, task=task)
    return config


class _DictConfig:
    """Attribute access over a raw config dict (for dtype resolution before the model loads)."""

    def __init__(self, data: dict[str, Any]) -> None:
        self.dtype = data.get("dtype") or data.get("torch_dtype")


__all__ = ["LLM"]
