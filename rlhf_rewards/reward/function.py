"""``RewardFunction`` and ``AsyncRewardFunction``: a reward model as a TRL ``reward_funcs`` entry.

Both talk to the model only through a :class:`~rlhf_rewards.workers.base.RewardWorker`, so the same
function serves a colocated model, a remote server or a Ray pool. One call scores every completion of the
batch with ONE ``encode`` request (the engine packs them); extra requests happen only for inputs exactly at
or over ``max_model_len`` (to tell a fitting input from an over-long one).

The scoring logic is written once, as a generator that yields the worker calls it needs (render a chat,
encode a batch); the sync and async classes only differ in how they run those calls.
"""

from __future__ import annotations

import asyncio
import os
import time
import warnings
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rlhf_rewards.pooling.params import PoolingParams
from rlhf_rewards.reward.aggregation import aggregate_steps
from rlhf_rewards.reward.config import RewardFunctionConfig
from rlhf_rewards.reward.formatting import conversation, detect_format, standard_text
from rlhf_rewards.reward.steps import tag_completion
from rlhf_rewards.workers.base import ModelInfo, RewardWorker

# Renders the first message's content verbatim: lets a worker tokenize a literal text (a reward token)
# through ``render_chat`` alone, without the special tokens a plain ``encode`` of a string would add.
_VERBATIM_TEMPLATE = "{{ messages[0]['content'] }}"


class RewardFunctionError(RuntimeError):
    """A reward function could not score a batch; the message names the function and the model."""


class RewardInputError(RewardFunctionError, ValueError):
    """The inputs of a reward function call are invalid (also a ``ValueError``)."""


class UnscorableCompletionWarning(UserWarning):
    """Some completions got reward ``None`` because the reward model cannot score them."""


@dataclass
class _Render:
    conversations: list[list[dict[str, Any]]]
    chat_template: str | None


@dataclass
class _Encode:
    prompts: list[Any]
    pooling_params: PoolingParams
    pooling_task: str
    lora_request: Any
    truncate_prompt_tokens: int | None
    catch: bool = False  # the plan handles a failure of this call itself


@dataclass
class _Item:
    index: int
    prompt: str | dict[str, Any]
    n_tokens: int | None  # known when the input is token ids
    n_steps: int | None


@dataclass
class ScoreResult:
    """What one call produced: a reward (or ``None``) per completion, step scores, and accounting."""

    rewards: list[float | None]
    steps: list[list[float | None] | None]
    tokens: int
    unscored: dict[int, str]


_Plan = Generator[Any, Any, ScoreResult]


