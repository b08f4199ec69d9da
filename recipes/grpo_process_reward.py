"""GRPO with a process reward model (PRM): each completion is split into steps, every step is scored at its
step tag, and the step rewards are aggregated into one reward per completion.

The PRM runs colocated with the policy (one whole copy per rank, sleeping between scoring calls, as in
``grpo_reward_model.py``). ``--step_separator`` splits a completion into steps (default a blank line),
``--step_aggregation`` turns the step rewards into the completion's reward: ``min`` (a chain is as good as
its worst step, the default), ``last``, ``mean`` or ``prod``. The model's step tag and pooler config
(``STEP`` pooling, ``step_tag_id``, ``returned_token_ids``) come from the model itself when rlhf-rewards
knows it (Qwen2.5-Math-PRM, math-shepherd); otherwise pass ``--pooler_config`` and ``--step_tag``.

Launch (8 GPUs, DeepSpeed ZeRO-2)::

    accelerate launch --config_file recipes/accelerate_configs/zero2.yaml recipes/grpo_process_reward.py \\
        --model_name_or_path Qwen/Qwen2.5-Math-1.5B-Instruct \\
        --reward_model Qwen/Qwen2.5-Math-PRM-7B --step_aggregation min \\
        --dataset_name trl-lib/DeepMath-103K --output_dir Qwen2.5-Math-1.5B-GRPO-PRM \\
        --per_device_train_batch_size 8 --num_generations 8 --max_completion_length 1024 \\
        --learning_rate 1e-6 --bf16 --report_to wandb

Tiny run on a CPU with the models shipped with rlhf-rewards (what CI runs; 2 processes, DeepSpeed ZeRO-2 over
gloo)::

    accelerate launch --config_file recipes/accelerate_configs/zero2.yaml --num_processes 2 \\
        --mixed_precision no recipes/grpo_process_reward.py \\
        --shipped_models --output_dir /tmp/grpo-prm \\
        --max_steps 2 --per_device_train_batch_size 2 --num_generations 2 --max_completion_length 8 \\
        --logging_steps 1 --save_strategy no --report_to none --use_cpu

On a CPU, leave ``accelerate launch --cpu`` out: with it, accelerate starts one plain process and ignores
the DeepSpeed config; ``--use_cpu`` (a training argument) keeps DeepSpeed and runs it over gloo. The log
history is written to ``<output_dir>/log_history.json``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from common import RecipeArguments, apply_model_args, finish, load_train_dataset, use_shipped_models
from trl import GRPOConfig, GRPOTrainer, ModelConfig, TrlParser

from rlhf_rewards.assets import default_prm_path
from rlhf_rewards.callbacks import RewardMetricsCallback, RewardWorkerCallback
from rlhf_rewards.reward import RewardFunction


@dataclass
class GRPOProcessRewardArguments(RecipeArguments):
    """Arguments of this recipe (on top of ``RecipeArguments``).

    Args:
        reward_model: Process reward model: hub id or local folder.
        reward_name: Name in the logs (``rewards/<name>/mean``). Default: the model folder's name.
        step_separator: Text between the steps of a completion.
        step_aggregation: ``min``, ``last``, ``mean`` or ``prod``.
        step_tag: Text inserted after each step. Default: the text of the model's step tag token.
        keep_step_separator: Keep the separator between tagged steps (math-shepherd) instead of replacing it.
        pooler_config: ``PoolerConfig`` of the PRM as JSON, when the model's own is not known.
        reward_dtype: dtype of the reward model.
        sleep_reward_model: Offload the reward model between scoring calls.
    """

    dataset_name: str | None = field(default="trl-lib/DeepMath-103K", metadata={"help": "Prompt dataset."})
    reward_model: str = field(default="Qwen/Qwen2.5-Math-PRM-7B", metadata={"help": "PRM id or path."})
    reward_name: str | None = field(default=None, metadata={"help": "Name of the reward in the logs."})
    step_separator: str = field(default="\n\n", metadata={"help": "Text between the steps of a completion."})
    step_aggregation: str = field(default="min", metadata={"help": "min, last, mean or prod."})
    step_tag: str | None = field(default=None, metadata={"help": "Step tag text. Default: the model's."})
    keep_step_separator: bool = field(
        default=False, metadata={"help": "Keep the separator between tagged steps."}
    )
    pooler_config: str | None = field(default=None, metadata={"help": "PoolerConfig of the PRM as JSON."})
    reward_dtype: str = field(
        default="auto", metadata={"help": "Reward model dtype (auto, bfloat16, float16, float32)."}
    )
    sleep_reward_model: bool = field(
        default=True, metadata={"help": "Offload the reward model between scoring calls."}
    )

    def __post_init__(self) -> None:
        if self.step_aggregation not in ("min", "last", "mean", "prod"):
            raise ValueError(
                f"--step_aggregation must be min, last, mean or prod, got {self.step_aggregation!r}."
            )
        if not self.step_separator:
            raise ValueError("--step_separator must not be empty.")


def main(script_args: GRPOProcessRewardArguments, training_args: GRPOConfig, model_args: ModelConfig) -> None:
    shipped = use_shipped_models(script_args, model_args)
    apply_model_args(model_args, training_args)
    reward_model = default_prm_path() if shipped else script_args.reward_model
    llm_kwargs: dict = {"dtype": script_args.reward_dtype}
    if script_args.pooler_config:
        llm_kwargs["pooler_config"] = json.loads(script_args.pooler_config)
    reward = RewardFunction(
        reward_model,
        name=script_args.reward_name,
        kind="process",
        step_separator=script_args.step_separator,
        step_aggregation=script_args.step_aggregation,
        step_tag=script_args.step_tag,
        keep_step_separator=script_args.keep_step_separator,
        llm_kwargs=llm_kwargs,
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
    parser = TrlParser((GRPOProcessRewardArguments, GRPOConfig, ModelConfig))
    main(*parser.parse_args_and_config())
