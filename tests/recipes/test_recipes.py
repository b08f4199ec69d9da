"""Every training recipe launched end to end on the CPU, as its docstring says, on the models shipped with
rlhf-rewards (``--shipped_models``): DeepSpeed ZeRO-3 and ZeRO-2 with 2 processes, the others in one process.
Each run must finish its 2 steps and log its rewards (see ``check_finished_run``)."""

from __future__ import annotations

import json
import signal
import subprocess

import httpx
import pytest

from tests.recipes.launch import RECIPES, REPO, accelerate_launch, check_finished_run, recipe_env
from tests.support.server import free_port, wait_healthy

pytestmark = pytest.mark.slow

#: The rewards' names in the logs: the shipped models' folder names.
OUTCOME_RM = "arith-outcome-rm"
PRM = "arith-prm"


def test_grpo_reward_model_deepspeed_zero3_two_processes(tmp_path):
    out = tmp_path / "run"
    accelerate_launch(
        "zero3",
        "grpo_reward_model.py",
        ["--shipped_models"],
        num_processes=2,
        output_dir=out,
    )
    check_finished_run(out, OUTCOME_RM, distributed_type="DEEPSPEED", num_processes=2, zero_stage=3)


def test_grpo_process_reward_deepspeed_zero2_two_processes(tmp_path):
    out = tmp_path / "run"
    accelerate_launch(
        "zero2",
        "grpo_process_reward.py",
        ["--shipped_models", "--step_aggregation", "mean"],
        num_processes=2,
        output_dir=out,
    )
    steps = check_finished_run(out, PRM, distributed_type="DEEPSPEED", num_processes=2, zero_stage=2)
    for h in steps:  # STEP pooling with softmax over the good/bad logits: every step reward is a probability
        assert 0 <= h[f"rewards/{PRM}/raw_min"] <= h[f"rewards/{PRM}/raw_max"] <= 1


def test_rloo_remote_reward_starts_its_own_server_for_two_processes(tmp_path):
    # multi_gpu.yaml with --use_cpu runs as MULTI_CPU (DDP over gloo): the main process starts the server
    # and both ranks score through it.
    out = tmp_path / "run"
    accelerate_launch(
        "multi_gpu",
        "rloo_remote_reward.py",
        ["--shipped_models", "--serve", "--serve_args", "--device cpu"],
        num_processes=2,
        output_dir=out,
    )
    check_finished_run(out, OUTCOME_RM, distributed_type="MULTI_CPU", num_processes=2)
    server_log = (out / "reward-server.log").read_text()
    assert "POST /pooling" in server_log and "Application shutdown complete" in server_log


def test_serve_script_then_rloo_against_its_url(tmp_path):
    port = free_port()
    env = {**recipe_env(), "SHIPPED_MODEL": "1", "PORT": str(port)}
    log = open(tmp_path / "server.log", "wb")
    server = subprocess.Popen(
        ["bash", str(RECIPES / "serve_reward_model.sh"), "--device", "cpu"],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
        cwd=str(REPO),
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url, timeout=300, alive=lambda: server.poll() is None, interval=0.5)
        assert server.poll() is None, (tmp_path / "server.log").read_text()[-3000:]
        # vLLM's /pooling, as its documentation calls it.
        model = httpx.get(url + "/v1/models", timeout=10).json()["data"][0]["id"]
        r = httpx.post(
            url + "/pooling", json={"model": model, "input": ["What is 12 + 7? 19", "Hello"]}, timeout=60
        )
        assert r.status_code == 200, r.text
        assert [d["index"] for d in r.json()["data"]] == [0, 1]

        out = tmp_path / "run"
        accelerate_launch(
            "single_gpu",
            "rloo_remote_reward.py",
            ["--shipped_models", "--reward_url", url, "--reward_name", "served"],
            num_processes=1,
            output_dir=out,
        )
        check_finished_run(out, "served", distributed_type="NO", num_processes=1)
        history = json.loads((out / "log_history.json").read_text())
        assert all(h["rewards/served/retries"] == 0 for h in history if "rewards/served/mean" in h)
    finally:
        server.send_signal(signal.SIGTERM)  # exec'd: the server itself gets it
        try:
            rc = server.wait(60)
        except subprocess.TimeoutExpired:
            server.kill()
            rc = server.wait(30)
        log.close()
    assert rc == 0, (tmp_path / "server.log").read_text()[-3000:]


def test_rloo_remote_reward_stops_at_once_when_the_url_is_down(tmp_path):
    dead = f"http://127.0.0.1:{free_port()}"
    out = tmp_path / "run"
    with pytest.raises(AssertionError) as info:
        accelerate_launch(
            "single_gpu",
            "rloo_remote_reward.py",
            [
                "--shipped_models",
                "--reward_url",
                dead,
                "--max_retries",
                "0",
                "--request_timeout",
                "5",
            ],
            num_processes=1,
            output_dir=out,
            timeout=300,
        )
    assert dead in str(info.value)
    assert not (out / "log_history.json").exists()


def test_grpo_ray_rewards_on_a_local_ray_instance(tmp_path):
    pytest.importorskip("ray")
    out = tmp_path / "run"
    accelerate_launch(
        "single_gpu",
        "grpo_ray_rewards.py",
        ["--shipped_models", "--num_replicas", "2", "--num_cpus_per_replica", "0.5"],
        num_processes=1,
        output_dir=out,
        timeout=600,
    )
    check_finished_run(out, OUTCOME_RM, distributed_type="NO", num_processes=1)
