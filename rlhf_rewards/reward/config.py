"""``RewardFunctionConfig``: the validated settings of a reward function, and keyword overrides of it."""

from __future__ import annotations

import dataclasses
import os
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rlhf_rewards.checks import check_bool, check_choice, check_int, check_number
from rlhf_rewards.lora.request import LoRARequest
from rlhf_rewards.reward.aggregation import StepAggregation, check_aggregation
from rlhf_rewards.reward.judge_config import JudgeConfig

KINDS = ("outcome", "token", "process", "judge")


@dataclass
class RewardFunctionConfig:
    r"""Configuration of a [`RewardFunction`] / [`AsyncRewardFunction`]: how a reward model's output
    becomes one reward per completion.

    Pass it as ``RewardFunction(source, config)``; keyword arguments of ``RewardFunction`` override its
    fields (``RewardFunction(source, config, reward_scale=2.0)``), on a copy. Every field is checked when
    the config is built: a bad value raises a ``ValueError`` naming the field and what it accepts.

    Parameters:
        > Naming and model

        name (`str` or `None`, *optional*, defaults to `None`):
            The name TRL logs (``rewards/<name>/mean``). `None`: the adapter's name when ``lora`` is set,
            else the last path component of the model's name.
        kind (`str` or `None`, *optional*, defaults to `None`):
            How the model is read: ``"outcome"`` (sequence classifier, score at the last token),
            ``"token"`` (token reward model, score at the final token) or ``"process"`` (step rewards at
            step tags). `None`: the model's own kind, from its architecture and pooler config.
        lora (`LoRARequest`, `str`, `os.PathLike` or `None`, *optional*, defaults to `None`):
            The adapter to score with: a ``LoRARequest``, or a local adapter folder / served adapter name
            (turned into a ``LoRARequest`` with an id stable across processes). `None`: the base model.
        chat_template (`str` or `None`, *optional*, defaults to `None`):
            Jinja template used instead of the reward model's own for conversational input. `None`: the
            reward model's tokenizer template (never the policy's).
        add_special_tokens (`bool`, *optional*, defaults to `True`):
            Standard (string) format: tokenize ``prompt + completion`` with the reward model's special tokens
            (Llama-3's ``<|begin_of_text|>`` first), as a model card's ``tokenizer(text)`` does and as TRL's
            own `RewardTrainer` tokenized the texts the model was trained on. `False`: tokenize the text
            alone, which reproduces the built-in reward-model path of TRL's `GRPOTrainer` and `RLOOTrainer`
            (``reward_funcs="path/to/rm"``: ``tokenizer(texts, add_special_tokens=False)``). On a BOS
            tokenizer the two give different rewards. Conversational input is not affected: the chat
            template writes its own special tokens (a BOS included) and none are added to it.

        > Process rewards (step tags)

        step_separator (`str`, *optional*, defaults to `"\n\n"`):
            The text between the steps of a completion.
        step_aggregation (`str` or `Callable[[list[float]], float]`, *optional*, defaults to `"min"`):
            How step scores become one reward: ``"min"``, ``"last"``, ``"mean"``, ``"prod"`` or a callable.
        step_tag (`str` or `None`, *optional*, defaults to `None`):
            The text inserted after each step. `None`: the text of the model's ``step_tag_id``. Give it
            when the tag needs a leading space (math-shepherd: ``" ки"``).
        keep_step_separator (`bool`, *optional*, defaults to `False`):
            Keep the separator between tagged steps (math-shepherd's ``"step ки\nstep ки"``) instead of
            replacing it by the tag (Qwen2.5-Math-PRM's).
        step_score_column (`int` or `None`, *optional*, defaults to `None`):
            The column of the ``[n_steps, k]`` STEP output that is the step reward. `None`: column 0 when
            the pooler config sets ``returned_token_ids`` (the first id is the "good" token, as in
            math-shepherd's ``[good, bad]``), column 1 for a two-label head without them
            (Qwen2.5-Math-PRM: label 1 is "correct"), column 0 for a one-column output (see
            [`~rlhf_rewards.pooling.step.step_score_column`]).

        > Reading the score

        score_column (`int`, *optional*, defaults to `0`):
            Outcome and token rewards: which output column is the reward (TRL reads ``logits[:, 0]``).
        use_activation (`bool` or `None`, *optional*, defaults to `None`):
            Apply the task's activation. `None`: raw logits for outcome and token rewards (as TRL's
            built-in reward models), the model's configured activation (softmax probabilities) for
            process rewards.
        reward_offset (`float`, *optional*, defaults to `0.0`):
            Added after scaling: ``reward = reward_scale * score + reward_offset``.
        reward_scale (`float`, *optional*, defaults to `1.0`):
            Multiplies the (aggregated) score.
        truncate (`bool`, *optional*, defaults to `False`):
            Keep the last ``max_model_len`` tokens of an over-long input (the end, where the score is
            read). `False`: an over-long completion gets reward `None` and a warning.

        > Loading

        llm_kwargs (`dict[str, Any]`, *optional*, defaults to `{}`):
            Keyword arguments for ``LLM`` when the source is a path or hub id (e.g. ``device``, ``dtype``,
            ``pooler_config``). `None` is read as `{}`; the dict is copied.

        > Judges (kind ``"judge"``)

        judge (`JudgeConfig`, `dict`, `str` or `None`, *optional*, defaults to `None`):
            Read a causal LM as a judge: the template the prompt and completion go into and the label tokens
            whose next-token probability is the reward (``JudgeConfig(template=..., labels=("Yes", "No"))``,
            a dict of its fields, or just the template). Setting it makes ``kind`` ``"judge"``; see
            :mod:`rlhf_rewards.reward.judge`.
    """

    name: str | None = None
    kind: str | None = None
    lora: LoRARequest | str | os.PathLike[str] | None = None
    chat_template: str | None = None
    add_special_tokens: bool = True
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
    judge: JudgeConfig | dict[str, Any] | str | None = None

    def __post_init__(self) -> None:
        for name in ("name", "chat_template", "step_tag"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, str) or not value):
                raise ValueError(f"{name} must be a non-empty string or None, got {value!r}.")
        if self.kind is not None:
            check_choice("kind", self.kind, KINDS, otherwise="leave it None to infer it")
        if self.lora is not None and not isinstance(self.lora, LoRARequest):
            if not isinstance(self.lora, (str, os.PathLike)) or not str(self.lora):
                raise ValueError(
                    f"lora must be a LoRARequest, an adapter path or name, or None, got {self.lora!r}."
                )
            self.lora = lora_request_from(str(self.lora))
        if not isinstance(self.step_separator, str) or not self.step_separator:
            raise ValueError(f"step_separator must be a non-empty string, got {self.step_separator!r}.")
        self.step_aggregation = check_aggregation(self.step_aggregation)
        for flag in ("add_special_tokens", "keep_step_separator", "truncate"):
            check_bool(flag, getattr(self, flag))
        if self.use_activation is not None and not isinstance(self.use_activation, bool):
            raise ValueError(f"use_activation must be True, False or None, got {self.use_activation!r}.")
        for col, optional in (("step_score_column", True), ("score_column", False)):
            value = getattr(self, col)
            if value is None and optional:
                continue
            allowed = "a non-negative integer or None" if optional else "a non-negative integer"
            check_int(col, value, minimum=0, expected=allowed)
        for num in ("reward_offset", "reward_scale"):
            setattr(self, num, float(check_number(num, getattr(self, num), finite=True)))
        if self.judge is not None:
            self.judge = JudgeConfig.from_any(self.judge)
            if self.kind is None:
                self.kind = "judge"
        if self.kind == "judge" and self.judge is None:
            raise ValueError(
                "kind='judge' needs judge=JudgeConfig(template=..., labels=...) (or a template string)."
            )
        if self.judge is not None and self.kind != "judge":
            raise ValueError(
                f"judge=... reads the model as a judge, but kind={self.kind!r}; leave kind None."
            )
        if self.llm_kwargs is None:
            self.llm_kwargs = {}
        if not isinstance(self.llm_kwargs, Mapping):
            raise ValueError(f"llm_kwargs must be a dict or None, got {type(self.llm_kwargs).__name__}.")
        self.llm_kwargs = dict(self.llm_kwargs)  # never shared with the caller's dict

    @classmethod
    def field_names(cls) -> list[str]:
        """The names of the settings, in declaration order."""
        return [f.name for f in dataclasses.fields(cls)]

    def replace(self, **changes: Any) -> RewardFunctionConfig:
        """A validated copy with ``changes`` applied; an unknown name is a ``TypeError`` listing the fields."""
        check_field_names(changes, "RewardFunctionConfig.replace()")
        return dataclasses.replace(self, **changes)


