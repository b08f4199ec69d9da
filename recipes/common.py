"""What every training recipe shares: the dataset and shipped-model arguments, and the end of the run.

Recipes import it as ``from common import ...`` (Python puts the script's folder, ``recipes/``, on the path).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trl import ScriptArguments

from rlhf_rewards.assets import default_policy_path
from rlhf_rewards.assets.arithmetic import questions


@dataclass
class RecipeArguments(ScriptArguments):
    """Arguments of every recipe, on top of TRL's ``ScriptArguments`` (``--dataset_name``, ``--dataset_config``,
    ``--dataset_train_split``...).

    Args:
        shipped_models: Train the policy shipped with rlhf-rewards (``rlhf_rewards.assets``: ``arith-policy``)
            on its arithmetic questions, scored by the shipped reward models (``arith-outcome-rm``,
            ``arith-prm``): the model, reward model and dataset arguments are then replaced. A run of
            seconds on a CPU, for smoke runs and CI.
        log_history_file: Where the main process writes ``trainer.state.log_history`` as JSON (every logged
            figure, rewards included). Default: ``<output_dir>/log_history.json``.
    """

    shipped_models: bool = field(
        default=False,
        metadata={
            "help": "Train the shipped arithmetic policy with the shipped reward models on arithmetic "
            "questions (CPU smoke runs, CI). Replaces the model, reward model and dataset arguments."
        },
    )
    log_history_file: str | None = field(
        default=None,
        metadata={
            "help": "Where to write trainer.state.log_history as JSON. Default: <output_dir>/log_history.json."
        },
    )


def use_shipped_models(script_args: RecipeArguments, model_args: Any) -> bool:
    """With ``--shipped_models``: point ``--model_name_or_path`` at the shipped policy and return ``True`` (the
    recipe then takes its reward model from ``rlhf_rewards.assets`` too); otherwise ``False``."""
    if script_args.shipped_models:
        model_args.model_name_or_path = default_policy_path()
    return script_args.shipped_models


def apply_model_args(model_args: Any, training_args: Any) -> None:
    """Pass ``ModelConfig``'s loading options (revision, dtype, attention) on to the trainer, as TRL's scripts do."""
    kwargs = {
        "revision": model_args.model_revision,
        "attn_implementation": model_args.attn_implementation,
        "dtype": model_args.dtype,
    }
    kwargs.update(training_args.model_init_kwargs or {})
    training_args.model_init_kwargs = kwargs


def arithmetic_dataset(n: int = 64, seed: int = 0) -> Any:
    """A ``datasets.Dataset`` with a ``prompt`` column of ``n`` questions of the shipped models' task
    (``What is A + B?``)."""
    from datasets import Dataset

    return Dataset.from_dict({"prompt": questions(n, seed)})


def load_train_dataset(script_args: RecipeArguments) -> Any:
    """The training split of ``--dataset_name``, or the arithmetic questions with ``--shipped_models``."""
    if script_args.shipped_models:
        return arithmetic_dataset()
    if not script_args.dataset_name:
        raise ValueError("--dataset_name is required (or --shipped_models for a run on the shipped models).")
    from datasets import load_dataset

    return load_dataset(
        script_args.dataset_name, name=script_args.dataset_config, split=script_args.dataset_train_split
    )


def run_info(trainer: Any) -> dict[str, Any]:
    """How the run was launched, as accelerate saw it: distributed type, processes, DeepSpeed ZeRO stage,
    FSDP version, steps done. Written next to the log history, so a launch that silently fell back to one
    plain process (``accelerate launch --cpu`` drops DeepSpeed) shows."""
    state = trainer.accelerator.state
    plugin = getattr(state, "deepspeed_plugin", None)
    fsdp = getattr(state, "fsdp_plugin", None)
    return {
        "distributed_type": str(getattr(state.distributed_type, "value", state.distributed_type)),
        "num_processes": state.num_processes,
        "zero_stage": plugin.zero_stage if plugin is not None else None,
        "fsdp_version": getattr(fsdp, "fsdp_version", None) if fsdp is not None else None,
        "device": str(state.device),
        "global_step": trainer.state.global_step,
    }


def finish(trainer: Any, script_args: RecipeArguments) -> Path:
    """Save the policy, write the log history JSON and ``run_info.json`` (main process) and end the run;
    returns the log history's path."""
    output_dir = trainer.args.output_dir
    trainer.save_model(output_dir)
    path = Path(script_args.log_history_file or os.path.join(output_dir, "log_history.json"))
    if trainer.accelerator.is_main_process:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(trainer.state.log_history, indent=2) + "\n", encoding="utf-8")
        (path.parent / "run_info.json").write_text(
            json.dumps(run_info(trainer), indent=2) + "\n", encoding="utf-8"
        )
        trainer.accelerator.print(f"Training completed: policy saved to {output_dir}, log history in {path}.")
    if hasattr(trainer, "end"):  # transformers >= 5.18: finish the trackers, destroy the process group
        trainer.end()
    return path
