"""Reading one reward per completion from the model's outputs, one readout per reward kind.

- :class:`OutcomeReadout`: a ``classify`` output ``[k]``; the reward is column ``score_column``.
- :class:`TokenReadout`: a ``token_classify`` output ``[n_tokens, k]``; the reward is the final token's
  ``score_column``.
- :class:`ProcessReadout`: a STEP output ``[n_steps, k]``; the step rewards are the column chosen by
  :func:`~rlhf_rewards.pooling.step.step_score_column`, aggregated with ``step_aggregation``.

:func:`read_scores` applies a readout to a batch and then ``reward_scale`` and ``reward_offset``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from rlhf_rewards.contract import ModelInfo
from rlhf_rewards.pooling.step import step_score_column
from rlhf_rewards.reward.aggregation import aggregate_steps
from rlhf_rewards.reward.config import RewardFunctionConfig
from rlhf_rewards.reward.errors import RewardFunctionError


@dataclass
class Item:
    """One completion sent to the model: its place in the batch, its prompt, and what is known of it."""

    index: int
    prompt: str | dict[str, Any]
    n_tokens: int | None  # known when the input is token ids
    n_steps: int | None  # process rewards: the number of step tags inserted


@dataclass
class ScoreResult:
    """What one call produced: a reward (or ``None``) per completion, step scores, and accounting."""

    rewards: list[float | None]
    steps: list[list[float | None] | None]
    tokens: int
    unscored: dict[int, str]


@dataclass
class Reading:
    """A readout's result for one item: a score (and step scores), or why it has none."""

    score: float | None = None
    steps: list[float | None] | None = None
    unscored: str | None = None
    rows: int | None = None  # STEP rows found (process rewards)


class Readout:
    """How one reward kind reads a score from an output tensor (``out.outputs.data``)."""

    def __init__(self, config: RewardFunctionConfig, info: ModelInfo, step_tag: str | None = None) -> None:
        self.config = config
        self.info = info  # the function's own ModelInfo, not a copy: read at each call
        self.step_tag = step_tag

    def read(self, item: Item, data: Any, n_prompt_tokens: int, owner: str) -> Reading:
        """The reading of one successful output ``data`` of an input of ``n_prompt_tokens`` tokens."""
        raise NotImplementedError

    def check_batch(self, readings: list[Reading], owner: str) -> None:
        """Raise when the batch as a whole shows a misconfiguration (nothing to check by default)."""

    def _column(self, row: Any, owner: str) -> float:
        col = self.config.score_column
        if col >= row.shape[-1]:
            raise RewardFunctionError(
                f"{owner}: score_column={col} but the model outputs {row.shape[-1]} column(s)."
            )
        return float(row[col])


class OutcomeReadout(Readout):
    """Sequence classifiers: the score is a column of the pooled output."""

    def read(self, item: Item, data: Any, n_prompt_tokens: int, owner: str) -> Reading:
        """The score column of the sequence output."""
        return Reading(self._column(data.reshape(-1), owner))


class TokenReadout(Readout):
    """Token reward models: the score is a column of the final token's output."""

    def read(self, item: Item, data: Any, n_prompt_tokens: int, owner: str) -> Reading:
        """The score column at the last prompt token of a ``[n_tokens, k]`` output."""
        if data.dim() != 2 or data.shape[0] == 0:
            raise RewardFunctionError(
                f"{owner}: expected a [n_tokens, k] token output, got {tuple(data.shape)}."
            )
        return Reading(self._column(data[-1], owner))


class ProcessReadout(Readout):
    """Process reward models: one row per step tag; the step rewards are aggregated into the score."""

    def column(self, k: int, owner: str) -> int:
        """The column of a ``[n_steps, k]`` output that holds the step reward (see ``step_score_column``)."""
        returned = self.info.pooler_configs.get("token_classify", {}).get("returned_token_ids")
        try:
            return step_score_column(k, returned_token_ids=returned, override=self.config.step_score_column)
        except ValueError as exc:
            raise RewardFunctionError(f"{owner}: {exc}") from None

    def read(self, item: Item, data: Any, n_prompt_tokens: int, owner: str) -> Reading:
        """One score per step tag, aggregated into the completion's reward."""
        assert item.n_steps is not None
        if data.dim() != 2:
            raise RewardFunctionError(
                f"{owner}: expected a [n_steps, k] STEP output, got {tuple(data.shape)}."
            )
        n_rows = int(data.shape[0])
        rows = data[:, self.column(int(data.shape[1]), owner)].tolist() if n_rows else []
        truncated = self.config.truncate and n_prompt_tokens >= self.info.max_model_len
        if n_rows >= item.n_steps:
            # Extra rows can only come before the completion (a tag inside the prompt or template).
            steps: list[float | None] = list(rows[n_rows - item.n_steps :])
        elif truncated and n_rows > 0:
            steps = [None] * (item.n_steps - n_rows) + list(rows)  # the first steps were cut off
        else:
            return Reading(
                unscored=f"found {n_rows} step tag(s) {self.step_tag!r} (id {self.info.step_tag_id}) in the "
                f"scored tokens for {item.n_steps} step(s)",
                rows=n_rows,
            )
        score = aggregate_steps([s for s in steps if s is not None], self.config.step_aggregation)
        return Reading(score, steps, rows=n_rows)

    def check_batch(self, readings: list[Reading], owner: str) -> None:
        """Refuse a batch in which no input held the step tag (a wrong tag id scores nothing)."""
        if readings and all(r.rows == 0 for r in readings):
            raise RewardFunctionError(
                f"{owner}: no scored input contained the step tag {self.step_tag!r} as token id "
                f"{self.info.step_tag_id}. The tag text must tokenize to step_tag_id: pass step_tag=... "
                "(e.g. with a leading space) or fix the pooler config's step_tag_id."
            )


READOUTS: dict[str, type[Readout]] = {
    "outcome": OutcomeReadout,
    "token": TokenReadout,
    "process": ProcessReadout,
}


def readout_for(kind: str, config: RewardFunctionConfig, info: ModelInfo, step_tag: str | None) -> Readout:
    """The readout of reward kind ``kind`` (``outcome``, ``token`` or ``process``)."""
    return READOUTS[kind](config, info, step_tag)


def read_scores(
    readout: Readout, n: int, items: list[Item], outputs: dict[int, Any], unscored: dict[int, str], owner: str
) -> ScoreResult:
    """Rewards of a batch of ``n`` completions: ``items`` that were encoded have an entry in ``outputs``;
    the others are already in ``unscored`` with the reason."""
    cfg = readout.config
    rewards: list[float | None] = [None] * n
    steps: list[list[float | None] | None] = [None] * n
    tokens = 0
    readings: list[Reading] = []
    for it in items:
        out = outputs.get(it.index)
        if out is None:
            continue
        tokens += len(out.prompt_token_ids)
        if out.error:
            unscored[it.index] = out.error
            continue
        reading = readout.read(it, out.outputs.data, len(out.prompt_token_ids), owner)
        readings.append(reading)
        if reading.unscored is not None:
            unscored[it.index] = reading.unscored
            continue
        assert reading.score is not None
        steps[it.index] = reading.steps
        rewards[it.index] = cfg.reward_scale * reading.score + cfg.reward_offset
    readout.check_batch(readings, owner)
    return ScoreResult(rewards, steps, tokens, unscored)


__all__ = [
    "READOUTS",
    "Item",
    "OutcomeReadout",
    "ProcessReadout",
    "Reading",
    "Readout",
    "ScoreResult",
    "TokenReadout",
    "read_scores",
    "readout_for",
]
