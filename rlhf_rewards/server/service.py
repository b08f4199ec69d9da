"""``ServingEngine``: the one ``LLM`` behind the routes, with model names, input preparation and the batcher.

Preparation (tokenizing, chat rendering, length and vocabulary checks, parameter validation) runs per request
in a tokenizer thread, before the request is queued: a client mistake is answered with 400 at once and
never reaches a merged batch, and tokenization overlaps the engine's forward passes.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from rlhf_rewards.contract import ModelInfo, PromptType, prompts_from_input
from rlhf_rewards.engine.inputs import tokenize_prompts
from rlhf_rewards.entrypoints.llm import LLM
from rlhf_rewards.entrypoints.tokenization import TokenizationOptions
from rlhf_rewards.errors import RequestError
from rlhf_rewards.lora.request import LoRARequest
from rlhf_rewards.outputs import PoolingRequestOutput
from rlhf_rewards.pooling.params import PoolingParams, resolve_pooling
from rlhf_rewards.pooling.tasks import check_task
from rlhf_rewards.server.batcher import Batcher, EngineItem, QueueFull
from rlhf_rewards.server.errors import APIError
from rlhf_rewards.server.label_reads import GENERATIVE_SCORING_TASK, encode_label_reads
from rlhf_rewards.server.metrics import ServerMetrics
from rlhf_rewards.server.protocol import ChatMessage, ScoringRequest


@dataclass
class ServerLimits:
    """Limits that protect the server from oversized or abusive requests.

    Args:
        max_body_bytes: Largest request body (413 above).
        max_client_batch_size: Most prompts in one request (413 above).
        max_queue_size: Most prompts waiting for the engine (503 + Retry-After above).
        max_batch_tokens: Token budget of one merged engine call.
        batch_wait_s: Longest delay of an engine call while more requests are arriving, so they join it
            (see :mod:`~rlhf_rewards.server.batcher`); ``0`` turns it off. An idle server never waits.
        trust_request_chat_template: Accept a ``chat_template`` sent in a request (it runs as Jinja).
        chat_template: The server's chat template (``--chat-template``), used when a request sends none;
            ``None``: the tokenizer's.
    """

    max_body_bytes: int = 32 * 1024 * 1024
    max_client_batch_size: int = 1024
    max_queue_size: int = 8192
    max_batch_tokens: int = 65536
    batch_wait_s: float = 0.05
    trust_request_chat_template: bool = False
    chat_template: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """Public limits (sent to clients in ``/v1/model_info``)."""
        return {
            "max_body_bytes": self.max_body_bytes,
            "max_client_batch_size": self.max_client_batch_size,
            "max_queue_size": self.max_queue_size,
        }


@dataclass
class ServingEngine:
    """Everything the routes share.

    Args:
        llm: The engine. Its registered LoRA adapters (``LLM.add_lora``, the server's ``--lora-modules``)
            are served by name; a request can only pick one of them, never name a path.
        served_model_names: Names clients use for the base model (the first one is reported back).
        limits: Request limits.
    """

    llm: LLM
    served_model_names: list[str]
    limits: ServerLimits = field(default_factory=ServerLimits)
    metrics: ServerMetrics = field(default_factory=ServerMetrics)
    draining: bool = False

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
        self._template_params = (
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

    # ------------------------------------------------------------------ preparation
    async def prepare(
        self,
        req: ScoringRequest,
        task: str,
        params: PoolingParams,
        lora: LoRARequest | None,
        field_name: str = "input",
    ) -> list[EngineItem]:
        """:meth:`_prepare_request`, each item carrying the request's ``cache_salt`` (its prefix-cache namespace)."""
        items = await self._prepare_request(req, task, params, lora, field_name)
        salt = getattr(req, "cache_salt", None)
        if salt:
            for item in items:
                item.cache_salt = salt
        return items

    async def _prepare_request(
        self,
        req: ScoringRequest,
        task: str,
        params: PoolingParams,
        lora: LoRARequest | None,
        field_name: str = "input",
    ) -> list[EngineItem]:
        """Validated engine items of a ``/pooling``, ``/classify`` or ``/v1/embeddings`` request (its ``input``
        or ``messages``), cut on the request's ``truncation_side``.

        ``field_name`` names the request's prompt field in error messages.
        """
        side = req.truncation_side
        pad = self._padding(req.padding)
        if req.input is not None and req.messages is not None:
            if not self.strict:  # vLLM serves the chat form then (its union picks the chat request)
                raise APIError(
                    400,
                    "Send one of `input` (completion form) or `messages` (chat form), not both.",
                    param="messages",
                )
        else:
            chat_only = req.chat_only_fields()
            if (
                chat_only and not self.strict
            ):  # vLLM ignores them on `input` (not fields of its completion form)
                raise APIError(
                    400,
                    f"{chat_only} only apply to the chat form (`messages`), not to `input`.",
                    param=chat_only[0],
                )
        if req.messages is None:
            if req.input == []:
                raise APIError(400, f"`{field_name}` is empty: you must pass at least one prompt.")
            add_special = True if req.add_special_tokens is None else req.add_special_tokens
            return await self.prepare_prompts(
                prompts_from_input(req.input),
                task,
                params,
                lora,
                field_name=field_name,
                add_special_tokens=add_special,
                truncation_side=side,
                pad=pad,
            )
        self._check_count(1, field_name)
        self._check_request_template(req.chat_template)
        messages = req.messages
        if not messages:
            raise APIError(
                400,
                "Cannot apply chat template to an empty conversation. Provide at least one "
                "message (`messages` is empty).",
            )

        def render() -> list[PromptType]:
            return [
                {
                    "prompt_token_ids": self._render(
                        messages,
                        chat_template=req.chat_template,
                        add_generation_prompt=req.add_generation_prompt,
                        continue_final_message=req.continue_final_message,
                        chat_template_kwargs=req.chat_template_kwargs,
                        add_special_tokens=bool(req.add_special_tokens),
                    )
                }
            ]

        # The rendered conversation is token ids: nothing is tokenized again, so add_special_tokens is moot.
        return await self._prepare_in_thread(
            render, "messages", task, params, lora, add_special_tokens=False, truncation_side=side, pad=pad
        )

    async def prepare_prompts(
        self,
        prompts: list[PromptType],
        task: str,
        params: PoolingParams,
        lora: LoRARequest | None,
        *,
        field_name: str = "input",
        add_special_tokens: bool = True,
        truncation_side: str | None = None,
        pad: bool = False,
    ) -> list[EngineItem]:
        """Validated engine items of ``prompts``, the entries of the request field ``field_name``.

        More prompts than ``max_client_batch_size`` is a 413; a mistake in prompt ``i`` is a 400 on
        ``<field_name>[i]``. ``truncation_side`` (vLLM's): ``"right"`` or ``None`` keeps the first
        ``truncate_prompt_tokens`` tokens (vLLM's default, and the engine's), ``"left"`` the last ones.
        """
        self._check_count(len(prompts), field_name)
        return await self._prepare_in_thread(
            lambda: prompts,
            field_name,
            task,
            params,
            lora,
            add_special_tokens=add_special_tokens,
            truncation_side=truncation_side,
            pad=pad,
        )

    def check_count(self, n: int, field_name: str) -> None:
        """413 when ``n`` prompts are over ``--max-client-batch-size``."""
        self._check_count(n, field_name)

    def _check_count(self, n: int, field_name: str) -> None:
        limit = self.limits.max_client_batch_size
        if n > limit:
            self.metrics.rejected.labels("too_many_inputs").inc()
            raise APIError(
                413,
                f"`{field_name}` has {n} prompts, over --max-client-batch-size={limit}; split the request.",
                param=field_name,
            )

    def _padding(self, padding: str | None) -> bool:
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

    def _check_request_template(self, chat_template: str | None) -> None:
        if chat_template is not None and not self.limits.trust_request_chat_template:
            raise APIError(
                400,
                "`chat_template` in a request is refused: start the server with "
                "--trust-request-chat-template to allow it.",
                param="chat_template",
            )

    async def _prepare_in_thread(
        self,
        get_prompts: Callable[[], list[PromptType]],
        field_name: str,
        task: str,
        params: PoolingParams,
        lora: LoRARequest | None,
        *,
        add_special_tokens: bool,
        truncation_side: str | None = None,
        pad: bool = False,
    ) -> list[EngineItem]:
        # While this request tokenizes, a round about to start waits for it (the route submits it right after).
        with self.batcher.arriving():
            return await self._in_tokenizer_thread(
                self._prepare,
                get_prompts,
                field_name,
                task,
                params,
                lora,
                add_special_tokens,
                truncation_side,
                pad,
            )

    def _prepare(
        self,
        get_prompts: Callable[[], list[PromptType]],
        field_name: str,
        task: str,
        params: PoolingParams,
        lora: LoRARequest | None,
        add_special_tokens: bool,
        truncation_side: str | None = None,
        pad: bool = False,
    ) -> list[EngineItem]:
        llm = self.llm
        with _request_errors("task"):
            check_task(task, llm.supported_tasks)
        prompts = get_prompts()  # a conversation is rendered here, after the task check
        with _request_errors(field_name):
            # The offline call's rules, written once (TokenizationOptions): with no side the tokenizer itself
            # cuts a text (keeping its BOS/EOS, as vLLM), with a side the ids are sliced ("left": the last k).
            options = TokenizationOptions(params.truncate_prompt_tokens, truncation_side, add_special_tokens)
            truncate = params.truncate_prompt_tokens
            limit = options.tokenizer_max_length(truncate, llm.max_model_len)
            token_ids = tokenize_prompts(
                prompts,
                llm.tokenizer,
                vocab_size=llm.model.vocab_size,
                add_special_tokens=add_special_tokens,
                max_lengths=[limit] * len(prompts),
            )
            token_ids = [options.cut(i, ids, truncate, llm.max_model_len) for i, ids in enumerate(token_ids)]
        if pad:  # vLLM's padding="max_length": pad token ids up to max_model_len, scored as prompt tokens
            pad_id = getattr(llm.tokenizer, "pad_token_id", None) or 0
            token_ids = [ids + [pad_id] * (llm.max_model_len - len(ids)) for ids in token_ids]
        params = params.clone(truncate_prompt_tokens=None)
        with _request_errors(None):
            resolved = resolve_pooling(task, params, llm.task_configs[task])
        self._check_widths(resolved.returned_token_ids, resolved.dimensions, task)
        return [EngineItem(ids, params, lora) for ids in token_ids]

    def _check_widths(self, columns: Sequence[int] | None, dimensions: int | None, task: str) -> None:
        model = self.llm.model
        if columns is not None and task in ("classify", "token_classify"):
            bad = [c for c in columns if c >= model.num_labels]
            if bad:
                raise APIError(
                    400,
                    f"`returned_token_ids` {bad} are out of range: the model's head has "
                    f"{model.num_labels} output columns.",
                    param="returned_token_ids",
                )
        if dimensions is not None and dimensions > model.hidden_size:
            raise APIError(
                400,
                f"`dimensions`={dimensions} is over the model's hidden size {model.hidden_size}.",
                param="dimensions",
            )

    # ------------------------------------------------------------------ chat and tokenize
    async def render(self, messages: list[ChatMessage], **kwargs: Any) -> list[int]:
        """Token ids of one conversation rendered with the chat template (tokenizer thread)."""
        self._check_request_template(kwargs.get("chat_template"))
        return await self._in_tokenizer_thread(self._render, messages, **kwargs)

    def _render(
        self,
        messages: list[ChatMessage],
        *,
        chat_template: str | None,
        add_generation_prompt: bool,
        continue_final_message: bool,
        chat_template_kwargs: dict[str, Any] | None,
        add_special_tokens: bool,
    ) -> list[int]:
        # The same steps as LLM.render_chat (template to text, then tokens), plus vLLM's chat options.
        tok = self.llm.tokenizer
        if tok is None:
            raise APIError(400, "This model has no tokenizer: send token ids in `input`.", param="messages")
        chat_template = chat_template or self.limits.chat_template
        if chat_template is None and not getattr(tok, "chat_template", None):
            raise APIError(
                400,
                f"{self.model_name} has no chat template: send `input` text, start the server "
                "with --chat-template, or send `chat_template` (with "
                "--trust-request-chat-template).",
                param="messages",
            )
        extra = dict(chat_template_kwargs or {})
        clash = sorted(k for k in extra if k in self._template_params or not str(k).isidentifier())
        if clash:
            raise APIError(
                400,
                f"`chat_template_kwargs` keys {clash} are not allowed (they are options of "
                "the renderer, not template variables).",
                param="chat_template_kwargs",
            )
        try:
            text = tok.apply_chat_template(
                [m.as_dict() for m in messages],
                chat_template=chat_template,
                tokenize=False,
                add_generation_prompt=add_generation_prompt,
                continue_final_message=continue_final_message,
                **extra,
            )
        except Exception as exc:  # noqa: BLE001 - a template error is the request's (template or messages)
            raise APIError(
                400,
                f"The chat template failed on these `messages`: {type(exc).__name__}: {str(exc)[:300]}",
                param="messages",
            ) from None
        ids = list(tok(text, add_special_tokens=add_special_tokens)["input_ids"])
        if not ids:
            raise APIError(400, "`messages` render to no tokens.", param="messages")
        return ids

    async def tokenize_text(self, text: str, add_special_tokens: bool) -> list[int]:
        """Token ids of ``text`` (tokenizer thread)."""
        tok = self.llm.tokenizer
        if tok is None:
            raise APIError(400, "This model has no tokenizer.", param="prompt")
        return await self._in_tokenizer_thread(
            lambda: list(tok(text, add_special_tokens=add_special_tokens)["input_ids"])
        )

    async def token_strs(self, ids: list[int]) -> list[str]:
        """Token strings of ``ids``."""
        tok = self.llm.get_tokenizer()
        return await self._in_tokenizer_thread(tok.convert_ids_to_tokens, ids)

    async def in_tokenizer_thread(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        """``fn(*args, **kwargs)`` in the tokenizer thread."""
        return await self._in_tokenizer_thread(fn, *args, **kwargs)

    async def _in_tokenizer_thread(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._tokenizer_pool, lambda: fn(*args, **kwargs))

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
        if task == GENERATIVE_SCORING_TASK:  # /generative_scoring's label reads (server.label_reads)
            return encode_label_reads(self.llm, items)
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


def _vllm_prompt_param(message: str) -> str | None:
    """vLLM's ``param`` for a mistake in the prompts: ``input_tokens`` for a prompt over ``max_model_len``,
    none for the rest (empty prompt, token id out of vocabulary, truncation over ``max_model_len``)."""
    if "max_model_len" in message and "truncate_prompt_tokens=" not in message.split(" is over ")[0]:
        return "input_tokens"
    return None


#: The engine's names of request parts, as the server's requests call them (prompts: the context's field).
_ENGINE_FIELDS = {"pooling_task": "task"}


@contextmanager
def _request_errors(field_name: str | None) -> Iterator[None]:
    """Answer the engine's ``ValueError`` as a 400 on the request's own field names.

    A :class:`RequestError` on the engine's ``prompts`` is moved to ``field_name`` (``prompts[3]`` ->
    ``input[3]``, the token-id subfield dropped: the request has none) and ``pooling_task`` becomes ``task``.
    The error's ``param`` is vLLM's for the prompts' checks (``input_tokens`` for a prompt over
    ``max_model_len``, none for the others: the structure in the error header still locates it), else the
    error's own.
    """
    try:
        yield
    except RequestError as exc:
        if exc.field in _ENGINE_FIELDS:
            exc = exc.located(field=_ENGINE_FIELDS[exc.field])
        param = exc.param if field_name in (None, "task") else _vllm_prompt_param(exc.message)
        param = _ENGINE_FIELDS.get(param, param) if param is not None else None
        if exc.field == "prompts" and field_name is not None:
            exc = exc.located(field=field_name, subfield=None)
        raise APIError.from_request_error(exc, param=param) from None
    except ValueError as exc:
        raise APIError(
            400, str(exc), param=None if field_name is None else _vllm_prompt_param(str(exc))
        ) from None


__all__ = ["ServerLimits", "ServingEngine"]