class _RewardFunctionBase:
    """Shared construction and scoring plan of :class:`RewardFunction` and :class:`AsyncRewardFunction`."""

    def __init__(
        self,
        source: Any,
        *,
        name: str | None = None,
        kind: str | None = None,
        lora: Any = None,
        chat_template: str | None = None,
        step_separator: str = "\n\n",
        step_aggregation: Any = "min",
        reward_offset: float = 0.0,
        reward_scale: float = 1.0,
        step_tag: str | None = None,
        keep_step_separator: bool = False,
        step_score_column: int | None = None,
        score_column: int = 0,
        use_activation: bool | None = None,
        truncate: bool = False,
        llm_kwargs: dict[str, Any] | None = None,
    ) -> None:
        self.config = RewardFunctionConfig(
            name=name,
            kind=kind,
            lora=lora,
            chat_template=chat_template,
            step_separator=step_separator,
            step_aggregation=step_aggregation,
            step_tag=step_tag,
            keep_step_separator=keep_step_separator,
            step_score_column=step_score_column,
            score_column=score_column,
            use_activation=use_activation,
            reward_offset=reward_offset,
            reward_scale=reward_scale,
            truncate=truncate,
            llm_kwargs=dict(llm_kwargs or {}),
        )
        self.worker, self._owns_worker = _make_worker(source, self.config)
        self.model_info: ModelInfo = self.worker.model_info()
        self.__name__ = self.config.name or _default_name(self.model_info, self.config)
        self.kind = self._resolve_kind()
        self.pooling_task = "classify" if self.kind == "outcome" else "token_classify"
        self.step_tag = self._resolve_step_tag()
        self._reward_token_ids: list[int] | None = None
        self._call_listeners: list[Callable[[list[float | None], float], None]] = []

    # ------------------------------------------------------------------ setup
    @property
    def _owner(self) -> str:
        return f"{type(self).__name__} {self.__name__!r} (model {self.model_info.model})"

    def _resolve_kind(self) -> str:
        info = self.model_info
        kind = self.config.kind or info.kind
        if kind not in ("outcome", "token", "process"):
            raise ValueError(
                f"{self._owner}: the model's kind is {info.kind!r} ({info.architecture}), not a reward model; "
                "pass kind='outcome', 'token' or 'process' if it does score rewards."
            )
        task = "classify" if kind == "outcome" else "token_classify"
        if task not in info.tasks:
            raise ValueError(
                f"{self._owner}: kind={kind!r} needs the {task!r} pooling task but {info.architecture} supports "
                f"{info.tasks}; use kind={info.kind!r}."
            )
        if kind == "process" and info.step_tag_id is None:
            raise ValueError(
                f"{self._owner}: process rewards need STEP pooling with a step tag, but {info.architecture} is "
                f"configured with {info.pooler_configs.get('token_classify')}. Load it with "
                "pooler_config={'pooling_type': 'STEP', 'step_tag_id': <id>, 'returned_token_ids': [<good>, <bad>]} "
                "(math-shepherd style), or pass kind='outcome'/'token' for another reading."
            )
        return kind

    def _resolve_step_tag(self) -> str | None:
        if self.kind != "process":
            return None
        tag = self.config.step_tag or self.model_info.step_tag
        if not tag:
            raise ValueError(f"{self._owner}: the model's step tag has no text; pass step_tag=... .")
        return tag

    def step_column(self, k: int) -> int:
        """The column of a ``[n_steps, k]`` STEP output that holds the step reward (see ``step_score_column``)."""
        if self.config.step_score_column is not None:
            col = self.config.step_score_column
        elif self.model_info.pooler_configs.get("token_classify", {}).get("returned_token_ids"):
            col = 0  # returned_token_ids = [good, bad, ...]: the first is the "good" token (math-shepherd)
        elif k == 2:
            col = 1  # two-label PRM head (Qwen2.5-Math-PRM): label 1 is "correct"
        elif k == 1:
            col = 0
        else:
            raise RewardFunctionError(
                f"{self._owner}: the STEP output has {k} columns and no returned_token_ids; pass "
                "step_score_column=... to say which column is the step reward."
            )
        if col >= k:
            raise RewardFunctionError(f"{self._owner}: step_score_column={col} but the STEP output has {k} columns.")
        return col

    def _pooling_params(self) -> PoolingParams:
        use_activation = self.config.use_activation
        if use_activation is None and self.kind != "process":
            use_activation = False  # raw logits, as TRL's built-in reward models
        return PoolingParams(use_activation=use_activation)

    # ------------------------------------------------------------------ the plan
    def _plan(self, prompts: Sequence[Any], completions: Sequence[Any]) -> _Plan:
        """Yields ``_Render``/``_Encode`` requests, receives their results, returns a ``ScoreResult``."""
        if prompts is None or completions is None:
            raise ValueError(f"{self._owner}: prompts and completions are required (TRL passes both).")
        n = len(completions)
        if n == 0 and len(prompts) == 0:
            return ScoreResult([], [], 0, {})
        fmt = detect_format(prompts, completions, self._owner)
        unscored: dict[int, str] = {}
        items: list[_Item] = []
        max_len = self.model_info.max_model_len
        if fmt == "conversational":
            if self.config.chat_template is None and not self.model_info.has_chat_template:
                raise ValueError(
                    f"{self._owner}: the reward model's tokenizer has no chat template, so conversational "
                    "prompts/completions cannot be rendered; pass chat_template=... (a Jinja template) or use the "
                    "standard (string) format."
                )
            tag = self._tagger() if self.kind == "process" else None
            built = [conversation(p, c, tag) for p, c in zip(prompts, completions, strict=True)]
            ids_list = yield _Render([m for m, _ in built], self.config.chat_template)
            suffix: list[int] = []
            if self.kind == "token" and self.model_info.reward_token:
                suffix = yield from self._reward_token_plan()
            for i, ((_, n_steps), ids) in enumerate(zip(built, ids_list, strict=True)):
                ids = list(ids) + suffix
                if len(ids) > max_len and not self.config.truncate:
                    unscored[i] = f"{len(ids)} tokens, over max_model_len={max_len} (truncate=False)"
                    continue
                items.append(_Item(i, {"prompt_token_ids": ids}, len(ids), n_steps if tag else None))
        else:
            suffix_text = (self.model_info.reward_token or "") if self.kind == "token" else ""
            for i, (p, c) in enumerate(zip(prompts, completions, strict=True)):
                n_steps = None
                if self.kind == "process":
                    tagged = self._tagger()(c)
                    c, n_steps = tagged.text, tagged.n_steps
                items.append(_Item(i, standard_text(p, c, suffix_text), None, n_steps))

        return (yield from self._score_items(n, items, unscored))

    def _plan_token_ids(self, token_ids: Sequence[Sequence[int]]) -> _Plan:
        """Plan for inputs that are already token ids of the reward model's vocabulary (outcome/token kinds)."""
        if self.kind == "process":
            raise ValueError(f"{self._owner}: token-id inputs cannot be split into steps; use text inputs.")
        suffix: list[int] = []
        if self.kind == "token" and self.model_info.reward_token:
            suffix = yield from self._reward_token_plan()
        items: list[_Item] = []
        unscored: dict[int, str] = {}
        max_len = self.model_info.max_model_len
        for i, ids in enumerate(token_ids):
            ids = [int(t) for t in ids] + suffix
            if len(ids) > max_len and not self.config.truncate:
                unscored[i] = f"{len(ids)} tokens, over max_model_len={max_len} (truncate=False)"
                continue
            items.append(_Item(i, {"prompt_token_ids": ids}, len(ids), None))
        return (yield from self._score_items(len(token_ids), items, unscored))

    def _score_items(self, n: int, items: list[_Item], unscored: dict[int, str]) -> _Plan:
        """Encode ``items`` in one request (plus re-checks of texts at the length limit) and read the scores."""
        max_len = self.model_info.max_model_len
        outputs: dict[int, Any] = {}
        if items:
            # -1 keeps the last max_model_len tokens; inputs that fit are unchanged, so one request serves all.
            batch = yield self._encode([it.prompt for it in items], truncate=-1)
            if len(batch) != len(items):
                raise RewardFunctionError(f"{self._owner}: the worker returned {len(batch)} outputs for {len(items)} inputs.")
            for it, out in zip(items, batch, strict=True):
                outputs[it.index] = out
            if not self.config.truncate:
                # A text that came back max_model_len long may have been cut: ask again, untruncated.
                for it in items:
                    if it.n_tokens is None and len(outputs[it.index].prompt_token_ids) >= max_len:
                        single = yield self._encode([it.prompt], truncate=None, catch=True)
                        if isinstance(single, Exception):
                            del outputs[it.index]
                            unscored[it.index] = f"over max_model_len={max_len} (truncate=False): {str(single).rstrip('.')}"
                        else:
                            outputs[it.index] = single[0]
        return self._extract(n, items, outputs, unscored)

    def _tagger(self):
        cfg = self.config
        tag = self.step_tag
        assert tag is not None
        return lambda text: tag_completion(
            text, step_tag=tag, separator=cfg.step_separator, keep_separator=cfg.keep_step_separator
        )

    def _encode(self, prompts: list[Any], *, truncate: int | None, catch: bool = False) -> _Encode:
        return _Encode(prompts, self._pooling_params(), self.pooling_task, self.config.lora, truncate, catch)

    def _reward_token_plan(self) -> Generator[Any, Any, list[int]]:
        if self._reward_token_ids is None:
            token_id = getattr(self.model_info, "reward_token_id", None)
            if token_id is not None:
                self._reward_token_ids = [int(token_id)]
            else:
                (ids,) = yield _Render([[{"role": "user", "content": self.model_info.reward_token}]], _VERBATIM_TEMPLATE)
                self._reward_token_ids = list(ids)
        return list(self._reward_token_ids)

    def _extract(self, n: int, items: list[_Item], outputs: dict[int, Any], unscored: dict[int, str]) -> ScoreResult:
        cfg = self.config
        rewards: list[float | None] = [None] * n
        steps: list[list[float | None] | None] = [None] * n
        tokens = 0
        zero_row_items = 0
        process_items = 0
        for it in items:
            out = outputs.get(it.index)
            if out is None:
                continue
            tokens += len(out.prompt_token_ids)
            if out.error:
                unscored[it.index] = out.error
                continue
            data = out.outputs.data
            if self.kind == "outcome":
                score = self._column(data.reshape(-1), cfg.score_column)
            elif self.kind == "token":
                if data.dim() != 2 or data.shape[0] == 0:
                    raise RewardFunctionError(f"{self._owner}: expected a [n_tokens, k] token output, got {tuple(data.shape)}.")
                score = self._column(data[-1], cfg.score_column)
            else:
                process_items += 1
                assert it.n_steps is not None
                if data.dim() != 2:
                    raise RewardFunctionError(f"{self._owner}: expected a [n_steps, k] STEP output, got {tuple(data.shape)}.")
                n_rows = data.shape[0]
                if n_rows == 0:
                    zero_row_items += 1
                rows = data[:, self.step_column(int(data.shape[1]))].tolist() if n_rows else []
                truncated = cfg.truncate and len(out.prompt_token_ids) >= self.model_info.max_model_len
                if n_rows >= it.n_steps:
                    # Extra rows can only come before the completion (a tag inside the prompt or template).
                    step_scores: list[float | None] = list(rows[n_rows - it.n_steps :])
                elif truncated and n_rows > 0:
                    step_scores = [None] * (it.n_steps - n_rows) + list(rows)  # the first steps were cut off
                else:
                    unscored[it.index] = (
                        f"found {n_rows} step tag(s) {self.step_tag!r} (id {self.model_info.step_tag_id}) in the "
                        f"scored tokens for {it.n_steps} step(s)"
                    )
                    continue
                steps[it.index] = step_scores
                score = aggregate_steps([s for s in step_scores if s is not None], cfg.step_aggregation)
            rewards[it.index] = cfg.reward_scale * score + cfg.reward_offset
        if process_items and zero_row_items == process_items:
            raise RewardFunctionError(
                f"{self._owner}: no scored input contained the step tag {self.step_tag!r} as token id "
                f"{self.model_info.step_tag_id}. The tag text must tokenize to step_tag_id: pass step_tag=... "
                "(e.g. with a leading space) or fix the pooler config's step_tag_id."
            )
        return ScoreResult(rewards, steps, tokens, unscored)

    def _column(self, row: Any, col: int) -> float:
        if col >= row.shape[-1]:
            raise RewardFunctionError(f"{self._owner}: score_column={col} but the model outputs {row.shape[-1]} column(s).")
        return float(row[col])

    # ------------------------------------------------------------------ shared call bookkeeping
    def _finish(self, result: ScoreResult, started: float, return_steps: bool, kwargs: dict[str, Any]) -> Any:
        n = len(result.rewards)
        if result.unscored:
            shown = "; ".join(f"item {i}: {why}" for i, why in sorted(result.unscored.items())[:5])
            more = f" (and {len(result.unscored) - 5} more)" if len(result.unscored) > 5 else ""
            warnings.warn(
                f"{self._owner}: {len(result.unscored)} of {n} completion(s) cannot be scored and get reward "
                f"None: {shown}{more}.",
                UnscorableCompletionWarning,
                stacklevel=3,
            )
        seconds = time.perf_counter() - started
        for listener in self._call_listeners:
            listener(list(result.rewards), seconds)
        log_metric = kwargs.get("log_metric")
        if callable(log_metric) and n:
            log_metric(f"rewards/{self.__name__}/latency_s", seconds)
            log_metric(f"rewards/{self.__name__}/tokens_scored", float(result.tokens))
            log_metric(f"rewards/{self.__name__}/unscored_frac", len(result.unscored) / n)
        if return_steps:
            return result.rewards, result.steps
        return result.rewards

    def _check_return_steps(self, return_steps: bool) -> None:
        if return_steps and self.kind != "process":
            raise RewardInputError(
                f"{self._owner}: return_steps=True is only for process reward models (kind={self.kind!r})."
            )

    def _wrap(self, exc: Exception) -> Exception:
        if isinstance(exc, RewardFunctionError):
            return exc
        message = str(exc)
        if not message.startswith(self._owner):
            message = f"{self._owner}: {type(exc).__name__}: {message}"
        cls = RewardInputError if isinstance(exc, ValueError) else RewardFunctionError
        return cls(message)

    def add_call_listener(self, listener: Callable[[list[float | None], float], None]) -> None:
        """Call ``listener(rewards, seconds)`` after every successful call: the rewards returned (``None`` for
        unscorable completions) and the call's wall time. Used by
        :class:`~rlhf_rewards.callbacks.RewardMetricsCallback`; listeners run in the calling thread."""
        self._call_listeners.append(listener)

    def close(self) -> None:
        """Close the worker if this function created it (a model loaded from a path)."""
        if self._owns_worker:
            self.worker.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.__name__!r}, model={self.model_info.model!r}, kind={self.kind!r})"


