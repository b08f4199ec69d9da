"""Run a recipe the way users do (``accelerate launch --config_file ...``) and read back what it logged."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

from tests.support.server import free_port

REPO = Path(__file__).resolve().parents[2]
RECIPES = REPO / "recipes"
CONFIGS = RECIPES / "accelerate_configs"

#: Training arguments of every tiny run: 2 steps, 2 prompts x 2 completions per process, 8 new tokens.
TINY_TRAINING = [
    "--max_steps",
    "2",
    "--per_device_train_batch_size",
    "2",
    "--num_generations",
    "2",
    "--max_completion_length",
    "8",
    "--logging_steps",
    "1",
    "--save_strategy",
    "no",
    "--report_to",
    "none",
    "--use_cpu",
    "--seed",
    "0",
]


def recipe_env() -> dict[str, str]:
    """Offline, one thread per process (the machine runs several processes at once)."""
    bin_dir = str(Path(sys.executable).parent)
    return {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "OMP_NUM_THREADS": "1",
        "TRL_EXPERIMENTAL_SILENCE": "1",
        "PATH": bin_dir + os.pathsep + os.environ.get("PATH", ""),
    }


def accelerate_launch(
    config: str, recipe: str, args: list[str], *, num_processes: int, output_dir: Path, timeout: float = 600
) -> str:
    """``accelerate launch --config_file recipes/accelerate_configs/<config>.yaml`` on ``recipes/<recipe>``.

    One process runs with accelerate's ``--cpu``. Several run the config's own launcher (DeepSpeed over
    gloo on a CPU machine): ``--cpu`` would make accelerate start one plain process and drop DeepSpeed, so
    the recipe gets the training argument ``--use_cpu`` instead. Returns the combined output; fails with its
    tail if the run fails.
    """
    output_dir.mkdir(parents=True, exist_ok=True)
    cmd = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--config_file",
        str(CONFIGS / f"{config}.yaml"),
        "--num_processes",
        str(num_processes),
        "--mixed_precision",
        "no",
    ]
    if num_processes == 1:
        cmd.append("--cpu")
    else:
        cmd += ["--main_process_port", str(free_port())]
    cmd += [str(RECIPES / recipe), *args, "--output_dir", str(output_dir), *TINY_TRAINING]
    log = output_dir / "launch.log"
    with open(log, "wb") as f:
        proc = subprocess.run(
            cmd,
            stdout=f,
            stderr=subprocess.STDOUT,
            env=recipe_env(),
            cwd=str(REPO),
            timeout=timeout,
            check=False,
        )
    text = log.read_text(errors="replace")
    assert proc.returncode == 0, f"{' '.join(cmd)} exited {proc.returncode}:\n{text[-6000:]}"
    return text


def check_finished_run(
    output_dir: Path,
    reward_name: str,
    *,
    distributed_type: str,
    num_processes: int,
    zero_stage: int | None = None,
) -> list[dict]:
    """The run trained 2 steps as launched, logged a finite reward per step, and the reward-metrics
    callback's raw-score mean (gathered from every process) equals TRL's own reward mean. Returns the
    per-step log entries."""
    info = json.loads((output_dir / "run_info.json").read_text())
    assert info["distributed_type"] == distributed_type, info
    assert info["num_processes"] == num_processes, info
    assert info["zero_stage"] == zero_stage, info
    assert info["global_step"] == 2, info
    history = json.loads((output_dir / "log_history.json").read_text())
    assert any("train_runtime" in h for h in history)
    steps = [h for h in history if f"rewards/{reward_name}/mean" in h]
    assert [h["step"] for h in steps] == [1, 2], history
    for h in steps:
        mean = h[f"rewards/{reward_name}/mean"]
        assert math.isfinite(mean)
        assert math.isclose(h[f"rewards/{reward_name}/raw_mean"], mean, rel_tol=1e-4, abs_tol=1e-5), h
        assert h[f"rewards/{reward_name}/raw_none_frac"] == 0
        assert h[f"rewards/{reward_name}/raw_min"] <= mean <= h[f"rewards/{reward_name}/raw_max"]
        assert h[f"rewards/{reward_name}/latency_s"] > 0 and h[f"rewards/{reward_name}/tokens_per_s"] > 0
    assert (output_dir / "model.safetensors").exists() or list(output_dir.glob("*.safetensors"))
    return steps
