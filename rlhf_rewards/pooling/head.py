"""The pooling head step: what the poolers read, their reduction, the model's head, and post-processing.

The engine gathers the hidden states at :func:`pooled_positions` of each request; :func:`pool_and_score`
reduces them with the request's pooler, runs the head once per set of returned columns (one matmul per
set, whatever the number of requests) in float32, and applies the score transform (classify/reward) or
the embedding post-processing (``dimensions``, ``normalize``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from rlhf_rewards.pooling import get_pooler
from rlhf_rewards.pooling.activation import apply_score_transform
from rlhf_rewards.pooling.params import ResolvedPooling

#: ``score(states [n, hidden], columns, **head_kwargs) -> [n, k]``: the model's head
#: (:meth:`~rlhf_rewards.models.base.PoolingModel.score`), or the engine's tiled form of it.
ScoreFn = Callable[..., torch.Tensor]


def pooled_positions(params: ResolvedPooling, token_ids: list[int]) -> torch.Tensor:
    """The positions of ``token_ids`` whose hidden states the request's pooler reads."""
    return get_pooler(params.pooling_type).positions(torch.tensor(token_ids), params)


def pool_and_score(
    params: list[ResolvedPooling],
    gathered: list[torch.Tensor],
    score: ScoreFn,
    problem_type: str | None,
    head_kwargs: dict[str, Any] | None = None,
) -> list[torch.Tensor]:
    """Reduce gathered states per request, run the head once per column set, and post-process.

    Args:
        params: Each request's resolved pooling.
        gathered: Each request's hidden states at its :func:`pooled_positions`.
        score: The head.
        problem_type: The model's ``problem_type`` (the score transform depends on it).
        head_kwargs: Extra keyword arguments of ``score``; a per-request ``adapter_names`` is expanded to
            one name per head row.

    Returns:
        Float32 CPU tensors, one per request.
    """
    reduced = [get_pooler(p.pooling_type).reduce(g).float() for p, g in zip(params, gathered, strict=True)]
    outputs: list[torch.Tensor | None] = [None] * len(params)
    # Group head calls by their column selection so each group is one matmul.
    groups: dict[tuple[int, ...] | None, list[int]] = {}
    for i, p in enumerate(params):
        if p.runs_head:
            groups.setdefault(p.returned_token_ids, []).append(i)
    for columns, members in groups.items():
        states = [reduced[i] if reduced[i].dim() == 2 else reduced[i].unsqueeze(0) for i in members]
        sizes = [s.shape[0] for s in states]
        kwargs = dict(head_kwargs or {})
        if "adapter_names" in kwargs:  # expand per-request adapter names to per-row
            kwargs["adapter_names"] = [
                kwargs["adapter_names"][i] for i, n in zip(members, sizes, strict=True) for _ in range(n)
            ]
        logits = score(torch.cat(states, dim=0), columns, **kwargs)
        for i, part in zip(members, torch.split(logits, sizes), strict=True):
            p = params[i]
            part = apply_score_transform(part, p, problem_type)
            outputs[i] = part if p.token_level else part.squeeze(0)
    for i, p in enumerate(params):
        if not p.runs_head:
            outputs[i] = _embed_post(reduced[i], p)
    return [o.detach().to("cpu", torch.float32).contiguous() for o in outputs if o is not None]


def _embed_post(x: torch.Tensor, params: ResolvedPooling) -> torch.Tensor:
    if params.dimensions is not None:
        if params.dimensions > x.shape[-1]:
            raise ValueError(f"dimensions={params.dimensions} is over the model's hidden size {x.shape[-1]}.")
        x = x[..., : params.dimensions]
    if params.normalize:
        x = torch.nn.functional.normalize(x, p=2, dim=-1)
    return x


__all__ = ["ScoreFn", "pool_and_score", "pooled_positions"]
