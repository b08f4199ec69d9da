"""``ServedModel``: the one ``LLM`` a server serves, with what every route family's serving shares.

Its model names (the base model's aliases and the LoRA adapters), the tasks vLLM would serve for it, request
limits and metrics, the tokenizer thread, and the batcher that merges queued requests into engine calls
(vLLM's ``OpenAIServing`` and ``OpenAIServingModels`` in one). Turning a request into engine items is
:mod:`~rlhf_rewards.server.base.preprocess`.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from rlhf_rewards.contract import ModelInfo
from rlhf_rewards.entrypoints.llm import LLM
from rlhf_rewards.lora.request import LoRARequest
from rlhf_rewards.outputs import PoolingRequestOutput
from rlhf_rewards.server.batcher import Batcher, EngineItem, QueueFull
from rlhf_rewards.server.errors import APIError
from rlhf_rewards.server.limits import ServerLimits
from rlhf_rewards.server.metrics import ServerMetrics

#: How the batcher runs a merged batch of a task that is not a pooling task: ``(llm, items) -> outputs``.
Encoder = Callable[[Any, list[EngineItem]], list[PoolingRequestOutput]]


@dataclass
class ServedModel:
    """The served model and everything the routes share.

    Args:
        llm: The engine. Its registered LoRA adapters (``LLM.add_lora``, the server's ``--lora-modules``)
            are served by name; a request can only pick one of them, never name a path.
        served_model_names: Names clients use for the base model (the first one is reported back).
        limits: Request limits.
        metrics: The server's Prometheus metrics.
        draining: Set once shutdown began: ``/health`` answers 503 and new work is refused.
        encoders: Batcher tasks that are not pooling tasks, with the function that runs a merged batch of each
            (``/generative_scoring``'s label reads); every other task runs through ``LLM.encode``.
        engine_executor: The thread that runs the engine (:func:`~rlhf_rewards.server.batcher.engine_thread`);
            pass the one that loaded ``llm``. Default ``None``: a new one.
    """

    llm: LLM
    served_model_names: list[str]
    limits: ServerLimits = field(default_factory=ServerLimits)
    metrics: ServerMetrics = field(default_factory=ServerMetrics)
    draining: bool = False
    encoders: dict[str, Encoder] = field(default_factory=dict)
    engine_executor: ThreadPoolExecutor | None = None

    def __post_init__(self) -> None:
        if not self.served_model_names:
            self.served_model_names = [self.llm.model_name]
        clash = set(self.lora_names) & set(self.served_model_names)
        if clash:
            raise ValueError(f"--lora-modules names {sorted(clash)} clash with the served model name.")
        self._base_aliases = {*self.served_model_names, self.llm.model_name}
        self._tokenizer_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="rlhf-rewards-tokenizer")
        self.batcher = Batcher(
            self._encode,
            max_queue_size=self.limits.max_queue_size,
            max_batch_tokens=self.limits.max_batch_tokens,
            metrics=self.metrics,
            batch_wait_s=self.limits.batch_wait_s,
            executor=self.engine_executor,
        )
        self.metrics.watch_prefix_cache(getattr(getattr(self.llm, "runner", None), "prefix_cache", None))
        self.info: ModelInfo = self.llm.model_info(self.model_name)
        #: The task of a request that names none (vLLM's ``pooling_task``): ``--pooler-config``'s ``task`` if
        #: set, else the model's reward task.
        self.default_task: str = getattr(self.llm, "pooling_task", None) or self.info.default_task
        #: ``--strict-vllm-compat`` (``LLM(strict_vllm_compat=True)``): every request vLLM 0.32 refuses is
        #: refused with vLLM's status and error, instead of being served by one of this server's extensions.
        self.strict: bool = bool(getattr(self.llm, "strict_vllm_compat", False))
        tok = self.llm.tokenizer
        #: The renderer's own options, which ``chat_template_kwargs`` may not name.
        self.template_params: set[str] = (
            set(inspect.signature(tok.apply_chat_template).parameters) if tok is not None else set()
        )

    # ------------------------------------------------------------------ names
    @property
    def model_name(self) -> str:
        """The name reported for the base model."""
        return self.served_model_names[0]

    @property
    def lora_names(self) -> list[str]:
        """Names of the adapters served (registered on the engine), in registration order."""
        return [r.lora_name for r in self.llm.list_loras()] if self.llm.lora_manager is not None else []

    def resolve_model(self, name: str | None, param: str | None = "model") -> tuple[str, LoRARequest | None]:
        """``(name to report, adapter or None)`` for a request's ``model`` field; an unknown name is a 404
        (vLLM's ``NotFoundError``) listing the names served. ``param``: vLLM's ``param`` of that error (none on
        the pooling routes, ``"model"`` on ``/tokenize`` and ``/detokenize``)."""
        if not name or name in self._base_aliases:
            return self.model_name, None
        if name in self.lora_names:
            return name, self.llm.get_lora(name)
        known = [*self.served_model_names, *self.lora_names]
        raise APIError(
            404, f"The model `{name[:200]}` does not exist; this server serves {known}.", param=param
        )

    @property
    def vllm_tasks(self) -> tuple[str, ...]:
        """The pooling tasks vLLM 0.32 supports for this model (its ``supported_tasks``): a sequence
        classifier ``classify`` and ``token_classify``, an embedding model ``embed`` and ``token_embed``, a
        token or process reward model ``token_classify``, a causal LM converted to a classifier (``--convert
        classify``, e.g. math-shepherd read through two LM-head rows) both classify tasks whatever its pooling.
        vLLM serves only :attr:`default_task` of them."""
        kind = self.info.kind
        if kind == "outcome" or "classify" in self.info.tasks:
            return ("classify", "token_classify")
        if kind == "embedding":
            return ("embed", "token_embed")
        return ("token_classify",)

    def check_vllm_task(self, task: str) -> None:
        """Strict mode: vLLM's 400 for a task other than the model's own (``/pooling``'s ``task``)."""
        if not self.strict or task == self.default_task:
            return
        if task not in self.vllm_tasks:
            raise APIError(
                400,
                f"Unsupported task: {task!r} Supported tasks: {list(self.vllm_tasks)} (parameter=task)",
                param="task",
            )
        raise APIError(
            400,
            f"Try switching the model's pooling_task via --pooler-config.task {task}. (parameter=task)",
            param="task",
        )

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        """Start the batching loop (inside the server's event loop)."""
        self.batcher.start()

    async def stop(self) -> None:
        """Drain queued work, then release the threads."""
        await self.batcher.stop()
        self._tokenizer_pool.shutdown(wait=True)

    # ------------------------------------------------------------------ request checks
    def check_count(self, n: int, field_name: str) -> None:
        """413 when ``n`` prompts are over ``--max-client-batch-size``."""
        limit = self.limits.max_client_batch_size
        if n > limit:
            self.metrics.rejected.labels("too_many_inputs").inc()
            raise APIError(
                413,
                f"`{field_name}` has {n} prompts, over --max-client-batch-size={limit}; split the request.",
                param=field_name,
            )

    def check_request_template(self, chat_template: str | None) -> None:
        """400 for a ``chat_template`` sent in a request, unless the server trusts them
        (``--trust-request-chat-template``: the template runs as Jinja on the server)."""
        if chat_template is not None and not self.limits.trust_request_chat_template:
            raise APIError(
                400,
                "`chat_template` in a request is refused: start the server with "
                "--trust-request-chat-template to allow it.",
                param="chat_template",
            )

    def padding(self, padding: str | None) -> bool:
        """Whether prompts are padded to ``max_model_len`` (vLLM's ``padding="max_length"``): only in strict
        mode; otherwise refused (pad tokens change a causal reward model's last-token and per-token scores)."""
        if padding != "max_length":
            return False
        if not self.strict:
            raise APIError(
                400,
                "`padding`='max_length' is refused: pad tokens would change a causal reward "
                "model's scores; prompts are never padded here (use 'do_not_pad' or leave it out).",
                param="padding",
            )
        return True

    # ------------------------------------------------------------------ tokenizer thread
    async def in_tokenizer_thread(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        """``fn(*args, **kwargs)`` in the tokenizer thread (tokenization overlaps the engine's forward passes)."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._tokenizer_pool, lambda: fn(*args, **kwargs))

    async def tokenize_text(self, text: str, add_special_tokens: bool) -> list[int]:
        """Token ids of ``text`` (tokenizer thread)."""
        tok = self.llm.tokenizer
        if tok is None:
            raise APIError(400, "This model has no tokenizer.", param="prompt")
        return await self.in_tokenizer_thread(
            lambda: list(tok(text, add_special_tokens=add_special_tokens)["input_ids"])
        )

    async def token_strs(self, ids: list[int]) -> list[str]:
        """Token strings of ``ids``."""
        tok = self.llm.get_tokenizer()
        return await self.in_tokenizer_thread(tok.convert_ids_to_tokens, ids)

    # ------------------------------------------------------------------ scoring
    async def score(self, task: str, items: list[EngineItem]) -> list[PoolingRequestOutput]:
        """Queue items and wait for their outputs; a full queue is a 503 with ``Retry-After``."""
        try:
            outputs = await self.batcher.submit(task, items)
        except QueueFull as exc:
            raise APIError(503, str(exc), headers={"Retry-After": str(exc.retry_after)}) from None
        self.metrics.prompts.labels(task).inc(len(outputs))
        self.metrics.prompt_tokens.inc(sum(len(o.prompt_token_ids) for o in outputs))
        errors = sum(o.error is not None for o in outputs)
        if errors:
            self.metrics.item_errors.inc(errors)
        return outputs

    def _encode(self, task: str, items: list[EngineItem]) -> list[PoolingRequestOutput]:
        encoder = self.encoders.get(task)
        if encoder is not None:
            return encoder(self.llm, items)
        loras = [i.lora for i in items]
        return self.llm.encode(
            [
                {"prompt_token_ids": i.token_ids, **({"cache_salt": i.cache_salt} if i.cache_salt else {})}
                for i in items
            ],
            [i.params for i in items],
            pooling_task=task,
            lora_request=loras if any(lo is not None for lo in loras) else None,
            use_tqdm=False,
        )


__all__ = ["Encoder", "ServedModel"]
