"""``LLM.encode``'s request side: the pooling-task rules, vLLM's refusals in strict mode, the engine requests
built from prompts, and the outputs made from the engine's tensors."""

from __future__ import annotations

import itertools
import uuid
from collections.abc import Sequence
from typing import Any

import torch

from rlhf_rewards.contract import Prompts, normalize_prompts, per_prompt, truncation_of
from rlhf_rewards.engine.inputs import tokenize_prompts
from rlhf_rewards.engine.request import EngineRequest
from rlhf_rewards.entrypoints.model_setup import vllm_supported_tasks
from rlhf_rewards.entrypoints.tokenization import tokenization_options
from rlhf_rewards.errors import RequestError
from rlhf_rewards.lora.request import LoRARequest
from rlhf_rewards.outputs import PoolingOutput, PoolingRequestOutput
from rlhf_rewards.pooling import PoolingParams, check_task, resolve_pooling
from rlhf_rewards.pooling.tasks import POOLING_TASKS

_request_counter = itertools.count()

POOLING_TASK_REQUIRED = (
    "is required for `LLM.encode` (this model supports {tasks}). Please use one of the more specific methods or set "
    'the pooling_task when using `LLM.encode`: for embeddings, use `LLM.embed(...)` or `pooling_task="embed"`; for '
    'classification logits, use `LLM.classify(...)` or `pooling_task="classify"`; for similarity scores, use '
    '`LLM.score(...)`; for rewards, `pooling_task="classify"` or `pooling_task="token_classify"`; for token '
    'classification, use `pooling_task="token_classify"`; for multi-vector retrieval, use '
    '`pooling_task="token_embed"`.'
)


def check_pooling_task(pooling_task: str | None, supported: tuple[str, ...]) -> str:
    """``pooling_task`` if this model runs it; a ``RequestError`` on ``pooling_task`` otherwise (vLLM's
    messages: the task is required, or the model does not support that API)."""
    if pooling_task is None:
        raise RequestError(POOLING_TASK_REQUIRED.format(tasks=list(supported)), field="pooling_task", sep=" ")
    if pooling_task in POOLING_TASKS and pooling_task not in supported:
        api, convert = ("Embedding", "embed") if "embed" in pooling_task else ("Classification", "classify")
        raise RequestError(
            f"{pooling_task!r}: {api} API is not supported by this model (it supports "
            f"{list(supported)}). Try converting the model using `convert={convert!r}`.",
            field="pooling_task",
            sep="=",
        )
    return check_task(pooling_task, supported)


def check_vllm_request(llm: Any, pooling_task: str | None, pooling_params: Any) -> None:
    """``strict_vllm_compat``: refuse what vLLM 0.32's ``LLM.encode`` refuses, with its messages
    (``vllm/entrypoints/pooling/offline.py``, ``vllm/pooling_params.py``)."""
    supported = vllm_supported_tasks(llm.spec)
    if pooling_task in ("embed", "token_embed") and pooling_task not in supported:
        raise ValueError(
            "Embedding API is not supported by this model. Try converting the model using `--convert embed`."
        )
    if pooling_task in ("classify", "token_classify") and pooling_task not in supported:
        raise ValueError(
            "Classification API is not supported by this model. "
            "Try converting the model using `--convert classify`."
        )
    if pooling_task in POOLING_TASKS and pooling_task != llm.pooling_task:
        raise ValueError(f'Try switching the model\'s pooling_task via `PoolerConfig(task="{pooling_task}")`')
    params_list = pooling_params if isinstance(pooling_params, Sequence) else [pooling_params]
    for params in params_list:
        if not isinstance(params, PoolingParams):
            continue
        if params.truncate_prompt_tokens is not None or params.normalize is not None:
            name = "truncate_prompt_tokens" if params.truncate_prompt_tokens is not None else "normalize"
            raise TypeError(f"Unexpected keyword argument {name!r}")
        if pooling_task in ("embed", "token_embed") and params.dimensions is not None:
            config = llm.model.config
            if not (
                getattr(config, "matryoshka_dimensions", None) or getattr(config, "is_matryoshka", False)
            ):
                name = llm.served_model_name or llm.model_name
                raise ValueError(
                    f"Model {name!r} does not support Matryoshka embeddings; dimensions must be "
                    f"unset (received dimensions={params.dimensions})."
                )