def check_field_names(settings: Mapping[str, Any], owner: str) -> None:
    """Raise ``TypeError`` naming every key of ``settings`` that is not a ``RewardFunctionConfig`` field."""
    valid = RewardFunctionConfig.field_names()
    unknown = sorted(set(settings) - set(valid))
    if unknown:
        raise TypeError(
            f"{owner} got unexpected keyword argument(s) {unknown}; the valid settings are the "
            f"RewardFunctionConfig fields {valid}."
        )


def resolve_config(
    config: RewardFunctionConfig | None, overrides: Mapping[str, Any], owner: str = "RewardFunction()"
) -> RewardFunctionConfig:
    """The config a reward function stores: ``config`` (or the defaults) with ``overrides`` applied, as a copy.

    The caller's config is never modified, so one config can back several functions with different
    overrides. ``overrides`` are the keyword arguments ``RewardFunction`` accepted before configs existed.
    """
    check_field_names(overrides, owner)
    if config is None:
        return RewardFunctionConfig(**overrides)
    if not isinstance(config, RewardFunctionConfig):
        raise TypeError(
            f"{owner}: config must be a RewardFunctionConfig or None, got {type(config).__name__}."
        )
    return dataclasses.replace(config, **overrides)


def lora_request_from(adapter: str) -> LoRARequest:
    """A ``LoRARequest`` for an adapter folder or served adapter name, with an id stable across processes."""
    name = Path(adapter).name or adapter
    return LoRARequest(
        lora_name=name, lora_int_id=zlib.crc32(adapter.encode()) % (2**31 - 1) + 1, lora_path=adapter
    )


__all__ = ["KINDS", "RewardFunctionConfig", "check_field_names", "lora_request_from", "resolve_config"]
