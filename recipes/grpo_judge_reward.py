"""GRPO with an LLM judge as the reward: a causal LM asked "is this answer correct?", read through the
probability of its answer token (vLLM's ``/generative_scoring``), scored by rlhf-rewards in one forward pass.

Every completion goes into the judge's template after a shared rubric; one ``generative_score`` call scores
the batch, and the engine computes the rubric (and each group's question) once for all the completions that
share it. The judge runs colocated by default, or remotely with ``--judge_url`` (``rlhf-rewards serve JUDGE``
answers ``POST /generative_scoring``).

Tiny run on a CPU, on the shipped models (the arithmetic policy judges its own answers; about a minute)::

    python recipes/grpo_judge_reward.py --output_dir /tmp/grpo-judge --max_steps 2 \\
        --per_device_train_batch_size 4 --num_generations 4 --max_completion_length 8 \\
        --logging_steps 1 --save_strategy no --report_to none --use_cpu

A real run (a 1.7B judge next to the policy; labels as texts of the judge's vocabulary)::

    accelerate launch --config_file recipes/accelerate_configs/zero3.yaml recipes/grpo_judge_reward.py \\
        --model_name_or_path Qwen/Qwen3-0.6B --judge_model Qwen/Qwen3-1.7B --judge_labels Yes No \\
        --dataset_name trl-lib/DeepMath-103K --output_dir Qwen3-0.6B-GRPO-judge --bf16

The log history, with ``rewards/<name>/mean``, is written to ``<output_dir>/log_history.json``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from common import (
    RecipeArguments,
    apply_model_args,
    arithmetic_dataset,
    finish,
    load_train_dataset,
    use_shipped_models,
)
from trl import GRPOConfig, GRPOTrainer, ModelConfig, TrlParser

from rlhf_rewards.assets import default_policy_path
from rlhf_rewards.callbacks import RewardMetricsCallback
from rlhf_rewards.reward import JudgeConfig, RewardFunction

RUBRIC = (
    "You are a strict grader of arithmetic. An answer is correct when it states the exact result of the "
    "question and nothing else; words, guesses and wrong numbers are incorrect.\n"
)
TEMPLATE = RUBRIC + "Question: {prompt}\nAnswer: {completion}\nIs the answer correct? Answer 1 or 0: "


@dataclass
class GRPOJudgeArguments(RecipeArguments):
    """Arguments of this recipe (on top of ``RecipeArguments``).

    Args:
        judge_model: The judge: a ``*ForCausalLM`` folder or hub id. Default: the shipped arithmetic policy.
        judge_url: Score through a running ``rlhf-rewards serve JUDGE`` instead of loading the judge here.
        judge_template: ``{prompt}``/``{completion}`` template ending where the judge's answer starts.
        judge_labels: The answer tokens, first = "correct" (each must be one token of the judge's vocabulary).
    """

    dataset_name: str | None = field(
        default=None, metadata={"help": "Prompt dataset (default: arithmetic questions)."}
    )
    judge_model: str | None = field(default=None, metadata={"help": "Judge model id or path."})
    judge_url: str | None = field(
        default=None, metadata={"help": "URL of an rlhf-rewards server serving the judge."}
    )
    judge_template: str = field(default=TEMPLATE, metadata={"help": "Judge prompt template."})
    judge_labels: list[str] = field(default_factory=lambda: ["1", "0"], metadata={"help": "Answer tokens."})


def main(script_args: GRPOJudgeArguments, training_args: GRPOConfig, model_args: ModelConfig) -> None:
    shipped = use_shipped_models(script_args, model_args)
    if not model_args.model_name_or_path:  # the shipped policy is this recipe's default policy and judge
        model_args.model_name_or_path = default_policy_path()
    apply_model_args(model_args, training_args)
    judge = JudgeConfig(template=script_args.judge_template, labels=tuple(script_args.judge_labels))
    if script_args.judge_url:
        from rlhf_rewards.workers import RemoteWorker

        source = RemoteWorker(script_args.judge_url)
    else:
        source = default_policy_path() if shipped or not script_args.judge_model else script_args.judge_model
    reward = RewardFunction(source, judge=judge, name="judge", llm_kwargs={"dtype": "float32"})
    dataset = load_train_dataset(script_args) if script_args.dataset_name else arithmetic_dataset()
    trainer = GRPOTrainer(
        model=model_args.model_name_or_path,
        reward_funcs=[reward],
        args=training_args,
        train_dataset=dataset,
        callbacks=[RewardMetricsCallback([reward])],
    )
    trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    finish(trainer, script_args)


if __name__ == "__main__":
    parser = TrlParser((GRPOJudgeArguments, GRPOConfig, ModelConfig))
    main(*parser.parse_args_and_config())
