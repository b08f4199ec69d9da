"""``LLM``: the offline pooling engine, with vLLM's constructor and ``encode`` API.

Code written for ``vllm.LLM(model, runner="pooling").encode(..., pooling_task=...)`` runs here by changing
the import.
"""

from __future__ import annotations

import itertools
import os
import threading
import uuid
from collections.abc import Callable, Sequence
from typing import Any

import torch
from tqdm.auto import tqdm
from transformers import PreTrainedTokenizerBase

from rlhf_rewards.contract import ModelInfo, Prompts, normalize_prompts, per_prompt, truncation_of
from rlhf_rewards.engine.inputs import apply_length_limit, tokenize_prompts
from rlhf_rewards.engine.placement import resolve_device, resolve_dtype
from rlhf_rewards.engine.request import EngineRequest
from rlhf_rewards.engine.runner import ModelRunner
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
from rlhf_rewards.parallel import ParallelConfig, ParallelEngine
from rlhf_rewards.pooling import PoolerConfig, PoolingParams, check_task, resolve_pooling
from rlhf_rewards.pooling.step import (
    default_step_tag_id,
    detect_step_kind,
    step_tag_text,
    user_config_for_task,
)

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
        deterministic: ``True``: every score of a text is bit-identical whatever else is in the call (batch,
            order, shared prefixes, micro-batch boundaries, ``max_num_batched_tokens``, LoRA neighbours), on the
            same hardware, library versions, dtype and device (README "Reproducible rewards";
            :mod:`rlhf_rewards.engine.deterministic`). Needs ``enforce_eager=True``. Default ``False``.
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
    ) -> None:
        # What a split engine's worker processes build (the same LLM, each loading its shard).
        init_arguments = {k: v for k, v in locals().items() if k not in ("self", "__class__")}
        if runner not in ("pooling", "auto"):
            raise ValueError(f"runner={runner!r}: rlhf-rewards only runs pooling models; use runner='pooling'.")
        if isinstance(model, os.PathLike):
            model = os.fspath(model)
        if not isinstance(model, str) or not model:
            raise ValueError(f"model must be a local folder or hub id string, got {model!r}.")
        for name, value in (("max_model_len", max_model_len), ("max_num_batched_tokens", max_num_batched_tokens)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ValueError(f"{name} must be a positive integer, got {value!r}.")
        if not isinstance(enforce_eager, bool):
            raise ValueError(f"enforce_eager must be True or False, got {enforce_eager!r}.")
        if not isinstance(deterministic, bool):
            raise ValueError(f"deterministic must be True or False, got {deterministic!r}.")
        if deterministic and not enforce_eager:
            raise ValueError("deterministic=True needs enforce_eager=True: compiled kernels are not batch-invariant.")
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
        self.parallel_config = ParallelConfig(tensor_parallel_size, pipeline_parallel_size)
        self._parallel: ParallelEngine | None = None
        if self.parallel_config.enabled:
            self._parallel = ParallelEngine.start(
                self.parallel_config, model=model, config_dict=raw_config, device=self.device,
                enable_lora=enable_lora, factory=type(self), kwargs=init_arguments)
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
            self.tokenizer: PreTrainedTokenizerBase | None = load_tokenizer(
                tokenizer or model, revision=None if tokenizer else revision, trust_remote_code=trust_remote_code
            )
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
            )
            self.task_configs = self._task_configs()
        except BaseException as exc:
            if self._parallel is not None:
                self._parallel.abort(exc)  # the other ranks must not wait for this one
            raise
        if self._parallel is not None:
            self.runner = self._parallel.lockstep(self.runner)  # waits until every rank has its shard

    def shutdown(self) -> None:
        """Stop the worker processes of a split engine (``tensor_parallel_size``/``pipeline_parallel_size`` > 1)
        and release its process group; later calls raise. A no-op for a single-process engine."""
        if self._parallel is not None:
            self._parallel.close()

    # ------------------------------------------------------------------ introspection
    @property
    def supported_tasks(self) -> tuple[str, ...]:
        """Pooling tasks this model can run."""
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
            config = user_config_for_task(self.user_pooler_config, task, defaults).merged_over(default)
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
            raise ValueError(f"max_model_len={requested} is over the model's max_position_embeddings={limit}.")
        return requested

    def model_info(self, served_model_name: str | None = None) -> ModelInfo:
        """Facts a reward function needs (kind, default task, step tag, chat template...)."""
        kind, step_tag_id = detect_step_kind(self.spec.kind, self.task_configs.get("token_classify"))
        tok = self.tokenizer
        step_tag = step_tag_text(tok, step_tag_id)
        reward_token_id = getattr(self.model.config, "reward_token_id", None)
        reward_token = tok.decode([reward_token_id]) if (tok is not None and reward_token_id is not None) else None
        return ModelInfo(
            model=served_model_name or self.model_name,
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
        if chat_template is None and not getattr(tok, "chat_template", None):
            raise ValueError(
                f"{self.model_name} has no chat template: pass chat_template=... to score conversational input."
            )
        rendered = []
        for i, conv in enumerate(conversations):
            if not conv:
                raise ValueError(f"conversations[{i}] is empty.")
            text = tok.apply_chat_template(
                list(conv), chat_template=chat_template, tokenize=False, add_generation_prompt=add_generation_prompt
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
            return self._lora().add_lora(lora_request)

    def remove_lora(self, lora: int | str | LoRARequest) -> bool:
        """Unregister and unload an adapter (by ``lora_int_id``, name or request); ``False`` if unknown."""
        with self._engine_lock:
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
        pooling_task: str | None = None,
        lora_request: LoRARequest | Sequence[LoRARequest | None] | None = None,
        truncate_prompt_tokens: int | None = None,
        use_tqdm: bool | Callable[..., Any] = True,
        add_special_tokens: bool = True,
    ) -> list[PoolingRequestOutput]:
        """Pool ``prompts`` with ``pooling_task`` and return one output per prompt, in order.

        Args:
            prompts: A string, ``{"prompt": str}``, ``{"prompt_token_ids": [...]}`` or a list of those.
            pooling_params: One ``PoolingParams`` for all prompts, or one per prompt. Default: the config's.
            pooling_task: ``classify``, ``token_classify``, ``embed`` or ``token_embed`` (required).
            lora_request: One adapter for all prompts, or one per prompt (``None`` = base model).
            truncate_prompt_tokens: Keep the last k tokens of each prompt (``-1``: ``max_model_len``).
            use_tqdm: Show a progress bar on calls of more than one micro-batch, or a tqdm-like factory.
            add_special_tokens: Add the tokenizer's special tokens (BOS...) to string prompts. Default True.
        """
        task = check_task(pooling_task, self.supported_tasks)
        items = normalize_prompts(prompts)
        params_list = per_prompt("pooling_params", pooling_params, len(items), PoolingParams)
        lora_list = per_prompt("lora_request", lora_request, len(items), LoRARequest)
        if any(lora is not None for lora in lora_list):
            if self.lora_manager is None:
                raise ValueError("lora_request was given but this LLM was built with enable_lora=False.")
            self.lora_manager.check(lora_list)  # bad adapters fail before anything runs; loading is in _run
        token_ids = tokenize_prompts(
            items, self.tokenizer, vocab_size=self.model.vocab_size, add_special_tokens=add_special_tokens
        )
        requests: list[EngineRequest] = []
        config = self.task_configs[task]
        for i, (ids, params, lora) in enumerate(zip(token_ids, params_list, lora_list, strict=True)):
            params = params or PoolingParams()
            ids = apply_length_limit(i, ids, self.max_model_len, truncation_of(params, truncate_prompt_tokens))
            resolved = resolve_pooling(task, params, config)
            requests.append(
                EngineRequest(index=i, request_id=f"{next(_request_counter)}-{uuid.uuid4().hex[:8]}",
                              token_ids=ids, pooling=resolved, lora=lora)
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
    ) -> list[ClassificationRequestOutput]:
        """vLLM's ``LLM.classify``: ``encode(..., pooling_task="classify")`` with ``outputs.probs`` lists."""
        outs = self.encode(prompts, pooling_params, pooling_task="classify", lora_request=lora_request,
                           truncate_prompt_tokens=truncate_prompt_tokens, use_tqdm=use_tqdm)
        return [
            ClassificationRequestOutput(o.request_id, ClassificationOutput(o.outputs.data.tolist()), o.prompt_token_ids)
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
    ) -> list[EmbeddingRequestOutput]:
        """vLLM's ``LLM.embed``: ``encode(..., pooling_task="embed")`` with ``outputs.embedding`` lists."""
        outs = self.encode(prompts, pooling_params, pooling_task="embed", lora_request=lora_request,
                           truncate_prompt_tokens=truncate_prompt_tokens, use_tqdm=use_tqdm)
        return [
            EmbeddingRequestOutput(o.request_id, EmbeddingOutput(o.outputs.data.tolist()), o.prompt_token_ids)
            for o in outs
        ]

    def _run(self, requests: list[EngineRequest], use_tqdm: bool | Callable[..., Any]) -> list[torch.Tensor]:
        # One forward at a time: async reward functions and server threads share this engine, and the LoRA
        # manager's active-adapter state belongs to the batch being run.
        with self._engine_lock:
            return self._run_unlocked(requests, use_tqdm)

    def _run_unlocked(self, requests: list[EngineRequest], use_tqdm: bool | Callable[..., Any]) -> list[torch.Tensor]:
        if self.lora_manager is not None and any(r.lora is not None for r in requests):
            # Adapters are loaded (at most max_loras at a time) and their requests run in as few waves as possible.
            return self.lora_manager.run_in_waves(requests, lambda chunk: self._run_loaded(chunk, use_tqdm))
        return self._run_loaded(requests, use_tqdm)

    def _run_loaded(self, requests: list[EngineRequest], use_tqdm: bool | Callable[..., Any]) -> list[torch.Tensor]:
        total_tokens = sum(r.num_tokens for r in requests)
        show = bool(use_tqdm) and total_tokens > self.max_num_batched_tokens
        if not show:
            return self.runner.run(requests)
        factory = use_tqdm if callable(use_tqdm) else tqdm
        with factory(total=len(requests), desc="Scoring prompts", unit="prompt", dynamic_ncols=True) as bar:
            return self.runner.run(requests, on_batch_done=bar.update)


def _non_finite_error(data: torch.Tensor) -> str | None:
    """An error message if the model produced NaN/inf, so no consumer takes it for a score."""
    if bool(torch.isfinite(data).all()):
        return None
    n_nan = int(torch.isnan(data).sum())
    n_inf = int(torch.isinf(data).sum())
    return f"the model produced non-finite output ({n_nan} NaN, {n_inf} inf values); this item has no score"


class _DictConfig:
    """Attribute access over a raw config dict (for dtype resolution before the model loads)."""

    def __init__(self, data: dict[str, Any]) -> None:
        self.dtype = data.get("dtype") or data.get("torch_dtype")


__all__ = ["LLM"]
