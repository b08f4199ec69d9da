"""``LoopThreadWorker``: the base of the workers whose work is coroutines (``RemoteWorker``, ``RayWorkerPool``).

Such a worker owns an event loop on a daemon thread. Its blocking methods submit a coroutine to that loop
and wait; :meth:`~LoopThreadWorker.aencode` awaits the same coroutine from any other event loop, so calls
from many threads and loops share one HTTP client or one set of actor calls.

``encode`` and ``aencode`` are written once, here: the pooling task is checked against
:meth:`~LoopThreadWorker.model_info`, the prompts are normalized and checked, and ``pooling_params`` and
``lora_request`` are broadcast to one entry per prompt, all with the contract's functions (so a mistake is
the engine's own :class:`~rlhf_rewards.errors.RequestError`, naming the caller's prompt, before anything is
sent); then the subclass's :meth:`~LoopThreadWorker._send_encode` dispatches, and the call is counted in
:attr:`~LoopThreadWorker.stats`.
"""

from __future__ import annotations

import asyncio
import threading
import time
from abc import abstractmethod
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal, TypeVar

from rlhf_rewards.contract import (
    Conversations,
    ModelInfo,
    check_prompt,
    normalize_prompts,
    per_prompt,
    require_prompts,
    truncation_of,
)
from rlhf_rewards.entrypoints.generative_scoring import GenerativeScoringOutput
from rlhf_rewards.errors import RequestError
from rlhf_rewards.lora.request import LoRARequest
from rlhf_rewards.outputs import PoolingRequestOutput
from rlhf_rewards.pooling.params import PoolingParams
from rlhf_rewards.pooling.tasks import check_task
from rlhf_rewards.workers.base import RewardWorker, WorkerStats
from rlhf_rewards.workers.calls import EncodeCall, GenerativeScoreCall

T = TypeVar("T")
#: A prompt after :func:`~rlhf_rewards.contract.check_prompt`: ``("text", str)`` or ``("ids", [int, ...])``.
CheckedPrompt = tuple[Literal["text", "ids"], Any]
#: One conversation, its messages copied (what :meth:`LoopThreadWorker._send_render_chat` gets).
Conversation = list[dict[str, Any]]
#: Request fields whose index is a prompt's: a chunk's error on them is moved to the caller's index.
PER_PROMPT_FIELDS = frozenset({"prompts", "pooling_params", "lora_request"})


