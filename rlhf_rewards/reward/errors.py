"""The errors and warnings of reward functions, and how a failure becomes one that names the function."""

from __future__ import annotations


class RewardFunctionError(RuntimeError):
    """A reward function could not score a batch; the message names the function and the model."""


class RewardInputError(RewardFunctionError, ValueError):
    """The inputs of a reward function call are invalid (also a ``ValueError``)."""


class UnscorableCompletionWarning(UserWarning):
    """Some completions got reward ``None`` because the reward model cannot score them."""


def wrap_error(exc: Exception, owner: str) -> RewardFunctionError:
    """``exc`` as a :class:`RewardFunctionError` whose message starts with ``owner`` (the function and model).

    A ``ValueError`` (a bad input, wherever it was detected: here, the worker or the server) becomes a
    :class:`RewardInputError`; a :class:`RewardFunctionError` is returned as it is.
    """
    if isinstance(exc, RewardFunctionError):
        return exc
    message = str(exc)
    if not message.startswith(owner):
        message = f"{owner}: {type(exc).__name__}: {message}"
    cls = RewardInputError if isinstance(exc, ValueError) else RewardFunctionError
    return cls(message)


__all__ = ["RewardFunctionError", "RewardInputError", "UnscorableCompletionWarning", "wrap_error"]
