"""A request's prompts turned into validated engine items, and conversations rendered with the chat template.

Preparation (tokenizing, chat rendering, length and vocabulary checks, parameter validation) runs per request
in the tokenizer thread, before the request is queued: a client mistake is answered with 400 at once and
never reaches a merged batch, and tokenization overlaps the engine's forward passes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from rlhf_rewards.contract import PromptType, prompts_from_input
from rlhf_rewards.engine.inputs import tokenize_prompts
from rlhf_rewards.entrypoints.tokenization import TokenizationOptions
from rlhf_rewards.errors import RequestError
from rlhf_rewards.lora.request import LoRARequest
from rlhf_rewards.pooling.params import PoolingParams, resolve_pooling
from rlhf_rewards.pooling.tasks import check_task
from rlhf_rewards.server.base.protocol import ChatMessage, CompletionOrChatRequest
from rlhf_rewards.server.base.serving import ServedModel
from rlhf_rewards.server.batcher import EngineItem
from rlhf_rewards.server.errors import APIError


def chat_options(req: Any) -> dict[str, Any]:
    """The chat-form options of a request (``/pooling``, ``/classify``, ``/v1/embeddings``, ``/tokenize``), as
    :func:`render` takes them."""
    return {
        "chat_template": req.chat_template,
        "add_generation_prompt": req.add_generation_prompt,
        "continue_final_message": req.continue_final_message,
        "chat_template_kwargs": req.chat_template_kwargs,
        "add_special_tokens": bool(req.add_special_tokens),
    }


async def prepare(
    served: ServedModel,
    req: CompletionOrChatRequest,
    task: str,
    params: PoolingParams,
    lora: LoRARequest | None,
    field_name: str = "input",
) -> list[EngineItem]:
    """Validated engine items of a ``/pooling``, ``/classify`` or ``/v1/embeddings`` request (its ``input`` or
    ``messages``), cut on the request's ``truncation_side``, each carrying the request's ``cache_salt`` (its
    prefix-cache namespace). ``field_name`` names the request's prompt field in error messages."""
    items = await _prepare_request(served, req, task, params, lora, field_name)
    if req.cache_salt:
        for item in items:
            item.cache_salt = req.cache_salt
    return items


async def _prepare_request(
    served: ServedModel,
    req: CompletionOrChatRequest,
    task: str,
    params: PoolingParams,
    lora: LoRARequest | None,
    field_name: str,
) -> list[EngineItem]:
    side = req.truncation_side
    pad = served.padding(req.padding)
    if req.input is not None and req.messages is not None:
        if not served.strict:  # vLLM serves the chat form then (its union picks the chat request)
            raise APIError(
                400,
                "Send one of `input` (completion form) or `messages` (chat form), not both.",
                param="messages",
            )
    else:
        chat_only = req.chat_only_fields()
        if (
            chat_only and not served.strict
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
        return await prepare_prompts(
            served,
            prompts_from_input(req.input),
            task,
            params,
            lora,
            field_name=field_name,
            add_special_tokens=add_special,
            truncation_side=side,
            pad=pad,
        )
    served.check_count(1, field_name)
    served.check_request_template(req.chat_template)
    messages = req.messages
    if not messages:
        raise APIError(
            400,
            "Cannot apply chat template to an empty conversation. Provide at least one "
            "message (`messages` is empty).",
        )

    def rendered() -> list[PromptType]:
        return [{"prompt_token_ids": render_ids(served, messages, **chat_options(req))}]

    # The rendered conversation is token ids: nothing is tokenized again, so add_special_tokens is moot.
    return await _prepare_in_thread(served, rendered, "messages", task, params, lora, False, side, pad)


async def prepare_prompts(
    served: ServedModel,
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
    served.check_count(len(prompts), field_name)
    return await _prepare_in_thread(
        served, lambda: prompts, field_name, task, params, lora, add_special_tokens, truncation_side, pad
    )


async def _prepare_in_thread(served: ServedModel, *args: Any) -> list[EngineItem]:
    """:func:`_prepare` (same arguments) in the tokenizer thread."""
    # While this request tokenizes, a round about to start waits for it (the route submits it right after).
    with served.batcher.arriving():
        return await served.in_tokenizer_thread(_prepare, served, *args)


def _prepare(
    served: ServedModel,
    get_prompts: Callable[[], list[PromptType]],
    field_name: str,
    task: str,
    params: PoolingParams,
    lora: LoRARequest | None,
    add_special_tokens: bool,
    truncation_side: str | None,
    pad: bool,
) -> list[EngineItem]:
    llm = served.llm
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
    _check_widths(served, resolved.returned_token_ids, resolved.dimensions, task)
    return [EngineItem(ids, params, lora) for ids in token_ids]


def _check_widths(
    served: ServedModel, columns: Sequence[int] | None, dimensions: int | None, task: str
) -> None:
    model = served.llm.model
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


# ---------------------------------------------------------------------------------------------- chat
async def render(served: ServedModel, messages: list[ChatMessage], **options: Any) -> list[int]:
    """Token ids of one conversation rendered with the chat template (tokenizer thread); ``options``: the
    request's :func:`chat_options`."""
    served.check_request_template(options.get("chat_template"))
    return await served.in_tokenizer_thread(render_ids, served, messages, **options)


def render_ids(
    served: ServedModel,
    messages: list[ChatMessage],
    *,
    chat_template: str | None,
    add_generation_prompt: bool,
    continue_final_message: bool,
    chat_template_kwargs: dict[str, Any] | None,
    add_special_tokens: bool,
) -> list[int]:
    """:func:`render` in the calling thread."""
    # The same steps as LLM.render_chat (template to text, then tokens), plus vLLM's chat options.
    tok = served.llm.tokenizer
    if tok is None:
        raise APIError(400, "This model has no tokenizer: send token ids in `input`.", param="messages")
    chat_template = chat_template or served.limits.chat_template
    if chat_template is None and not getattr(tok, "chat_template", None):
        raise APIError(
            400,
            f"{served.model_name} has no chat template: send `input` text, start the server "
            "with --chat-template, or send `chat_template` (with "
            "--trust-request-chat-template).",
            param="messages",
        )
    extra = dict(chat_template_kwargs or {})
    clash = sorted(k for k in extra if k in served.template_params or not str(k).isidentifier())
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


# ---------------------------------------------------------------------------------------------- errors
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


__all__ = ["chat_options", "prepare", "prepare_prompts", "render", "render_ids"]
