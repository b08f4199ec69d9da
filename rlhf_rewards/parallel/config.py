"""``ParallelConfig``: how one reward model is split over several processes (vLLM's parallel sizes)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


def _check_size(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}.")
    return value


@dataclass(frozen=True)
class ParallelConfig:
    """Tensor and pipeline parallel sizes of one engine (vLLM's ``tensor_parallel_size`` / ``pipeline_parallel_size``).

    Ranks are laid out as transformers' device mesh lays them out (``pp`` outer, ``tp`` inner): global rank
    ``r`` is pipeline stage ``r // tensor_parallel_size`` and tensor shard ``r % tensor_parallel_size``. Rank 0
    schedules; the tensor-shard-0 rank of the last stage holds the final scores.

    Args:
        tensor_parallel_size: Processes that each hold a slice of every layer (heads and MLP columns). Default 1.
        pipeline_parallel_size: Stages that each hold a contiguous run of layers. Default 1.
    """

    tensor_parallel_size: int = 1
    pipeline_parallel_size: int = 1

    def __post_init__(self) -> None:
        _check_size("tensor_parallel_size", self.tensor_parallel_size)
        _check_size("pipeline_parallel_size", self.pipeline_parallel_size)

    @property
    def world_size(self) -> int:
        """Processes the model spans: ``tensor_parallel_size * pipeline_parallel_size``."""
        return self.tensor_parallel_size * self.pipeline_parallel_size

    @property
    def enabled(self) -> bool:
        """Whether the model spans more than one process."""
        return self.world_size > 1

    def stage_of(self, rank: int) -> int:
        """The pipeline stage of global ``rank``."""
        return rank // self.tensor_parallel_size

    @property
    def output_rank(self) -> int:
        """The global rank whose scores are returned: tensor shard 0 of the last pipeline stage."""
        return (self.pipeline_parallel_size - 1) * self.tensor_parallel_size


__all__ = ["ParallelConfig"]
