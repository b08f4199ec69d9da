"""``ParallelConfig``: how one reward model is split over several processes (vLLM's parallel sizes), and how long
its processes may take before the engine gives up on them."""

from __future__ import annotations

import os
from dataclasses import dataclass

from rlhf_rewards.checks import check_int, is_number

#: Environment variable for :attr:`ParallelConfig.start_timeout_s` (seconds) when the argument is not given.
START_TIMEOUT_ENV = "RLHF_REWARDS_PARALLEL_START_TIMEOUT_S"
#: Environment variable for :attr:`ParallelConfig.call_timeout_s` (seconds) when the argument is not given.
CALL_TIMEOUT_ENV = "RLHF_REWARDS_PARALLEL_CALL_TIMEOUT_S"
#: Start-up bound: the ranks import torch, meet, and each load its shard of a checkpoint that may be 100+ GB.
#: A rank that dies is noticed at once whatever this is; it only bounds a rank that is alive but stuck.
DEFAULT_START_TIMEOUT_S = 900.0
#: Per-call bound on silence: the longest rank 0 waits for the next micro-batch to finish on the workers.
#: One micro-batch is a single forward (seconds even for a 70B model); a dead worker is noticed at once.
DEFAULT_CALL_TIMEOUT_S = 300.0


def _resolve_timeout(name: str, value: float | None, env: str, default: float) -> float:
    """``value``, else the environment variable ``env``, else ``default``; always a positive finite number."""
    source = name
    if value is None:
        raw = os.environ.get(env)
        if raw is None or raw.strip() == "":
            return default
        source = f"{env}={raw!r}"
        try:
            value = float(raw)
        except ValueError:
            raise ValueError(f"{source}: expected a number of seconds > 0.") from None
    if not (is_number(value, finite=True) and value > 0):
        raise ValueError(f"{source} must be a number of seconds > 0, got {value!r}.")
    return float(value)


@dataclass(frozen=True)
class ParallelConfig:
    """Tensor and pipeline parallel sizes of one engine (vLLM's ``tensor_parallel_size`` / ``pipeline_parallel_size``).

    Ranks are laid out as transformers' device mesh lays them out (``pp`` outer, ``tp`` inner): rank ``r`` is
    pipeline stage ``r // tensor_parallel_size`` and tensor shard ``r % tensor_parallel_size``. The tensor-shard-0
    rank of the last stage holds the final scores.

    Args:
        tensor_parallel_size: Processes that each hold a slice of every layer (heads and MLP columns). Default 1.
        pipeline_parallel_size: Stages that each hold a contiguous run of layers. Default 1.
        start_timeout_s: How long building the engine waits for every rank to start and load its shard. A rank
            that exits is reported at once; this bounds one that hangs. ``None`` (default): the environment
            variable ``RLHF_REWARDS_PARALLEL_START_TIMEOUT_S``, else 900.
        call_timeout_s: How long a call waits for the ranks' next sign of progress (a micro-batch done, or the
            result) before it declares them stuck. A rank that exits is reported at once. ``None`` (default):
            ``RLHF_REWARDS_PARALLEL_CALL_TIMEOUT_S``, else 300. Waiting for the next call is never bounded.
    """

    tensor_parallel_size: int = 1
    pipeline_parallel_size: int = 1
    start_timeout_s: float | None = None
    call_timeout_s: float | None = None

    def __post_init__(self) -> None:
        check_int("tensor_parallel_size", self.tensor_parallel_size, minimum=1)
        check_int("pipeline_parallel_size", self.pipeline_parallel_size, minimum=1)
        # Resolved once, here: a bad environment value fails the constructor, not the first call.
        object.__setattr__(
            self,
            "start_timeout_s",
            _resolve_timeout(
                "start_timeout_s", self.start_timeout_s, START_TIMEOUT_ENV, DEFAULT_START_TIMEOUT_S
            ),
        )
        object.__setattr__(
            self,
            "call_timeout_s",
            _resolve_timeout("call_timeout_s", self.call_timeout_s, CALL_TIMEOUT_ENV, DEFAULT_CALL_TIMEOUT_S),
        )

    @property
    def world_size(self) -> int:
        """Processes the model spans: ``tensor_parallel_size * pipeline_parallel_size``."""
        return self.tensor_parallel_size * self.pipeline_parallel_size

    @property
    def enabled(self) -> bool:
        """Whether the model spans more than one process."""
        return self.world_size > 1

    @property
    def output_rank(self) -> int:
        """The rank whose scores are returned: tensor shard 0 of the last pipeline stage."""
        return (self.pipeline_parallel_size - 1) * self.tensor_parallel_size


__all__ = [
    "CALL_TIMEOUT_ENV",
    "DEFAULT_CALL_TIMEOUT_S",
    "DEFAULT_START_TIMEOUT_S",
    "START_TIMEOUT_ENV",
    "ParallelConfig",
]
