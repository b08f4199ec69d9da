"""``RewardFunctionConfig``: the validated settings of a reward function."""

from __future__ import annotations

import math
import os
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rlhf_rewards.lora.request import LoRARequest
from rlhf_rewards.reward.aggregation import StepAggregation, check_aggregation

KINDS = ("outcome", "token", "process")


@dataclass
class RewardFunctionConfig:
    """How a reward model's output becomes one reward per completion.

    Args:
        name: The name TRL logs (``rewards/<name>/mean``). Default ``None``: the adapter's name when ``lora``
            is set, else the last path component of the model's name.
        kind: ``"outcome"`` (sequence classifier, score at the last token), ``"token"`` (token reward model,
            score at the final token) or ``"process"`` (step rewards at step tags). Default ``None``: the
            model's own kind, from its architecture and pooler config.
        lora: A ``LoRARequest``, or a local adapter folder / served adapter name (turned into one). Default
            ``None``: the base model.
        chat_template: Jinja template used instead of the reward model's own for conversational input.
            Default ``None``: the reward model's tokenizer template (never the policy's).
        step_separator: Process rewards: the text between steps of a completion. Default ``"\\n\\n"``.
        step_aggregation: Process rewards: ``"min"``, ``"last"``, ``"mean"``, ``"prod"`` or a callable
            ``list[float] -> float``. Default ``"min"``.
        step_tag: Process rewards: the text inserted after each step. Default ``None``: the text of the
            model's ``step_tag_id``. Give it when the tag needs a leading space (math-shepherd: ``" ки"``).
        keep_step_separator: Process rewards: keep the separator between tagged steps (math-shepherd's
            ``"step ки\\nstep ки"``) instead of replacing it by the tag (Qwen2.5-Math-PRM's). Default False.
        step_score_column: Process rewards: the column of the ``[n_steps, k]`` STEP output that is the step
            reward. Default ``None``: column 0 when the pooler config sets ``returned_token_ids`` (the first
            id is the "good" token, as in math-shepherd's ``[good, bad]``), column 1 for a two-label head
            without them (Qwen2.5-Math-PRM: label 1 is "correct"), column 0 for a one-column output.
        score_column: Outcome and token rewards: which output column is the reward. Default 0 (TRL reads
            ``logits[:, 0]``).
        use_activation: Apply the task's activation. Default ``None``: raw logits for outcome and token
            rewards (as TRL's built-in reward models), the model's configured activation (softmax
            probabilities) for process rewards.
        reward_offset: Added after scaling: ``reward = reward_scale * score + reward_offset``. Default 0.0.
        reward_scale: Multiplies the (aggregated) score. Default 1.0.
        truncate: Keep the last ``max_model_len`` tokens of an over-long input (the end, where the score is
            read). Default False: an over-long completion gets reward ``None`` and a warning.
        llm_kwargs: Keyword arguments for ``LLM`` when the source is a path or hub id (e.g. ``device``,
            ``dtype``, ``pooler_config``). Default ``None``.
    """

    name: str | None = None
    kind: str | None = None
    lora: LoRARequest | str | os.PathLike[str] | None = None
    chat_template: str | None = None
    step_separator: str = "\n\n"
    step_aggregation: StepAggregation = "min"
    step_tag: str | None = None
    keep_step_separator: bool = False
    step_score_column: int | None = None
    score_column: int = 0
    use_activation: bool | None = None
    reward_offset: float = 0.0
    reward_scale: float = 1.0
    truncate: bool = False
    llm_kwargs: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.name is not None and (not isinstance(self.name, str) or not self.name):
            raise ValueError(f"name must be a non-empty string, got {self.name!r}.")
        if self.kind is not None and self.kind not in KINDS:
            raise ValueError(f"kind={self.kind!r}; choose one of {list(KINDS)} or leave it None to infer it.")
        if self.lora is not None and not isinstance(self.lora, LoRARequest):
            if not isinstance(self.lora, (str, os.PathLike)) or not str(self.lora):
                raise ValueError(f"lora must be a LoRARequest, an adapter path or name, got {self.lora!r}.")
            self.lora = lora_request_from(str(self.lora))
        if self.chat_template is not None and (not isinstance(self.chat_template, str) or not self.chat_template):
            raise ValueError("chat_template must be a non-empty Jinja template string.")
        if not isinstance(self.step_separator, str) or not self.step_separator:
            raise ValueError(f"step_separator must be a non-empty string, got {self.step_separator!r}.")
        self.step_aggregation = check_aggregation(self.step_aggregation)
        if self.step_tag is not None and (not isinstance(self.step_tag, str) or not self.step_tag):
            raise ValueError(f"step_tag must be a non-empty string, got {self.step_tag!r}.")
        for flag in ("keep_step_separator", "truncate"):
            if not isinstance(getattr(self, flag), bool):
                raise ValueError(f"{flag} must be True or False, got {getattr(self, flag)!r}.")
        if self.use_activation is not None and not isinstance(self.use_activation, bool):
            raise ValueError(f"use_activation must be True, False or None, got {self.use_activation!r}.")
        for col in ("step_score_column", "score_column"):
            value = getattr(self, col)
            if value is None and col == "step_score_column":
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{col} must be a non-negative integer, got {value!r}.")
        for num in ("reward_offset", "reward_scale"):
            value = getattr(self, num)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"{num} must be a finite number, got {value!r}.")
            setattr(self, num, float(value))
        if self.llm_kwargs is None:
            self.llm_kwargs = {}
        if not isinstance(self.llm_kwargs, dict):
            raise ValueError(f"llm_kwargs must be a dict, got {type(self.llm_kwargs).__name__}.")


def lora_request_from(adapter: str) -> LoRARequest:
    """A ``LoRARequest`` for an adapter folder or served adapter name, with an id stable across processes."""
    name = Path(adapter).name or adapter
    return LoRARequest(lora_name=name, lora_int_id=zlib.crc32(adapter.encode()) % (2**31 - 1) + 1, lora_path=adapter)


__all__ = ["KINDS", "RewardFunctionConfig", "lora_request_from"]
