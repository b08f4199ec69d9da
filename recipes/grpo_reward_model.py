"""GRPO with an outcome reward model colocated with the policy, scored by rlhf-rewards.

Each rank loads the reward model next to its policy shard. Between scoring calls the reward model sleeps
(``RewardWorkerCallback``), so its accelerator memory is free for the policy's backward pass; under ZeRO-3 the
policy is partitioned but the reward model is not. Per-reward figures (latency, tokens/s, raw-score
distribution) go to the logs (``RewardMetricsCallback``).

Launch (8 GPUs, DeepSpeed ZeRO-3)::

    accelerate launch --config_file recipes/accelerate_configs/zero3.yaml recipes/grpo_reward_model.py \\
        --model_name_or_path Qwen/Qwen3-0.6B \\
        --reward_model Skywork/Skywork-Reward-V2-Qwen3-0.6B \\
        --dataset_name trl-lib/ultrafeedback-prompt \\
        --output_dir Qwen3-0.6B-GRPO-Skywork \\
        --per_device_train_batch_size 8 --num_generations 8 --max_completion_length 512 \\
        --learning_rate 1e-6 --bf16 --report_to wandb

Tiny run on a CPU with the models shipped with rlhf-rewards (what CI runs; 2 processes, DeepSpeed ZeRO-3 over
gloo)::

    accelerate launch --config_file recipes/accelerate_configs/zero3.yaml --num_processes 2 \\
        --mixed_precision no recipes/grpo_reward_model.py \\
        --shipped_models --output_dir /tmp/grpo-rm \\
        --max_steps 2 --per_device_train_batch_size 2 --num_generations 2 --max_completion_length 8 \\
        --logging_steps 1 --save_strategy no --report_to none --use_cpu

(``accelerate launch --cpu`` would run one plain process and ignore DeepSpeed: leave it out on CPU machines.)
The log history, with ``rewards/<name>/mean`` and the callbacks' figures, is written to
``<output_dir>/log_history.json``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from common import RecipeArguments, apply_model_args, finish, load_train_dataset, use_shipped_models
from trl import GRPOConfig, GRPOTrainer, ModelConfig, TrlParser

from rlhf_rewards.assets import default_reward_model_path
from rlhf_rewards.callbacks import RewardMetricsCallback, RewardWorkerCallback
from rlhf_rewards.reward import RewardFunction


@dataclass
class GRPORewardModelArguments(RecipeArguments):
    """Arguments of this recipe (on top of ``RecipeArguments``).

    Args:
        reward_model: Outcome reward model: hub id or local folder of a ``*ForSequenceClassification``
            (Skywork-Reward-V2...) or any architecture rlhf-rewards loads.
        reward_name: Name in the logs (``rewards/<name>/mean``). Default: the model folder's name.
        reward_dtype: dtype of the reward model: ``auto``, ``bfloat16``, ``float16`` or ``float32``.
        sleep_reward_model: Offload the reward model between scoring calls. Default True.
    """

    dataset_name: str | None = field(
        default="trl-lib/ultrafeedback-prompt", metadata={"help": "Prompt dataset."}
    )
    reward_model: str = field(
        default="Skywork/Skywork-Reward-V2-Qwen3-0.6B", metadata={"help": "Reward model id or path."}
    )
    reward_name: str | None = field(default=None, metadata={"help": "Name of the reward in the logs."})
    reward_dtype: str = field(
        default="auto", metadata={"help": "Reward model dtype (auto, bfloat16, float16, float32)."}
    )
    sleep_reward_model: bool = field(
        default=True, metadata={"help": "Offload the reward model between scoring calls."}
    )


def main(script_args: GRPORewardModelArguments, training_args: GRPOConfig, model_args: ModelConfig) -> None:
    shipped = use_shipped_models(script_args, model_args)
    apply_model_args(model_args, training_args)
    reward_model = default_reward_model_path() if shipped else script_args.reward_model
    reward = RewardFunction(
        reward_model, name=script_args.reward_name, llm_kwargs={"dtype": script_args.reward_dtype}
    )
    trainer = GRPOTrainer(
        model=model_args.model_name_or_path,
        reward_funcs=[reward],
        args=training_args,
        train_dataset=load_train_dataset(script_args),
        callbacks=[
            RewardWorkerCallback([reward], sleep=script_args.sleep_reward_model),
            RewardMetricsCallback([reward]),
        ],
    )
    trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    finish(trainer, script_args)


if __name__ == "__main__":
    parser = TrlParser((GRPORewardModelArguments, GRPOConfig, ModelConfig))
    main(*parser.parse_args_and_config())
