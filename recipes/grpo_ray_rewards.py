"""GRPO with the reward model on a Ray pool: replicas of the reward model run as Ray actors (on this machine
or across a cluster), and each scoring call is spread over them, least-loaded replica first.

The trainer's accelerators hold only the policy. Replicas that die are restarted by Ray and their work is
sent again to a live replica. ``RewardWorkerCallback`` pings every replica when training begins and stops the
run, naming the replica, if one cannot serve. Each training process builds its own pool of
``--num_replicas`` actors on the cluster (``--ray_address auto`` joins a running one, started with
``ray start --head``; without it each process starts a local Ray instance).

Launch (policy on 4 GPUs, 4 reward replicas per process on the cluster's other GPUs)::

    ray start --head --num-gpus 4
    accelerate launch --config_file recipes/accelerate_configs/zero2.yaml --num_processes 4 \\
        recipes/grpo_ray_rewards.py --ray_address auto \\
        --model_name_or_path Qwen/Qwen3-0.6B --reward_model Skywork/Skywork-Reward-V2-Qwen3-0.6B \\
        --num_replicas 1 --num_gpus_per_replica 1 --reward_dtype bfloat16 \\
        --dataset_name trl-lib/ultrafeedback-prompt --output_dir Qwen3-0.6B-GRPO-Ray \\
        --per_device_train_batch_size 8 --num_generations 8 --max_completion_length 512 --bf16

Tiny run on a CPU with the models shipped with rlhf-rewards (what CI runs; one process, a local Ray instance
with 2 CPU replicas)::

    accelerate launch --config_file recipes/accelerate_configs/single_gpu.yaml --cpu --mixed_precision no \\
        recipes/grpo_ray_rewards.py --shipped_models --num_replicas 2 \\
        --output_dir /tmp/grpo-ray --max_steps 2 --per_device_train_batch_size 2 --num_generations 2 \\
        --max_completion_length 8 --logging_steps 1 --save_strategy no --report_to none --use_cpu

The log history is written to ``<output_dir>/log_history.json``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from common import RecipeArguments, apply_model_args, finish, load_train_dataset, use_shipped_models
from trl import GRPOConfig, GRPOTrainer, ModelConfig, TrlParser

from rlhf_rewards.assets import default_reward_model_path
from rlhf_rewards.callbacks import RewardMetricsCallback, RewardWorkerCallback
from rlhf_rewards.reward import RewardFunction
from rlhf_rewards.workers.ray_pool import RayWorkerPool


@dataclass
class GRPORayRewardsArguments(RecipeArguments):
    """Arguments of this recipe (on top of ``RecipeArguments``).

    Args:
        reward_model: Reward model id or folder (readable on every Ray node).
        reward_name: Name in the logs (``rewards/<name>/mean``). Default: the model folder's name.
        num_replicas: Reward model replicas (Ray actors) per training process.
        num_gpus_per_replica: GPUs per replica (0: CPU replicas; fractions share a GPU).
        num_cpus_per_replica: CPUs reserved per replica.
        reward_dtype: dtype of the reward model.
        ray_address: Ray cluster to join (``auto``: the one ``ray start`` runs here). Default: a local instance.
    """

    dataset_name: str | None = field(
        default="trl-lib/ultrafeedback-prompt", metadata={"help": "Prompt dataset."}
    )
    reward_model: str = field(
        default="Skywork/Skywork-Reward-V2-Qwen3-0.6B", metadata={"help": "Reward model id or path."}
    )
    reward_name: str | None = field(default=None, metadata={"help": "Name of the reward in the logs."})
    num_replicas: int = field(default=2, metadata={"help": "Reward model replicas per training process."})
    num_gpus_per_replica: float = field(default=0.0, metadata={"help": "GPUs per replica (0: CPU)."})
    num_cpus_per_replica: float = field(default=1.0, metadata={"help": "CPUs per replica."})
    reward_dtype: str = field(
        default="auto", metadata={"help": "Reward model dtype (auto, bfloat16, float16, float32)."}
    )
    ray_address: str | None = field(
        default=None, metadata={"help": "Ray cluster address (auto: the local one)."}
    )

    def __post_init__(self) -> None:
        if self.num_replicas < 1:
            raise ValueError(f"--num_replicas must be at least 1, got {self.num_replicas}.")
        if self.num_gpus_per_replica < 0 or self.num_cpus_per_replica < 0:
            raise ValueError("--num_gpus_per_replica and --num_cpus_per_replica must be >= 0.")


def main(script_args: GRPORayRewardsArguments, training_args: GRPOConfig, model_args: ModelConfig) -> None:
    shipped = use_shipped_models(script_args, model_args)
    apply_model_args(model_args, training_args)
    reward_model = default_reward_model_path() if shipped else script_args.reward_model
    ray_init_kwargs = {"address": script_args.ray_address} if script_args.ray_address else {}
    pool = RayWorkerPool(
        reward_model,
        script_args.num_replicas,
        num_gpus_per_replica=script_args.num_gpus_per_replica,
        num_cpus_per_replica=script_args.num_cpus_per_replica,
        ray_init_kwargs=ray_init_kwargs,
        dtype=script_args.reward_dtype,
    )
    try:
        reward = RewardFunction(pool, name=script_args.reward_name)
        trainer = GRPOTrainer(
            model=model_args.model_name_or_path,
            reward_funcs=[reward],
            args=training_args,
            train_dataset=load_train_dataset(script_args),
            callbacks=[RewardWorkerCallback([reward]), RewardMetricsCallback([reward])],
        )
        trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
        finish(trainer, script_args)
    finally:
        pool.close()


if __name__ == "__main__":
    parser = TrlParser((GRPORayRewardsArguments, GRPOConfig, ModelConfig))
    main(*parser.parse_args_and_config())
