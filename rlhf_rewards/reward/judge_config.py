"""``JudgeConfig``: how a judge reward function asks its causal LM (see :mod:`rlhf_rewards.reward.judge`)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from rlhf_rewards.checks import check_bool, is_int, is_number


@dataclass
class JudgeConfig:
    """How a judge model is asked (``RewardFunctionConfig(judge=...)``, or a dict of these fields).

    Args:
        template: ``str.format`` template holding ``{completion}`` (and usually ``{prompt}``), ending where the
            judge's answer starts, e.g. ``"Question: {prompt}\\nAnswer: {completion}\\nIs the answer correct
            (Yes or No)? "``.
        labels: The answer tokens, as texts (each must be ONE token of the judge's vocabulary; mind a leading
            space) or token ids. The reward reads ``labels[0]``. Default ``("Yes", "No")``.
        label_values: Optional value per label; the reward is then the expected value over the labels.
        apply_softmax: ``True``: probabilities over the labels only (they sum to 1); ``False``: the model's
            probabilities over its whole vocabulary.
        add_special_tokens: Standard format: add the judge tokenizer's special tokens (BOS) before the input.
        system_prompt: Conversational format: a system message before the question.
    """

    template: str
    labels: Sequence[str | int] = ("Yes", "No")
    label_values: Sequence[float] | None = None
    apply_softmax: bool = True
    add_special_tokens: bool = True
    system_prompt: str | None = None
    _placeholders: tuple[str, ...] = field(default=(), init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.template, str) or "{completion}" not in self.template:
            raise ValueError(
                f"judge template must be a string holding '{{completion}}', got {self.template!r}."
            )
        try:
            self.template.format(prompt="", completion="")
        except (KeyError, IndexError, ValueError) as exc:
            raise ValueError(
                f"judge template may only use {{prompt}} and {{completion}} (double other braces): {exc!r}."
            ) from None
        if isinstance(self.labels, (str, bytes)) or not self.labels:
            raise ValueError(
                f"judge labels must be a non-empty list of texts or token ids, got {self.labels!r}."
            )
        for label in self.labels:
            if not (is_int(label) or (isinstance(label, str) and label)):
                raise ValueError(f"judge labels must be non-empty texts or token ids, got {label!r}.")
        self.labels = tuple(self.labels)
        if self.label_values is not None:
            values = list(self.label_values)
            if len(values) != len(self.labels) or not all(is_number(v, finite=True) for v in values):
                raise ValueError(
                    f"judge label_values must be one finite number per label ({len(self.labels)}), "
                    f"got {self.label_values!r}."
                )
            self.label_values = tuple(float(v) for v in values)
        for flag in ("apply_softmax", "add_special_tokens"):
            check_bool(f"judge {flag}", getattr(self, flag))
        if self.system_prompt is not None and not isinstance(self.system_prompt, str):
            raise ValueError(f"judge system_prompt must be a string or None, got {self.system_prompt!r}.")

    @classmethod
    def from_any(cls, value: JudgeConfig | dict[str, Any] | str) -> JudgeConfig:
        """A ``JudgeConfig``, a dict of its fields, or a template string."""
        if isinstance(value, cls):
            return value
        if isinstance(value, str):
            return cls(template=value)
        if isinstance(value, dict):
            return cls(**value)
        raise ValueError(
            f"judge must be a JudgeConfig, a dict of its fields or a template string, got {value!r}."
        )


__all__ = ["JudgeConfig"]
