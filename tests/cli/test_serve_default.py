"""``rlhf-rewards serve`` with no MODEL serves the shipped outcome reward model."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from rlhf_rewards.assets import default_reward_model_path
from rlhf_rewards.cli.main import main as cli_main
from rlhf_rewards.cli.serve import default_model
from rlhf_rewards.reward import RewardFunction
from tests.support.server import free_port

REPO = Path(__file__).resolve().parents[2]


def test_default_model_is_the_shipped_outcome_rm():
    assert default_model() == default_reward_model_path()


def test_serve_without_model_scores_like_the_local_default_model(tmp_path):
    port = free_port()
    log = open(tmp_path / "server.log", "w")  # noqa: SIM115
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "rlhf_rewards.cli.main",
            "serve",
            "--port",
            str(port),
            "--device",
            "cpu",
            "--disable-access-log",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
        cwd=str(REPO),
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            assert proc.poll() is None, (tmp_path / "server.log").read_text()
            try:
                if httpx.get(url + "/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "server did not start"
            time.sleep(0.2)
        served = httpx.get(url + "/v1/models", timeout=10).json()["data"][0]["id"]
        assert served == default_reward_model_path()
        src = tmp_path / "in.jsonl"
        src.write_text(
            "\n".join(
                json.dumps({"prompt": "What is 8 + 5?", "completion": c}) for c in (" 13", " 14", " hmm")
            )
            + "\n"
        )
        out = tmp_path / "out.jsonl"
        assert cli_main(["score", str(src), "--url", url, "-o", str(out), "--no-progress"]) == 0
        remote = [json.loads(line)["score"] for line in out.read_text().splitlines()]
    finally:
        proc.terminate()
        proc.wait(60)
        log.close()
    local = RewardFunction(default_reward_model_path(), llm_kwargs={"device": "cpu"})(
        ["What is 8 + 5?"] * 3, [" 13", " 14", " hmm"]
    )
    assert remote == pytest.approx(local, abs=1e-4)
    assert remote[0] > remote[1] > remote[2]
