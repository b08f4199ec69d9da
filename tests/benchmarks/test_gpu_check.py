"""``python -m benchmarks.gpu_check --device cpu --tiny``: the GPU check's every line on this CPU, so it cannot rot.

The check compares the engine with transformers' own forward (float32 to 1e-4, bf16/fp16 within the stated
tolerance), sleeps and wakes a ``ColocatedWorker``, and benchmarks the engine against TRL's built-in path and
the HF loop. On a CPU the CUDA-only parts (the FlashAttention varlen kernel, CUDA memory given back by
``sleep()``) are N/A, and the compiled benchmarks are skipped; everything else must PASS.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
MODELS = ("qwen3-0.6b", "llama-3.2-1b", "qwen2.5-math-prm")
DTYPES = ("float32", "bfloat16", "float16")


def expected_checks() -> dict[str, set[str]]:
    """Check name -> the statuses allowed on a CPU."""
    checks: dict[str, set[str]] = {}
    for model in MODELS:
        checks[f"build {model}"] = {"PASS"}
        for dtype in DTYPES:
            checks[f"accuracy {model} {dtype} varlen=on"] = {
                "N/A"
            }  # the kernel is CUDA-only: fallback checked
            checks[f"accuracy {model} {dtype} varlen=off"] = {"PASS"}
        checks[f"sleep {model}"] = {"N/A"}  # no CUDA memory to give back on a CPU
        checks[f"wake {model}"] = {"PASS"}
    for model in ("qwen3-0.6b", "qwen2.5-math-prm"):
        for dtype in ("float32", "bfloat16"):
            checks[f"deterministic {model} {dtype}"] = {"PASS"}
    for workload, model in (("grpo", "qwen3-0.6b"), ("grpo", "llama-3.2-1b"), ("prm", "qwen2.5-math-prm")):
        checks[f"bench {workload} {model}"] = {"PASS"}
        checks[f"bench-compiled {workload} {model}"] = {"SKIP"}  # torch.compile is skipped on a CPU
    return checks


def test_gpu_check_runs_on_cpu_tiny(tmp_path):
    out = tmp_path / "gpu_check.json"
    env = {
        **os.environ,
        "TOKENIZERS_PARALLELISM": "false",
        "HF_HUB_OFFLINE": "1",
        "OUT": str(tmp_path / "OUT"),
    }
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.gpu_check", "--device", "cpu", "--tiny", "--out", str(out)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=800,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    lines = {}
    for line in proc.stdout.splitlines():
        status, _, rest = line.partition(" ")
        if status in ("PASS", "FAIL", "SKIP", "N/A"):
            lines[rest.split(":")[0]] = (status, line)
    expected = expected_checks()
    assert set(lines) == set(expected), (
        f"missing {set(expected) - set(lines)}, unexpected {set(lines) - set(expected)}"
    )
    for name, allowed in expected.items():
        assert lines[name][0] in allowed, lines[name][1]
    # An N/A line still checked what a CPU can: the bucket fallback's scores, the worker's sleep state.
    for status, line in lines.values():
        if status == "N/A":
            assert ("0 kernel calls" in line and "<=" in line) or "marked the worker asleep" in line, line

    report = json.loads(out.read_text())
    assert json.loads((tmp_path / "OUT" / "gpu_check.json").read_text())["checks"] == report["checks"]
    assert {c["name"]: c["status"] for c in report["checks"]} == {n: s for n, (s, _) in lines.items()}
    table = report["table"]
    methods = {(r["workload"], r["model"], r["method"].split(" (")[0]) for r in table}
    for model in ("qwen3-0.6b", "llama-3.2-1b"):
        assert {
            ("grpo", model, "rlhf-rewards engine"),
            ("grpo", model, "TRL built-in"),
            ("grpo", model, "HF loop"),
        } <= methods
    assert {
        ("prm", "qwen2.5-math-prm", "rlhf-rewards engine"),
        ("prm", "qwen2.5-math-prm", "HF loop"),
    } <= methods
    for row in table:
        assert row["items_per_s"] > 0 and row["peak_mib"] == row["peak_mib"]  # not NaN
        assert row["max_abs_diff_vs_engine"] <= 1e-4  # float32 on a CPU
    assert "| workload | model | method |" in proc.stdout
    assert report["trl_builtin"]["name"]
