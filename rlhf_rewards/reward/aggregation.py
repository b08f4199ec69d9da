"""Aggregating per-step process rewards into one reward per completion."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

from rlhf_rewards.checks import check_choice

StepAggregation = str | Callable[[list[float]], float]

#: The built-in step aggregations. ``min`` is the usual choice for PRMs (a solution is as good as its
#: worst step); ``prod`` treats step scores as probabilities of independent correctness.
AGGREGATIONS: dict[str, Callable[[Sequence[float]], float]] = {
    "min": lambda xs: min(xs),
    "last": lambda xs: xs[-1],
    "mean": lambda xs: math.fsum(xs) / len(xs),
    "prod": lambda xs: math.prod(xs),
}


def check_aggregation(how: object) -> StepAggregation:
    """Return ``how`` if it is a built-in aggregation name or a callable, else raise ``ValueError``."""
    if callable(how):
        return how  # type: ignore[return-value]
    return check_choice("step_aggregation", how, sorted(AGGREGATIONS), otherwise="pass a callable")


def aggregate_steps(scores: Sequence[float], how: StepAggregation) -> float:
    """Aggregate the step scores of one completion (``scores`` must not be empty)."""
    if not scores:
        raise ValueError("cannot aggregate an empty list of step scores.")
    fn = how if callable(how) else AGGREGATIONS[how]
    return float(fn(list(scores)))


__all__ = ["AGGREGATIONS", "StepAggregation", "aggregate_steps", "check_aggregation"]
