"""Resident memory of each rank of a split reward model against the same model in one process.

``python -m benchmarks.parallel_memory [--tensor-parallel-size 2] [--pipeline-parallel-size 1]`` builds a
Qwen3-style sequence RM (8 layers x hidden 1024, vocab 32000, float32: about 0.6 GB), then in fresh processes
measures (1) one process: its parameter bytes and the growth of its anonymous resident memory (``RssAnon``:
weights copied out of the memory-mapped safetensors file; the file's page cache is shared and not counted) on
loading, and (2) the split engine (``LLM(..., tensor_parallel_size=N)``, which starts its own ranks): the
driver's parameter bytes (none: its model is on ``meta``) and every worker rank's anonymous resident memory
over a bare interpreter with the same imports. It also checks the scores agree. Prints one line per process.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

TEXTS = ["Question: what is 12 + 7? Answer: 19.", "Hello, my name is", "The quick brown fox " * 20]

_CHILD = r"""
import json, os, sys, psutil, torch
from rlhf_rewards import LLM
from rlhf_rewards.parallel import resident_parameter_bytes
path, tp, pp, texts = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), json.loads(sys.argv[4])
def anon(pid):  # resident anonymous memory: weights copied out of the mmapped file, not the file's page cache
    line = next(l for l in open(f"/proc/{pid}/status") if l.startswith("RssAnon:"))
    return int(line.split()[1]) * 1024
me = psutil.Process()
before, before_rss = anon(me.pid), me.memory_info().rss
llm = LLM(path, device="cpu", dtype="float32", tensor_parallel_size=tp, pipeline_parallel_size=pp)
scores = [o.outputs.data.tolist() for o in llm.encode(texts, pooling_task="classify", use_tqdm=False)]
# This process: the whole model, or a split engine's driver (its model on `meta`; the worker ranks hold it).
ranks = [{"rank": "driver" if llm._parallel is not None else "process",
          "param_bytes": resident_parameter_bytes(llm.model), "rss_growth": anon(me.pid) - before,
          "total_rss_growth": me.memory_info().rss - before_rss}]
if llm._parallel is not None:
    for i, proc in enumerate(llm._parallel.group.workers):
        ranks.append({"rank": i, "rss": anon(proc.pid), "total_rss": psutil.Process(proc.pid).memory_info().rss})
print("RESULT " + json.dumps({"scores": scores, "ranks": ranks}), flush=True)
llm.shutdown()
"""

_BARE = r"""
import os, torch, transformers
from rlhf_rewards import LLM
import transformers.distributed, torch.distributed
line = next(l for l in open(f"/proc/{os.getpid()}/status") if l.startswith("RssAnon:"))
print("RESULT", int(line.split()[1]) * 1024, flush=True)
"""


def _run(code: str, *args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-c", code, *args],
        capture_output=True,
        text=True,
        check=True,
        env={
            "HF_HUB_OFFLINE": "1",
            "TOKENIZERS_PARALLELISM": "false",
            "OMP_NUM_THREADS": "1",
            "PATH": "/usr/bin:/bin",
        },
    )
    return next(line for line in done.stdout.splitlines() if line.startswith("RESULT"))[7:]


def main() -> None:
    """Build the model, measure both ways, print the figures."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tensor-parallel-size", type=int, default=2)
    parser.add_argument("--pipeline-parallel-size", type=int, default=1)
    args = parser.parse_args()
    from tests.support.checkpoints import build_qwen3_classifier

    with tempfile.TemporaryDirectory() as tmp:
        path = build_qwen3_classifier(
            Path(tmp) / "rm",
            hidden_size=1024,
            intermediate_size=4096,
            num_hidden_layers=8,
            num_attention_heads=8,
            num_key_value_heads=4,
            head_dim=128,
            vocab_size=32000,
        )
        bare = int(_run(_BARE))
        one = json.loads(_run(_CHILD, str(path), "1", "1", json.dumps(TEXTS)))
        split = json.loads(
            _run(
                _CHILD,
                str(path),
                str(args.tensor_parallel_size),
                str(args.pipeline_parallel_size),
                json.dumps(TEXTS),
            )
        )
    whole = one["ranks"][0]["param_bytes"]
    print(
        f"one process: parameters {whole / 2**20:.1f} MiB, anonymous RSS growth on load "
        f"{one['ranks'][0]['rss_growth'] / 2**20:.1f} MiB (total RSS growth, mmapped file pages included: "
        f"{one['ranks'][0]['total_rss_growth'] / 2**20:.1f} MiB)"
    )
    print(f"bare interpreter with the same imports: anonymous RSS {bare / 2**20:.1f} MiB")
    driver = split["ranks"][0]
    print(
        f"driver (holds no weights): parameters {driver['param_bytes'] / 2**20:.1f} MiB, anonymous RSS growth "
        f"on load {driver['rss_growth'] / 2**20:.1f} MiB (total {driver['total_rss_growth'] / 2**20:.1f} MiB)"
    )
    for r in split["ranks"][1:]:
        print(
            f"rank {r['rank']}: anonymous RSS {r['rss'] / 2**20:.1f} MiB = bare + {(r['rss'] - bare) / 2**20:.1f} MiB "
            f"(total RSS {r['total_rss'] / 2**20:.1f} MiB)"
        )
    diff = max(abs(a[0] - b[0]) for a, b in zip(one["scores"], split["scores"], strict=True))
    print(f"max abs score diff split vs one process: {diff:.1e}")


if __name__ == "__main__":
    main()