class RewardFunction(_RewardFunctionBase):
    """A reward model as a TRL reward function: ``reward_funcs=[RewardFunction("path/to/rm")]``.

    Works with ``trl.GRPOTrainer`` and ``trl.RLOOTrainer`` in both dataset formats. TRL logs its rewards
    as ``rewards/<name>/mean``; latency, tokens scored and the fraction of unscored completions go through
    TRL's ``log_metric`` as ``rewards/<name>/latency_s``, ``.../tokens_scored`` and ``.../unscored_frac``.

    Args:
        source: A model path or hub id (loaded into a :class:`~rlhf_rewards.workers.colocated.ColocatedWorker`
            with ``llm_kwargs``), an :class:`~rlhf_rewards.LLM`, or any
            :class:`~rlhf_rewards.workers.base.RewardWorker` (remote server, Ray pool...).
        name, kind, lora, chat_template, step_separator, step_aggregation, reward_offset, reward_scale,
        step_tag, keep_step_separator, step_score_column, score_column, use_activation, truncate, llm_kwargs:
            See :class:`~rlhf_rewards.reward.config.RewardFunctionConfig`.

    Calling it: ``rf(prompts, completions, completion_ids=None, **kwargs) -> list[float | None]``, one value
    per completion; TRL's extra keyword arguments (``trainer_state``, dataset columns...) are accepted and
    ignored, except ``log_metric``. ``return_steps=True`` (process rewards, direct calls) returns
    ``(rewards, steps)`` where ``steps[i]`` is the list of raw step scores of completion ``i`` (``None`` for
    a step cut off by truncation, and ``steps[i]`` is ``None`` when the completion got no reward).

    Reward ``None`` means "not applicable" to TRL: it is given, with an :class:`UnscorableCompletionWarning`,
    for a completion the model cannot score (over ``max_model_len`` with ``truncate=False``, non-finite
    model output, step tags lost in tokenization). Every other failure raises a
    :class:`RewardFunctionError` (a :class:`RewardInputError`, also a ``ValueError``, for bad inputs) whose
    message names the function and its model.
    """

    def __call__(
        self,
        prompts: Sequence[Any],
        completions: Sequence[Any],
        completion_ids: Sequence[Sequence[int]] | None = None,
        *,
        return_steps: bool = False,
        **kwargs: Any,
    ) -> Any:
        self._check_return_steps(return_steps)
        started = time.perf_counter()
        try:
            result = self._run_sync(self._plan(prompts, completions))
        except Exception as exc:  # noqa: BLE001 - re-raised with the function's name
            raise self._wrap(exc) from exc
        return self._finish(result, started, return_steps, kwargs)

    def score_token_ids(self, token_ids: Sequence[Sequence[int]], **kwargs: Any) -> list[float | None]:
        """Score sequences given as token ids of the reward model's vocabulary (outcome and token kinds).

        The ids are scored as they are (no special tokens added; a token RM's reward token is appended).
        Used by :func:`~rlhf_rewards.reward.trl_compat.as_trl_reward_model`, whose policy shares the tokenizer.
        """
        started = time.perf_counter()
        try:
            result = self._run_sync(self._plan_token_ids(token_ids))
        except Exception as exc:  # noqa: BLE001 - re-raised with the function's name
            raise self._wrap(exc) from exc
        return self._finish(result, started, False, kwargs)

    def _run_sync(self, plan: _Plan) -> ScoreResult:
        result: Any = None
        while True:
            try:
                request = plan.send(result)
            except StopIteration as stop:
                return stop.value
            try:
                result = self._do(request)
            except Exception as exc:  # noqa: BLE001 - the plan decides (catch=True) or it propagates
                if not (isinstance(request, _Encode) and request.catch):
                    raise
                result = exc

    def _do(self, request: Any) -> Any:
        if isinstance(request, _Render):
            return self.worker.render_chat(request.conversations, chat_template=request.chat_template)
        return self.worker.encode(
            request.prompts,
            request.pooling_params,
            pooling_task=request.pooling_task,
            lora_request=request.lora_request,
            truncate_prompt_tokens=request.truncate_prompt_tokens,
        )


