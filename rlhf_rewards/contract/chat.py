"""``ChatRenderer``: the ``render_chat`` call shared by the engine's ``LLM`` and every worker, written once."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any

#: Conversations as the callers pass them: each a list of ``{"role": ..., "content": ...}`` messages.
Conversations = Sequence[Sequence[dict[str, Any]]]


class ChatRenderer(ABC):
    """Has :meth:`render_chat`; a subclass implements :meth:`_render_chat` (the public signature is here)."""

    def render_chat(
        self,
        conversations: Conversations,
        *,
        chat_template: str | None = None,
        add_generation_prompt: bool = False,
    ) -> list[list[int]]:
        """Token ids of each conversation rendered with the model's chat template (or ``chat_template``)."""
        return self._render_chat(conversations, chat_template, add_generation_prompt)

    @abstractmethod
    def _render_chat(
        self, conversations: Conversations, chat_template: str | None, add_generation_prompt: bool
    ) -> list[list[int]]:
        """Render ``conversations`` (see :meth:`render_chat`)."""


__all__ = ["ChatRenderer", "Conversations"]
