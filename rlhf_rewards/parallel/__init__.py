"""Reward models larger than one device: tensor and pipeline parallelism over ``torch.distributed``.

``LLM(model, tensor_parallel_size=N, pipeline_parallel_size=M)`` checks the split (:mod:`.plan`), starts its
own ``N * M`` worker processes (the calling process schedules and holds no weights) or joins ``torchrun``'s
(:mod:`.launch`), loads each rank's shard with transformers' distributed loading (:mod:`.sharding`) and runs every
call on all ranks in lockstep (:mod:`.lockstep`). Every wait is bounded and watches the workers, so a fault ends
in an error (:class:`WorkerFailed`), never a hang. See the README section "Models larger than one device".
"""

from rlhf_rewards.parallel.config import ParallelConfig
from rlhf_rewards.parallel.group import WorkerFailed
from rlhf_rewards.parallel.lockstep import LockstepRunner
from rlhf_rewards.parallel.plan import SUPPORTED_MODEL_TYPES, check_split
from rlhf_rewards.parallel.sharding import resident_parameter_bytes
from rlhf_rewards.parallel.split_model import SplitModelPart

__all__ = [
    "SUPPORTED_MODEL_TYPES",
    "LockstepRunner",
    "ParallelConfig",
    "SplitModelPart",
    "WorkerFailed",
    "check_split",
    "resident_parameter_bytes",
]
