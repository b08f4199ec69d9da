"""``chat_template`` as vLLM reads it, written once for ``LLM(chat_template=...)`` and ``serve --chat-template``."""

from __future__ import annotations

import os

#: Characters a Jinja template has and a file path does not (vLLM's ``JINJA_CHARS``).
_JINJA_CHARS = "{}\n"


def load_chat_template(value: str | os.PathLike[str] | None, *, name: str = "chat_template") -> str | None:
    """The template that ``value`` names: the text of the file ``value`` if it can be read, else ``value`` itself
    when it looks like a template (it has ``{``, ``}`` or a newline); a value that looks like a file path but
    cannot be read is a ``ValueError`` naming the argument ``name`` (vLLM's ``load_chat_template``: a mistyped
    path never becomes a template that renders every conversation as the path's text)."""
    if value is None:
        return None
    text = os.fspath(value)
    try:
        with open(text, encoding="utf-8") as f:
            return f.read()
    except (OSError, ValueError) as exc:
        if isinstance(value, os.PathLike) or not any(c in text for c in _JINJA_CHARS):
            raise ValueError(
                f"{name} {text!r} looks like a file path, but it could not be read "
                f"({type(exc).__name__}: {exc})."
            ) from None
        return text


__all__ = ["load_chat_template"]