class LoopThreadWorker(RewardWorker):
    """A :class:`RewardWorker` that runs coroutines on its own event-loop thread.

    Subclasses call ``super().__init__(thread_name)`` before anything that may need :meth:`close`, and
    implement :meth:`_send_encode` (dispatch one checked call), :meth:`_fetch_model_info` and
    :meth:`_send_render_chat`; they may implement :meth:`_send_generative_score` and extend
    :meth:`_close_resources`.
    """

    def __init__(self, thread_name: str) -> None:
        self.stats = WorkerStats()
        self._info: ModelInfo | None = None
        self._closed = False
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name=thread_name, daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ the loop
    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run ``coro`` on the worker's loop and wait for it (from any thread but the loop's)."""
        if self._closed:
            coro.close()
            raise RuntimeError(f"This {type(self).__name__} is closed.")
        if threading.current_thread() is self._thread:
            coro.close()
            raise RuntimeError(
                f"{type(self).__name__}'s blocking methods cannot run on its own event loop; use aencode."
            )
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    async def _arun(self, coro: Coroutine[Any, Any, T]) -> T:
        """Await ``coro`` on the worker's loop from any other event loop (no thread is blocked)."""
        if self._closed:
            coro.close()
            raise RuntimeError(f"This {type(self).__name__} is closed.")
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coro, self._loop))

    # ------------------------------------------------------------------ RewardWorker
    def _encode(self, call: EncodeCall) -> list[PoolingRequestOutput]:
        """Pool the call's prompts on the worker's endpoints (``use_tqdm`` is ignored)."""
        return self._run(self._checked_encode(call))

    async def _aencode(self, call: EncodeCall) -> list[PoolingRequestOutput]:
        """Async :meth:`encode`, from any event loop (the work runs on the worker's own loop)."""
        return await self._arun(self._checked_encode(call))

    def _generative_score(self, call: GenerativeScoreCall) -> list[GenerativeScoringOutput]:
        """:meth:`RewardWorker.generative_score` on the worker's endpoints."""
        return self._run(self._checked_generative_score(call))

    async def _agenerative_score(self, call: GenerativeScoreCall) -> list[GenerativeScoringOutput]:
        """Async :meth:`generative_score`, from any event loop (the work runs on the worker's own loop)."""
        return await self._arun(self._checked_generative_score(call))

    def model_info(self) -> ModelInfo:
        """The served model's :class:`ModelInfo` (fetched once, then cached)."""
        return self._run(self._model_info())

    def _render_chat(
        self, conversations: Conversations, chat_template: str | None, add_generation_prompt: bool
    ) -> list[list[int]]:
        """Render the conversations on an endpoint, each checked to be non-empty first."""
        convs = [[dict(m) for m in conv] for conv in conversations]
        for i, conv in enumerate(convs):
            if not conv:
                raise RequestError("is empty.", field="conversations", index=i)
        return self._run(self._send_render_chat(convs, chat_template, add_generation_prompt))

    def close(self) -> None:
        """Release the worker's resources and stop its event loop; later calls raise."""
        if self._closed:
            return
        try:
            self._close_resources()
        finally:
            self._closed = True
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)
            if not self._loop.is_running():
                self._loop.close()

    def __del__(self) -> None:  # pragma: no cover - best effort at interpreter exit
        try:
            if not self._closed and self._loop.is_running():
                self._loop.call_soon_threadsafe(self._loop.stop)
        except Exception:  # noqa: BLE001
            pass

    # ------------------------------------------------------------------ for subclasses
    @abstractmethod
    async def _send_encode(self, call: CheckedEncode) -> list[PoolingRequestOutput]:
        """Score checked prompts (one params and adapter entry per prompt); one output per prompt, in order."""

    async def _send_generative_score(self, call: GenerativeScoreCall) -> list[GenerativeScoringOutput]:
        """Dispatch one generative-scoring call (subclasses that serve it override this)."""
        raise NotImplementedError(f"{type(self).__name__} does not implement generative scoring.")

    @abstractmethod
    async def _fetch_model_info(self) -> ModelInfo:
        """Ask the endpoints for the model's :class:`ModelInfo` (called once; :meth:`_model_info` caches it)."""

    @abstractmethod
    async def _send_render_chat(
        self, conversations: list[Conversation], chat_template: str | None, add_generation_prompt: bool
    ) -> list[list[int]]:
        """Render non-empty conversations on the endpoints."""

    def _close_resources(self) -> None:  # noqa: B027 - optional hook
        """Release connections or actors; runs before the loop stops (so it may use :meth:`_run`)."""

    async def _model_info(self) -> ModelInfo:
        if self._info is None:
            self._info = await self._fetch_model_info()
        return self._info

    async def _checked_encode(self, call: EncodeCall) -> list[PoolingRequestOutput]:
        """``LLM.encode``'s checks, in its order, then :meth:`_send_encode`, then the stats."""
        start = time.perf_counter()
        task = check_task(call.pooling_task, tuple((await self._model_info()).tasks))
        items = normalize_prompts(call.prompts)
        params_list = per_prompt("pooling_params", call.pooling_params, len(items), PoolingParams)
        lora_list = per_prompt("lora_request", call.lora_request, len(items), LoRARequest)
        require_prompts(items)
        checked = [check_prompt(i, p) for i, p in enumerate(items)]
        truncation_of(None, call.truncate_prompt_tokens)  # validates the call-level value
        if not isinstance(call.add_special_tokens, bool):
            raise RequestError(
                f"must be true or false, got {call.add_special_tokens!r}.", field="add_special_tokens"
            )
        outputs = await self._send_encode(
            CheckedEncode(
                checked, params_list, lora_list, task, call.truncate_prompt_tokens, call.add_special_tokens
            )
        )
        self.stats.record(outputs, time.perf_counter() - start)
        return outputs

    async def _checked_generative_score(self, call: GenerativeScoreCall) -> list[GenerativeScoringOutput]:
        """The call with its items and labels as lists, then :meth:`_send_generative_score`."""
        items, labels = list(call.items), list(call.label_token_ids)
        return await self._send_generative_score(replace(call, items=items, label_token_ids=labels))


@dataclass(frozen=True)
class CheckedEncode:
    """An ``encode`` call after ``LLM.encode``'s checks: one prompt, params and adapter entry per prompt."""

    prompts: list[CheckedPrompt]
    params: list[PoolingParams | None]
    loras: list[LoRARequest | None]
    task: str
    truncate_prompt_tokens: int | None
    add_special_tokens: bool = True


async def gather_or_raise(coros: Sequence[Coroutine[Any, Any, T]]) -> list[T]:
    """Run ``coros`` concurrently and return their results in order; on the first exception cancel the
    rest, wait for them to finish, and raise it."""
    tasks = [asyncio.ensure_future(c) for c in coros]
    if not tasks:
        return []
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        for t in done:
            if t.exception() is not None:
                raise t.exception()  # type: ignore[misc]
        return [t.result() for t in tasks]
    finally:
        for t in tasks:
            if not t.done():
                t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


__all__ = ["PER_PROMPT_FIELDS", "CheckedEncode", "CheckedPrompt", "LoopThreadWorker", "gather_or_raise"]
