"""The scoring plan: what a reward function does with one batch, as a generator of worker calls.

The plan turns TRL's prompts and completions into reward-model inputs (formatted, step-tagged, with the
reward token appended), asks for them in ONE ``encode`` request, re-asks, one by one and untruncated, for
texts that came back exactly ``max_model_len`` tokens long (to tell a fitting input from an over-long
one), and hands the outputs to the kind's readout. It yields :class:`~rlhf_rewards.reward.calls.RenderChat`
and :class:`~rlhf_rewards.reward.calls.EncodeBatch` requests and never calls the worker itself, so the same
plan serves ``RewardFunction`` (blocking) and ``AsyncRewardFunction`` (asyncio): see
:mod:`rlhf_rewards.reward.calls`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import Any

from rlhf_rewards.contract import ModelInfo
from rlhf_rewards.reward.calls import EncodeBatch, Plan, RenderChat
from rlhf_rewards.reward.config import RewardFunctionConfig
from rlhf_rewards.reward.errors import RewardFunctionError
from rlhf_rewards.reward.formatting import conversation, pair_format, require_chat_template, standard_text
from rlhf_rewards.reward.kinds import pooling_params_for, pooling_task_of
from rlhf_rewards.reward.readout import Item, ScoreResult, read_scores, readout_for
from rlhf_rewards.reward.steps import TaggedText, tag_completion

# Renders the first message's content verbatim: lets a worker tokenize a literal text (a reward token)
# through ``render_chat`` alone, without the special tokens a plain ``encode`` of a string would add.
VERBATIM_TEMPLATE = "{{ messages[0]['content'] }}"


class PairPlan(ABC):
    """What every plan shares: TRL's call (:meth:`completions`) checked once, and the count of the outputs."""

    def completions(
        self, prompts: Sequence[Any], completions: Sequence[Any], owner: str
    ) -> Plan[ScoreResult]:
        """Score ``prompt + completion`` pairs in either of TRL's dataset formats."""
        fmt = pair_format(prompts, completions, owner)
        if fmt is None:
            return ScoreResult([], [], 0, {})
        return (yield from self._pairs(fmt, prompts, completions, owner))

    @abstractmethod
    def token_ids(self, token_ids: Sequence[Sequence[int]], owner: str) -> Plan[ScoreResult]:
        """Score inputs that are already token ids of the model's vocabulary."""

    @abstractmethod
    def _pairs(
        self, fmt: str, prompts: Sequence[Any], completions: Sequence[Any], owner: str
    ) -> Plan[ScoreResult]:
        """Score a non-empty call in format ``fmt`` (``"standard"`` or ``"conversational"``)."""

    @staticmethod
    def _check_count(outputs: Sequence[Any], expected: int, owner: str) -> None:
        """Raise a ``RewardFunctionError`` unless the worker returned one output per input."""
        if len(outputs) != expected:
            raise RewardFunctionError(
                f"{owner}: the worker returned {len(outputs)} outputs for {expected} inputs."
            )


