"""The worker calls a scoring plan asks for, and the two drivers that run a plan (sync and async).

A scoring plan (:mod:`rlhf_rewards.reward.plan`) is a generator: it yields :class:`RenderChat` and
:class:`EncodeBatch` requests (each a :class:`WorkerCall`), receives each result, and returns its result at
``StopIteration``. The logic is written once; :func:`run_plan` runs it with a worker's blocking methods
(``RewardFunction``) and :func:`arun_plan` with ``aencode`` on an event loop (``AsyncRewardFunction``).
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
Plan = Generator["WorkerCall", Any, T]


class WorkerCall:
    """A request of a plan: :meth:`run` makes it with a worker's blocking methods, :meth:`arun` from an event
    loop (by default :meth:`run` in a thread). With ``catch`` the plan is sent a failure instead of it raising."""

    catch = False

    def run(self, worker: RewardWorker) -> Any:
        """The worker's answer, by its blocking methods."""
        raise NotImplementedError

    async def arun(self, worker: RewardWorker) -> Any:
        """The worker's answer, awaited (the default runs :meth:`run` in a thread so the loop stays free)."""
        return await asyncio.to_thread(self.run, worker)


@dataclass
class RenderChat(WorkerCall):
    """``worker.render_chat(conversations, chat_template=...)``: token ids per conversation."""

    conversations: list[list[dict[str, Any]]]
    chat_template: str | None
    add_generation_prompt: bool = False

    def run(self, worker: RewardWorker) -> list[list[int]]:
        """Render the conversations."""
        return worker.render_chat(
            self.conversations,
            chat_template=self.chat_template,
            add_generation_prompt=self.add_generation_prompt,
        )


@dataclass
class EncodeBatch(WorkerCall):
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

    def run(self, worker: RewardWorker) -> Any:
        """``worker.encode``."""
        return worker.encode(self.prompts, self.pooling_params, **self.encode_kwargs())

    async def arun(self, worker: RewardWorker) -> Any:
        """``worker.aencode``."""
        return await worker.aencode(self.prompts, self.pooling_params, **self.encode_kwargs())


@dataclass
class GenerativeScore(WorkerCall):
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

    def run(self, worker: RewardWorker) -> Any:
        """``worker.generative_score``."""
        return worker.generative_score(self.query, self.items, self.label_token_ids, **self.kwargs())

    async def arun(self, worker: RewardWorker) -> Any:
        """``worker.agenerative_score``."""
        return await worker.agenerative_score(self.query, self.items, self.label_token_ids, **self.kwargs())


@dataclass
class Tokenize(WorkerCall):
    """``worker.tokenize(texts)``: token ids of each text, no special tokens added."""

    texts: list[str]

    def run(self, worker: RewardWorker) -> list[list[int]]:
        """Tokenize the texts."""
        return worker.tokenize(self.texts)


class _Steps:
    """A plan stepped through: iterating yields its requests, each sent :attr:`result` (set by the driver)
    when the next is asked for; :attr:`value` is the plan's return value once iteration ends."""

    def __init__(self, plan: Plan[Any]) -> None:
        self.plan = plan
        self.result: Any = None
        self.value: Any = None

    def __iter__(self) -> _Steps:
        return self

    def __next__(self) -> WorkerCall:
        try:
            return self.plan.send(self.result)
        except StopIteration as stop:
            self.value = stop.value
            raise StopIteration from None

    @staticmethod
    def failed(request: WorkerCall, exc: Exception) -> Exception:
        """``exc`` as the plan's next result when ``request`` catches, else raised again."""
        if not request.catch:
            raise exc
        return exc


def run_plan(plan: Plan[T], worker: RewardWorker) -> T:
    """Run ``plan`` with the worker's blocking methods."""
    steps = _Steps(plan)
    for request in steps:
        try:
            steps.result = request.run(worker)
        except Exception as exc:  # noqa: BLE001 - the plan decides (catch=True) or it propagates
            steps.result = steps.failed(request, exc)
    return steps.value


async def arun_plan(plan: Plan[T], worker: RewardWorker) -> T:
    """Run ``plan`` on the event loop: ``aencode`` for batches, blocking calls in a thread."""
    steps = _Steps(plan)
    for request in steps:
        try:
            steps.result = await request.arun(worker)
        except Exception as exc:  # noqa: BLE001 - the plan decides (catch=True) or it propagates
            steps.result = steps.failed(request, exc)
    return steps.value


__all__ = [
    "EncodeBatch",
    "GenerativeScore",
    "Plan",
    "RenderChat",
    "Tokenize",
    "WorkerCall",
    "arun_plan",
    "run_plan",
]
