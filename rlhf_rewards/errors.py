"""``RequestError``: the one error type for a client mistake, located by field and prompt index.

Every layer (engine, workers, server) raises and reads the same structured error, so none ever parses
another layer's message text: a worker that split a call into chunks moves an error back to the caller's
prompt index with :meth:`RequestError.located`, and the server renames the field to the request's own
(``prompts`` -> ``input``) the same way. It is a ``ValueError``, as the engine's errors always were.
"""

from __future__ import annotations

from typing import Any

_KEEP: Any = object()

#: HTTP header in which the server sends a 4xx's :class:`RequestError` as JSON (:meth:`RequestError.to_dict`),
#: so a client (``RemoteWorker``) can move it to its own prompt index without parsing the message.
ERROR_HEADER = "x-rlhf-rewards-error"


class RequestError(ValueError):
    """A mistake in a request: which field (and prompt) it is in, and why.

    The message is ``<location><sep><reason>``, where the location is ``field``, ``field[index]`` or
    ``field[index].subfield`` (e.g. ``prompts[3].prompt_token_ids has token id 9, outside ...``), or just
    ``reason`` when no field is known.

    Args:
        reason: What is wrong and what to do instead (without the location).
        field: The argument or request field: ``prompts``, ``pooling_params``, ``truncate_prompt_tokens``...
        index: The entry of ``field`` at fault, for list-valued fields (the prompt's index).
        subfield: The key inside that entry (``prompt_token_ids``).
        sep: What stands between location and reason (``" "``, ``"="`` or ``": "``).
        param: The request field to blame, when it is not ``field`` itself (``pooling_params: step_tag_id
            can only be set with STEP`` blames ``step_tag_id``). Default: ``field``.
    """

    def __init__(
        self,
        reason: str,
        *,
        field: str | None = None,
        index: int | None = None,
        subfield: str | None = None,
        sep: str = " ",
        param: str | None = None,
    ) -> None:
        self.reason = reason
        self.field = field
        self.index = index
        self.subfield = subfield
        self.sep = sep
        self._param = param
        super().__init__(self.message)

    @property
    def param(self) -> str | None:
        """The request field at fault (vLLM's error ``param``)."""
        return self._param or self.field

    @property
    def location(self) -> str | None:
        """``field``, ``field[index]`` or ``field[index].subfield``; ``None`` without a field."""
        if self.field is None:
            return None
        loc = self.field if self.index is None else f"{self.field}[{self.index}]"
        return f"{loc}.{self.subfield}" if self.subfield else loc

    @property
    def message(self) -> str:
        """The full message."""
        loc = self.location
        return self.reason if loc is None else f"{loc}{self.sep}{self.reason}"

    def located(
        self,
        *,
        field: str | None = _KEEP,
        index: int | None = _KEEP,
        offset: int = 0,
        subfield: str | None = _KEEP,
    ) -> RequestError:
        """A copy moved to another field name and/or index (``offset`` is added to the index)."""
        new_index = self.index if index is _KEEP else index
        if new_index is not None:
            new_index += offset
        return type(self)(
            self.reason,
            field=self.field if field is _KEEP else field,
            index=new_index,
            subfield=self.subfield if subfield is _KEEP else subfield,
            sep=self.sep,
            param=self._param,
        )

    def to_dict(self) -> dict[str, Any]:
        """The error's parts, JSON-ready (the server sends them so a client can relocate the error)."""
        return {
            "reason": self.reason,
            "field": self.field,
            "index": self.index,
            "subfield": self.subfield,
            "sep": self.sep,
            "param": self._param,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RequestError:
        """Inverse of :meth:`to_dict`; raises ``KeyError``/``TypeError`` on a malformed dict."""
        return cls(
            str(data["reason"]),
            field=data.get("field"),
            index=data.get("index"),
            subfield=data.get("subfield"),
            sep=str(data.get("sep", " ")),
            param=data.get("param"),
        )

    def __reduce__(self) -> tuple[Any, ...]:
        # Exceptions pickle through ``args`` (the message alone); keep the structure across processes (Ray).
        return (_rebuild, (type(self), self.to_dict()))


def _rebuild(cls: type[RequestError], data: dict[str, Any]) -> RequestError:
    return cls.from_dict(data)


__all__ = ["ERROR_HEADER", "RequestError"]