def build_requests(
    llm: Any,
    prompts: Prompts,
    task: str,
    pooling_params: PoolingParams | Sequence[PoolingParams] | None,
    lora_request: LoRARequest | Sequence[LoRARequest | None] | None,
    tokenization_kwargs: dict[str, Any] | None,
    truncate_prompt_tokens: int | None,
    add_special_tokens: bool,
) -> list[EngineRequest]:
    """One :class:`EngineRequest` per prompt of an ``encode`` call (see ``LLM.encode`` for the arguments):
    tokenized, cut to its limit, its pooling resolved against the task's config; adapters checked first."""
    tok_options = tokenization_options(
        tokenization_kwargs,
        truncate_prompt_tokens=truncate_prompt_tokens,
        add_special_tokens=add_special_tokens,
        max_model_len=llm.max_model_len,
    )
    items = normalize_prompts(prompts)
    params_list = per_prompt("pooling_params", pooling_params, len(items), PoolingParams)
    lora_list = per_prompt("lora_request", lora_request, len(items), LoRARequest)
    if any(lora is not None for lora in lora_list):
        if llm.lora_manager is None:
            raise ValueError("lora_request was given but this LLM was built with enable_lora=False.")
        llm.lora_manager.check(lora_list)  # bad adapters fail before anything runs; loading is in LLM._run
    truncations = [truncation_of(params, tok_options.truncate_prompt_tokens) for params in params_list]
    token_ids = tokenize_prompts(
        items,
        llm.tokenizer,
        vocab_size=llm.model.vocab_size,
        add_special_tokens=tok_options.add_special_tokens,
        max_lengths=[tok_options.tokenizer_max_length(t, llm.max_model_len) for t in truncations],
    )
    config = llm.task_configs[task]
    requests: list[EngineRequest] = []
    for i, (ids, params, lora) in enumerate(zip(token_ids, params_list, lora_list, strict=True)):
        requests.append(
            EngineRequest(
                index=i,
                request_id=f"{next(_request_counter)}-{uuid.uuid4().hex[:8]}",
                token_ids=tok_options.cut(i, ids, truncations[i], llm.max_model_len),
                pooling=resolve_pooling(task, params or PoolingParams(), config),
                lora=lora,
                cache_salt=cache_salt(items[i]),
            )
        )
    return requests


def cache_salt(prompt: Any) -> str | None:
    """vLLM's ``cache_salt`` of a dict prompt: the prefix cache namespace it shares (``None``: unsalted)."""
    salt = prompt.get("cache_salt") if isinstance(prompt, dict) else None
    if salt is not None and not isinstance(salt, str):
        raise ValueError(f"cache_salt must be a string, got {type(salt).__name__}.")
    return salt


def pooling_outputs(requests: list[EngineRequest], tensors: list[torch.Tensor]) -> list[PoolingRequestOutput]:
    """One :class:`PoolingRequestOutput` per request; a non-finite tensor carries an error instead of a score."""
    return [
        PoolingRequestOutput(
            request_id=r.request_id,
            outputs=PoolingOutput(data=t),
            prompt_token_ids=r.token_ids,
            error=non_finite_error(t),
        )
        for r, t in zip(requests, tensors, strict=True)
    ]


def non_finite_error(data: torch.Tensor) -> str | None:
    """An error message if the model produced NaN/inf, so no consumer takes it for a score."""
    if bool(torch.isfinite(data).all()):
        return None
    n_nan = int(torch.isnan(data).sum())
    n_inf = int(torch.isinf(data).sum())
    return f"the model produced non-finite output ({n_nan} NaN, {n_inf} inf values); this item has no score"


__all__ = [
    "POOLING_TASK_REQUIRED",
    "build_requests",
    "cache_salt",
    "check_pooling_task",
    "check_vllm_request",
    "non_finite_error",
    "pooling_outputs",
]