class AsyncRewardFunction(_RewardFunctionBase):
    """:class:`RewardFunction` with ``async def __call__``: TRL runs it concurrently with other async reward
    functions on its event loop, and the worker's ``aencode`` does the scoring (a thread for a colocated
    model, non-blocking I/O for a remote one). Same arguments and results as :class:`RewardFunction`.
    """

    async def __call__(
        self,
        prompts: Sequence[Any],
        completions: Sequence[Any],
        completion_ids: Sequence[Sequence[int]] | None = None,
        *,
        return_steps: bool = False,
        **kwargs: Any,
    ) -> Any:
        self._check_return_steps(return_steps)
        started = time.perf_counter()
        try:
            result = await self._run_async(self._plan(prompts, completions))
        except Exception as exc:  # noqa: BLE001 - re-raised with the function's name
            raise self._wrap(exc) from exc
        return self._finish(result, started, return_steps, kwargs)

    async def _run_async(self, plan: _Plan) -> ScoreResult:
        result: Any = None
        while True:
            try:
                request = plan.send(result)
            except StopIteration as stop:
                return stop.value
            try:
                result = await self._ado(request)
            except Exception as exc:  # noqa: BLE001 - the plan decides (catch=True) or it propagates
                if not (isinstance(request, _Encode) and request.catch):
                    raise
                result = exc

    async def _ado(self, request: Any) -> Any:
        if isinstance(request, _Render):
            return await asyncio.to_thread(
                self.worker.render_chat, request.conversations, chat_template=request.chat_template
            )
        return await self.worker.aencode(
            request.prompts,
            request.pooling_params,
            pooling_task=request.pooling_task,
            lora_request=request.lora_request,
            truncate_prompt_tokens=request.truncate_prompt_tokens,
        )


