"""The one mapping between :class:`~rlhf_rewards.pooling.params.PoolingParams` and request fields.

The remote worker encodes params into a ``/pooling`` body with it, and the server decodes the body back
with it, so the two can never disagree on a field. ``truncate_prompt_tokens`` travels at the request level
(as in vLLM), not among the pooling fields.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from rlhf_rewards.errors import RequestError
from rlhf_rewards.pooling.params import PoolingParams

#: PoolingParams fields that travel as request fields of the same name.
PARAM_FIELDS: tuple[str, ...] = (
    "use_activation",
    "dimensions",
    "normalize",
    "step_tag_id",
    "returned_token_ids",
)


def params_to_fields(params: PoolingParams | None) -> dict[str, Any]:
    """The set pooling fields of ``params`` (``truncate_prompt_tokens`` excluded: see :func:`truncation_of`)."""
    if params is None:
        return {}
    return {name: getattr(params, name) for name in PARAM_FIELDS if getattr(params, name) is not None}


def params_from_fields(
    source: Mapping[str, Any] | object,
    *,
    names: tuple[str, ...] = PARAM_FIELDS,
    truncate_prompt_tokens: int | None = None,
) -> PoolingParams:
    """``PoolingParams`` from a mapping or an object with the fields (a request model); fields that
    ``source`` lacks stay unset. A bad value raises ``RequestError`` naming the field."""
    get = source.get if isinstance(source, Mapping) else (lambda n: getattr(source, n, None))
    fields = {n: get(n) for n in names if get(n) is not None}
    if truncate_prompt_tokens is not None:
        fields["truncate_prompt_tokens"] = truncate_prompt_tokens
    return PoolingParams(**fields)


def truncation_of(params: PoolingParams | None, call_level: int | None) -> int | None:
    """The truncation that applies to one prompt: its params' own, else the call's."""
    if params is not None and params.truncate_prompt_tokens is not None:
        return params.truncate_prompt_tokens
    if call_level is not None:
        PoolingParams(truncate_prompt_tokens=call_level)  # validates the value
    return call_level


def params_key(params: PoolingParams | None) -> tuple[Any, ...]:
    """A hashable key of the fields that travel (prompts with equal keys can share one request)."""
    fields = params_to_fields(params)
    return tuple((n, tuple(v) if isinstance(v, list) else v) for n, v in sorted(fields.items()))


__all__ = [
    "PARAM_FIELDS",
    "RequestError",
    "params_from_fields",
    "params_key",
    "params_to_fields",
    "truncation_of",
]
