"""TRL's two dataset formats turned into reward-model inputs.

- **standard**: prompts and completions are strings; the input is the text ``prompt + completion``, which
  the worker tokenizes with the reward model's tokenizer (special tokens added, e.g. a BOS).
- **conversational**: prompts and completions are lists of ``{"role", "content"}`` messages; the input is
  ``prompt + completion`` rendered with the *reward model's* chat template (``worker.render_chat``), never
  the policy's, and passed on as token ids.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Literal

from rlhf_rewards.reward.steps import TaggedText

Format = Literal["standard", "conversational"]
Messages = list[dict[str, Any]]


def _is_messages(value: Any) -> bool:
    return (
        isinstance(value, (list, tuple))
        and len(value) > 0
        and all(isinstance(m, dict) and "role" in m for m in value)
    )


def pair_format(
    prompts: Sequence[Any] | None, completions: Sequence[Any] | None, owner: str
) -> Format | None:
    """TRL's format of a call's ``prompts``/``completions`` (:func:`detect_format`), ``None`` for an empty call;
    a ``ValueError`` naming ``owner`` when either is missing."""
    if prompts is None or completions is None:
        raise ValueError(f"{owner}: prompts and completions are required (TRL passes both).")
    if len(completions) == 0 and len(prompts) == 0:
        return None
    return detect_format(prompts, completions, owner)


def require_chat_template(chat_template: str | None, has_chat_template: bool, owner: str, model: str) -> None:
    """Conversational inputs need a template: the caller's ``chat_template`` or the ``model``'s tokenizer's."""
    if chat_template is None and not has_chat_template:
        raise ValueError(
            f"{owner}: the {model}'s tokenizer has no chat template, so conversational "
            "prompts/completions cannot be rendered; pass chat_template=... (a Jinja template) or use the "
            "standard (string) format."
        )


def detect_format(prompts: Sequence[Any], completions: Sequence[Any], owner: str) -> Format:
    """``standard`` or ``conversational``, checking that every prompt and completion agrees."""
    if len(prompts) != len(completions):
        raise ValueError(
            f"{owner}: got {len(prompts)} prompts but {len(completions)} completions; pass one prompt per completion."
        )
    conversational = _is_messages(prompts[0])
    for i, (p, c) in enumerate(zip(prompts, completions, strict=True)):
        if conversational:
            if not _is_messages(p) or not (_is_messages(c) or (isinstance(c, (list, tuple)) and not c)):
                raise ValueError(
                    f"{owner}: prompts[0] is a conversation (list of messages) but item {i} is not: "
                    "in the conversational format every prompt and completion is a list of {'role', 'content'} messages."
                )
        elif not isinstance(p, str) or not isinstance(c, str):
            raise ValueError(
                f"{owner}: item {i} has a prompt of type {type(p).__name__} and a completion of type "
                f"{type(c).__name__}; pass strings (standard format) or lists of messages (conversational format)."
            )
    return "conversational" if conversational else "standard"


def standard_text(prompt: str, completion: str, suffix: str = "") -> str:
    """The text a reward model scores in the standard format."""
    return prompt + completion + suffix


def conversation(
    prompt: Sequence[dict[str, Any]],
    completion: Sequence[dict[str, Any]],
    tag: Callable[[str], TaggedText] | None = None,
) -> tuple[Messages, int]:
    """``prompt + completion`` messages; with ``tag``, each assistant message of the completion is step-tagged.

    Returns the messages and the number of step tags inserted (0 without ``tag``).
    """
    messages: Messages = [dict(m) for m in prompt]
    n_steps = 0
    completion_messages = [dict(m) for m in completion]
    if tag is not None:
        tagged_any = False
        for m in completion_messages:
            if m.get("role") != "assistant":
                continue
            content = m.get("content")
            if content is None:
                content = ""
            if not isinstance(content, str):
                raise ValueError(
                    "process rewards need assistant messages with text content (a string), got "
                    f"{type(content).__name__}."
                )
            tagged = tag(content)
            m["content"] = tagged.text
            n_steps += tagged.n_steps
            tagged_any = True
        if not tagged_any:
            # No assistant turn to split (e.g. an empty completion): score one empty assistant step.
            tagged = tag("")
            completion_messages.append({"role": "assistant", "content": tagged.text})
            n_steps += tagged.n_steps
    messages.extend(completion_messages)
    return messages, n_steps


__all__ = ["Format", "Messages", "conversation", "detect_format", "standard_text"]