def _make_worker(source: Any, config: RewardFunctionConfig) -> tuple[RewardWorker, bool]:
    """The worker for ``source`` and whether this function owns it."""
    if isinstance(source, RewardWorker):
        if config.llm_kwargs:
            raise ValueError("llm_kwargs only apply when the source is a model path or id, not a worker.")
        return source, False
    from rlhf_rewards.entrypoints.llm import LLM
    from rlhf_rewards.workers.colocated import ColocatedWorker

    if isinstance(source, LLM):
        if config.llm_kwargs:
            raise ValueError("llm_kwargs only apply when the source is a model path or id, not an LLM.")
        return ColocatedWorker(source), False
    if isinstance(source, (str, os.PathLike)) and str(source):
        kwargs = dict(config.llm_kwargs)
        if config.lora is not None:
            kwargs.setdefault("enable_lora", True)
        return ColocatedWorker(str(source), **kwargs), True
    raise TypeError(
        f"source must be a model path or hub id, an rlhf_rewards.LLM or a RewardWorker, got {type(source).__name__}."
    )


def _default_name(info: ModelInfo, config: RewardFunctionConfig) -> str:
    if config.lora is not None:
        return config.lora.lora_name  # type: ignore[union-attr]
    return Path(info.model.rstrip("/")).name or info.model


__all__ = [
    "AsyncRewardFunction",
    "RewardFunction",
    "RewardFunctionError",
    "RewardInputError",
    "ScoreResult",
    "UnscorableCompletionWarning",
]