class ScoringPlan(PairPlan):
    """The plans of one reward-model function: :meth:`completions` (TRL's call) and :meth:`token_ids`.

    Args:
        config: The function's settings.
        info: The model's facts (kept by reference and read at each call).
        kind: The resolved reward kind.
        step_tag: Process rewards: the text inserted after each step.
    """

    def __init__(
        self, config: RewardFunctionConfig, info: ModelInfo, kind: str, step_tag: str | None
    ) -> None:
        self.config = config
        self.info = info
        self.kind = kind
        self.step_tag = step_tag
        self.pooling_task = pooling_task_of(kind)
        self.readout = readout_for(kind, config, info, step_tag)
        self._reward_token_ids: list[int] | None = None  # found once, on first use

    # ------------------------------------------------------------------ the two entry plans
    def _pairs(
        self, fmt: str, prompts: Sequence[Any], completions: Sequence[Any], owner: str
    ) -> Plan[ScoreResult]:
        n = len(completions)
        unscored: dict[int, str] = {}
        items: list[Item] = []
        if fmt == "conversational":
            require_chat_template(
                self.config.chat_template, self.info.has_chat_template, owner, "reward model"
            )
            tag = self._tagger() if self.kind == "process" else None
            built = [conversation(p, c, tag) for p, c in zip(prompts, completions, strict=True)]
            ids_list = yield RenderChat([m for m, _ in built], self.config.chat_template)
            suffix = yield from self._suffix_ids()
            for i, ((_, n_steps), ids) in enumerate(zip(built, ids_list, strict=True)):
                self._add_ids(items, unscored, i, list(ids) + suffix, n_steps if tag else None)
        else:
            suffix_text = (self.info.reward_token or "") if self.kind == "token" else ""
            for i, (p, c) in enumerate(zip(prompts, completions, strict=True)):
                n_steps = None
                if self.kind == "process":
                    tagged = self._tagger()(c)
                    c, n_steps = tagged.text, tagged.n_steps
                items.append(Item(i, standard_text(p, c, suffix_text), None, n_steps))
        return (yield from self._score_items(n, items, unscored, owner))

    def token_ids(self, token_ids: Sequence[Sequence[int]], owner: str) -> Plan[ScoreResult]:
        """Score inputs that are already token ids of the reward model's vocabulary (outcome/token kinds)."""
        if self.kind == "process":
            raise ValueError(f"{owner}: token-id inputs cannot be split into steps; use text inputs.")
        suffix = yield from self._suffix_ids()
        items: list[Item] = []
        unscored: dict[int, str] = {}
        for i, ids in enumerate(token_ids):
            self._add_ids(items, unscored, i, [int(t) for t in ids] + suffix, None)
        return (yield from self._score_items(len(token_ids), items, unscored, owner))

    # ------------------------------------------------------------------ shared steps
    def _add_ids(
        self, items: list[Item], unscored: dict[int, str], i: int, ids: list[int], n_steps: int | None
    ) -> None:
        """Queue token-id input ``i``, or mark it unscored when it is over the limit and may not be cut."""
        max_len = self.info.max_model_len
        if len(ids) > max_len and not self.config.truncate:
            unscored[i] = f"{len(ids)} tokens, over max_model_len={max_len} (truncate=False)"
            return
        items.append(Item(i, {"prompt_token_ids": ids}, len(ids), n_steps))

    def _score_items(
        self, n: int, items: list[Item], unscored: dict[int, str], owner: str
    ) -> Plan[ScoreResult]:
        """Encode ``items`` in one request (plus re-checks of texts at the length limit) and read the scores."""
        max_len = self.info.max_model_len
        outputs: dict[int, Any] = {}
        if items:
            # -1 keeps the last max_model_len tokens; inputs that fit are unchanged, so one request serves all.
            batch = yield self._encode([it.prompt for it in items], truncate=-1)
            self._check_count(batch, len(items), owner)
            for it, out in zip(items, batch, strict=True):
                outputs[it.index] = out
            if not self.config.truncate:
                # A text that came back max_model_len long may have been cut: ask again, untruncated.
                for it in items:
                    if it.n_tokens is None and len(outputs[it.index].prompt_token_ids) >= max_len:
                        single = yield self._encode([it.prompt], truncate=None, catch=True)
                        if isinstance(single, Exception):
                            del outputs[it.index]
                            unscored[it.index] = (
                                f"over max_model_len={max_len} (truncate=False): {str(single).rstrip('.')}"
                            )
                        else:
                            outputs[it.index] = single[0]
        return read_scores(self.readout, n, items, outputs, unscored, owner)

    def _encode(self, prompts: list[Any], *, truncate: int | None, catch: bool = False) -> EncodeBatch:
        params = pooling_params_for(self.kind, self.config)
        return EncodeBatch(
            prompts,
            params,
            self.pooling_task,
            self.config.lora,
            truncate,
            catch,
            add_special_tokens=self.config.add_special_tokens,
        )

    def _tagger(self) -> Callable[[str], TaggedText]:
        cfg, tag = self.config, self.step_tag
        assert tag is not None
        return lambda text: tag_completion(
            text, step_tag=tag, separator=cfg.step_separator, keep_separator=cfg.keep_step_separator
        )

    def _suffix_ids(self) -> Plan[list[int]]:
        """Token rewards: the ids of the model's reward token (appended to token-id inputs), else none."""
        if self.kind != "token" or not self.info.reward_token:
            return []
        if self._reward_token_ids is None:
            token_id = getattr(self.info, "reward_token_id", None)
            if token_id is not None:
                self._reward_token_ids = [int(token_id)]
            else:
                (ids,) = yield RenderChat(
                    [[{"role": "user", "content": self.info.reward_token}]], VERBATIM_TEMPLATE
                )
                self._reward_token_ids = list(ids)
        return list(self._reward_token_ids)


__all__ = ["VERBATIM_TEMPLATE", "PairPlan", "ScoringPlan"]
