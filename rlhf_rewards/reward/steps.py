"""Splitting a completion into reasoning steps and inserting a process reward model's step tag.

The layout follows the model cards:

- Qwen2.5-Math-PRM: ``"<extra_0>".join(steps) + "<extra_0>"`` (the separator is replaced by the tag).
- math-shepherd: ``"Step 1: ... ки\\nStep 2: ... ки"`` (the tag ends each step and the separator stays):
  use ``keep_step_separator=True`` and ``step_tag=" ки"``.

Steps are stripped of surrounding whitespace and empty steps are dropped. A completion with no text
still gets one (empty) step, so the model scores it rather than skipping it. Any copy of the step tag
already inside the completion is removed first, so a policy cannot add rows to the PRM's output by
emitting the tag itself.
"""

from __future__ import annotations

from dataclasses import dataclass


def split_steps(text: str, separator: str) -> list[str]:
    """The non-empty, stripped steps of ``text`` split on ``separator`` (at least one, possibly ``""``)."""
    if not separator:
        raise ValueError("step_separator must be a non-empty string.")
    steps = [s.strip() for s in text.split(separator)]
    steps = [s for s in steps if s]
    return steps or [""]


def remove_step_tags(text: str, step_tag: str) -> str:
    """``text`` without any occurrence of ``step_tag``."""
    return text.replace(step_tag, "") if step_tag else text


def tag_steps(steps: list[str], step_tag: str, separator: str, keep_separator: bool = False) -> str:
    """Join ``steps`` with ``step_tag`` after each one (and ``separator`` between them if kept)."""
    joiner = separator if keep_separator else ""
    return joiner.join(step + step_tag for step in steps)


@dataclass(frozen=True)
class TaggedText:
    """A completion with step tags inserted, and how many steps (tags) it holds."""

    text: str
    n_steps: int


def tag_completion(text: str, *, step_tag: str, separator: str, keep_separator: bool = False) -> TaggedText:
    """Split ``text`` into steps and tag each one (see the module docstring for the layout)."""
    if not step_tag:
        raise ValueError("the step tag is empty; pass step_tag=... or configure the model's step_tag_id.")
    steps = split_steps(remove_step_tags(text, step_tag), separator)
    return TaggedText(tag_steps(steps, step_tag, separator, keep_separator), len(steps))


__all__ = ["TaggedText", "remove_step_tags", "split_steps", "tag_completion", "tag_steps"]
