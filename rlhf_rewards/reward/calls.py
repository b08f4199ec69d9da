"""The worker calls a scoring plan asks for, and the two drivers that run a plan (sync and async).

A scoring plan (:mod:`rlhf_rewards.reward.plan`) is a generator: it yields :class:`RenderChat` and
:class:`EncodeBatch` requests, receives each result, and returns its result at ``StopIteration``. The
logic is written once; :func:`run_plan` runs it with a worker's blocking methods (``RewardFunction``) and
:func:`arun_plan` with ``aencode`` on an event loop (``AsyncRewardFunction``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Generator
from dataclasses import dataclass
from typing import Any, TypeVar

from rlhf_rewards.pooling.params import PoolingParams
from rlhf_rewards.workers.base import RewardWorker

T = TypeVar("T")

#: A plan yields worker calls, is sent their results and returns a ``T``.
Plan = Generator["RenderChat | EncodeBatch | GenerativeScore | Tokenize", Any, T]


@dataclass
class RenderChat:
    """``worker.render_chat(conversations, chat_template=...)``: token ids per conversation."""

    conversations: list[list[dict[str, Any]]]
    chat_template: str | None
    add_generation_prompt: bool = False


@dataclass
class EncodeBatch:
    """``worker.encode(prompts, pooling_params, ...)``: one output per prompt.

    ``add_special_tokens`` applies to text prompts (the standard format); token-id prompts are sent as they are.

    With ``catch=True`` the plan handles a failure itself: it is sent the exception instead of a result.
    """

    prompts: list[Any]
    pooling_params: PoolingParams
    pooling_task: str
    lora_request: Any
    truncate_prompt_tokens: int | None
    catch: bool = False
    add_special_tokens: bool = True

    def encode_kwargs(self) -> dict[str, Any]:
        """The keyword arguments of ``encode``/``aencode`` after ``prompts`` and ``pooling_params``.

        ``add_special_tokens`` is sent only when it is ``False`` (the workers' default is ``True``), so a
        worker written before the keyword existed still serves every call that does not need it.
        """
        kwargs: dict[str, Any] = {
            "pooling_task": self.pooling_task,
            "lora_request": self.lora_request,
            "truncate_prompt_tokens": self.truncate_prompt_tokens,
        }
        if not self.add_special_tokens:
            kwargs["add_special_tokens"] = False
        return kwargs


@dataclass
class GenerativeScore:
    """``worker.generative_score(query, items, label_token_ids, ...)``: one output per item (a judge's read)."""

    query: str | list[int]
    items: list[Any]
    label_token_ids: list[int]
    apply_softmax: bool = True
    add_special_tokens: bool = True
    lora_request: Any = None
    all_labels: bool = False

    def kwargs(self) -> dict[str, Any]:
        """The keyword arguments of ``generative_score``/``agenerative_score`` after the three positionals."""
        return {
            "apply_softmax": self.apply_softmax,
            "add_special_tokens": self.add_special_tokens,
            "lora_request": self.lora_request,
            "all_labels": self.all_labels,
        }


@dataclass
class Tokenize:
    """``worker.tokenize(texts)``: token ids of each text, no special tokens added."""

    texts: list[str]


def _plan_catches(request: Any) -> bool:
    return isinstance(request, EncodeBatch) and request.catch


def run_plan(plan: Plan[T], worker: RewardWorker) -> T:
    """Run ``plan`` with the worker's blocking ``render_chat`` and ``encode``."""
    result: Any = None
    while True:
        try:
            request = plan.send(result)
        except StopIteration as stop:
            return stop.value
        try:
            if isinstance(request, RenderChat):
                result = worker.render_chat(
                    request.conversations,
                    chat_template=request.chat_template,
                    add_generation_prompt=request.add_generation_prompt,
                )
            elif isinstance(request, Tokenize):
                result = worker.tokenize(request.texts)
            elif isinstance(request, GenerativeScore):
                result = worker.generative_score(
                    request.query, request.items, request.label_token_ids, **request.kwargs()
                )
            else:
                result = worker.encode(request.prompts, request.pooling_params, **request.encode_kwargs())
        except Exception as exc:  # noqa: BLE001 - the plan decides (catch=True) or it propagates
            if not _plan_catches(request):
                raise
            result = exc


async def arun_plan(plan: Plan[T], worker: RewardWorker) -> T:
    """Run ``plan`` on the event loop: ``aencode`` for batches, ``render_chat`` in a thread."""
    result: Any = None
    while True:
        try:
            request = plan.send(result)
        except StopIteration as stop:
            return stop.value
        try:
            if isinstance(request, RenderChat):
                result = await asyncio.to_thread(
                    worker.render_chat,
                    request.conversations,
                    chat_template=request.chat_template,
                    add_generation_prompt=request.add_generation_prompt,
                )
            elif isinstance(request, Tokenize):
                result = await asyncio.to_thread(worker.tokenize, request.texts)
            elif isinstance(request, GenerativeScore):
                result = await worker.agenerative_score(
                    request.query, request.items, request.label_token_ids, **request.kwargs()
                )
            else:
                result = await worker.aencode(
                    request.prompts, request.pooling_params, **request.encode_kwargs()
                )
        except Exception as exc:  # noqa: BLE001 - the plan decides (catch=True) or it propagates
            if not _plan_catches(request):
                raise
            result = exc


__all__ = ["EncodeBatch", "GenerativeScore", "Plan", "RenderChat", "Tokenize", "arun_plan", "run_plan"]
