"""The main job (``recipes/demo.py``): GRPO with the shipped outcome RM raises the reward (slow)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_demo_reward_rises_and_writes_log_and_plot(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "recipes.demo", "--steps", "30", "--output-dir", str(tmp_path)],
        cwd=str(REPO),
        capture_output=True,
        text=True,
        timeout=1200,
        env={"PATH": "", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "step   1  reward" in proc.stdout + proc.stderr
    assert "reward: first step" in proc.stdout
    log = json.loads((tmp_path / "rewards.json").read_text())
    steps = log["steps"]
    assert [s["step"] for s in steps] == list(range(1, 31))
    first = sum(s["reward"] for s in steps[:5]) / 5
    last = sum(s["reward"] for s in steps[-5:]) / 5
    assert last > first + 0.5, (first, last)
    assert log["answers_after"]["number_rate"] > log["answers_before"]["number_rate"]
    png = (tmp_path / "rewards.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
