"""RLOO with the reward model behind ``rlhf-rewards serve``: scoring runs in another process (or on other
machines), so the trainer's accelerators hold only the policy.

Every rank scores through a ``RemoteWorker``: requests are batched on the server, spread over the URLs in
``--reward_url`` (comma-separated), and a failed request is retried on another URL. ``RewardWorkerCallback``
checks every URL when training begins and stops the run at once, naming the URL, if one is down.

Either start the server yourself (see ``recipes/serve_reward_model.sh``) and pass its URL::

    bash recipes/serve_reward_model.sh Skywork/Skywork-Reward-V2-Qwen3-0.6B --port 8000 --dtype bfloat16 &
    accelerate launch --config_file recipes/accelerate_configs/multi_gpu.yaml recipes/rloo_remote_reward.py \\
        --model_name_or_path Qwen/Qwen3-0.6B --reward_url http://127.0.0.1:8000 \\
        --dataset_name trl-lib/ultrafeedback-prompt --output_dir Qwen3-0.6B-RLOO-Skywork \\
        --per_device_train_batch_size 8 --num_generations 8 --max_completion_length 512 \\
        --learning_rate 1e-6 --bf16 --report_to wandb

or let the recipe start one on this machine for the run (``--serve``; extra server options in
``--serve_args``)::

    accelerate launch --config_file recipes/accelerate_configs/single_gpu.yaml recipes/rloo_remote_reward.py \\
        --model_name_or_path Qwen/Qwen3-0.6B --serve --reward_model Skywork/Skywork-Reward-V2-Qwen3-0.6B \\
        --serve_args "--dtype bfloat16 --device cuda:0" --dataset_name trl-lib/ultrafeedback-prompt \\
        --output_dir Qwen3-0.6B-RLOO-Skywork --bf16

Tiny run on a CPU with the models shipped with rlhf-rewards (what CI runs; one process, the recipe starts the
server)::

    accelerate launch --config_file recipes/accelerate_configs/single_gpu.yaml --cpu --mixed_precision no \\
        recipes/rloo_remote_reward.py --shipped_models --serve \\
        --output_dir /tmp/rloo-remote --max_steps 2 --per_device_train_batch_size 2 --num_generations 2 \\
        --max_completion_length 8 --logging_steps 1 --save_strategy no --report_to none --use_cpu

With 2 CPU processes (DDP over gloo; the main process starts the server, both ranks score through it),
launch with ``--config_file recipes/accelerate_configs/multi_gpu.yaml --num_processes 2 --mixed_precision no``
instead, without ``--cpu``. The log history is written to ``<output_dir>/log_history.json``, the server's log
(with ``--serve``) to ``<output_dir>/reward-server.log``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from common import RecipeArguments, apply_model_args, finish, load_train_dataset, use_shipped_models
from reward_server import serve_on_main_process
from trl import ModelConfig, RLOOConfig, RLOOTrainer, TrlParser

from rlhf_rewards.assets import default_reward_model_path
from rlhf_rewards.callbacks import RewardMetricsCallback, RewardWorkerCallback
from rlhf_rewards.reward import RewardFunction
from rlhf_rewards.workers import RemoteWorker


@dataclass
class RLOORemoteRewardArguments(RecipeArguments):
    """Arguments of this recipe (on top of ``RecipeArguments``).

    Args:
        reward_url: Base URL(s) of running ``rlhf-rewards serve`` servers, comma-separated.
        serve: Start a server for ``--reward_model`` on this machine instead (main process, 127.0.0.1).
        reward_model: The model ``--serve`` serves.
        serve_args: Extra ``rlhf-rewards serve`` options for ``--serve``, as one string.
        serve_port: Port for ``--serve``. Default: a free port.
        api_key: Bearer key of the server(s). Default: ``$RLHF_REWARDS_API_KEY``.
        reward_name: Name in the logs (``rewards/<name>/mean``). Default: the served model's name.
        request_timeout: Seconds to wait for one HTTP answer before retrying on another URL.
        max_retries: Retries per request.
        max_concurrency: Most requests in flight per rank.
    """

    dataset_name: str | None = field(
        default="trl-lib/ultrafeedback-prompt", metadata={"help": "Prompt dataset."}
    )
    reward_url: str | None = field(
        default=None, metadata={"help": "URL(s) of rlhf-rewards servers, comma-separated."}
    )
    serve: bool = field(
        default=False, metadata={"help": "Start a reward server for --reward_model on this machine."}
    )
    reward_model: str = field(
        default="Skywork/Skywork-Reward-V2-Qwen3-0.6B", metadata={"help": "Reward model served with --serve."}
    )
    serve_args: str = field(default="", metadata={"help": "Extra `rlhf-rewards serve` options with --serve."})
    serve_port: int | None = field(default=None, metadata={"help": "Port for --serve. Default: a free port."})
    api_key: str | None = field(default=None, metadata={"help": "API key of the server(s)."})
    reward_name: str | None = field(default=None, metadata={"help": "Name of the reward in the logs."})
    request_timeout: float = field(
        default=120.0, metadata={"help": "Seconds per HTTP request before a retry."}
    )
    max_retries: int = field(default=4, metadata={"help": "Retries per request."})
    max_concurrency: int = field(default=8, metadata={"help": "Most requests in flight per rank."})

    def __post_init__(self) -> None:
        if self.serve == bool(self.reward_url):
            raise ValueError("Give exactly one of --reward_url URL[,URL...] and --serve.")


def main(script_args: RLOORemoteRewardArguments, training_args: RLOOConfig, model_args: ModelConfig) -> None:
    shipped = use_shipped_models(script_args, model_args)
    apply_model_args(model_args, training_args)
    server = None
    if script_args.serve:
        model = default_reward_model_path() if shipped else script_args.reward_model
        url, server = serve_on_main_process(
            model,
            serve_args=script_args.serve_args,
            port=script_args.serve_port,
            log_file=os.path.join(training_args.output_dir, "reward-server.log"),
        )
        urls = [url]
    else:
        urls = [u.strip() for u in script_args.reward_url.split(",") if u.strip()]
    worker = RemoteWorker(
        urls,
        api_key=script_args.api_key,
        timeout=script_args.request_timeout,
        max_retries=script_args.max_retries,
        max_concurrency=script_args.max_concurrency,
    )
    try:
        reward = RewardFunction(worker, name=script_args.reward_name)
        trainer = RLOOTrainer(
            model=model_args.model_name_or_path,
            reward_funcs=[reward],
            args=training_args,
            train_dataset=load_train_dataset(script_args),
            callbacks=[RewardWorkerCallback([reward]), RewardMetricsCallback([reward])],
        )
        trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
        trainer.accelerator.wait_for_everyone()  # every rank is done scoring before the server goes
        finish(trainer, script_args)
    finally:
        worker.close()
        if server is not None:
            server.stop()


if __name__ == "__main__":
    parser = TrlParser((RLOORemoteRewardArguments, RLOOConfig, ModelConfig))
    main(*parser.parse_args_and_config())
