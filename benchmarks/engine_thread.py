"""Why the server loads its model on its engine thread: ``python -m benchmarks.engine_thread``.

Two fresh processes score the same GRPO 8 x 8 texts in batches of 8 (what ``rlhf-rewards serve`` runs at
concurrency 8), every batch on a one-thread executor like the server's engine thread. They differ only in where
the ``LLM`` was built: on the main thread (a second OpenMP team in the process) or on that executor (one team).
Each process times ``--repeats`` passes over three workloads (the prefix cache reset before each) and reports the
median pass; the two processes alternate ``--rounds`` times.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

_CHILD = """
import json, sys, time
from concurrent.futures import ThreadPoolExecutor
from transformers import AutoTokenizer
import rlhf_rewards
import benchmarks.vs_vllm as V
from benchmarks.workloads import ModelShape, build_model

where, repeats = sys.argv[1], int(sys.argv[2])
model = build_model("rm", ModelShape())
tok = AutoTokenizer.from_pretrained(str(model))
engine = ThreadPoolExecutor(max_workers=1)
build = lambda: rlhf_rewards.LLM(str(model), dtype="float32", device="cpu")
llm = engine.submit(build).result() if where == "engine" else build()
params = rlhf_rewards.PoolingParams(use_activation=False)

def one_pass(work):
    llm.reset_prefix_cache()
    start = time.perf_counter()
    for ids in work:
        for i in range(0, len(ids), 8):
            batch = [{"prompt_token_ids": x} for x in ids[i : i + 8]]
            llm.encode(batch, params, pooling_task="classify", use_tqdm=False)
    return time.perf_counter() - start

work = [V.rollout_ids(tok, 2080 + r) for r in range(3)]
engine.submit(one_pass, work[:1]).result()  # warm-up
times = [engine.submit(one_pass, work).result() for _ in range(repeats)]
print(json.dumps({"where": where, "median_s": sorted(times)[len(times) // 2]}))
"""


def _run(where: str, repeats: int) -> float:
    env = dict(
        os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "2"), TOKENIZERS_PARALLELISM="false"
    )
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    done = subprocess.run(
        [sys.executable, "-c", _CHILD, where, str(repeats)],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=1800,
        check=True,
    )
    return float(json.loads(done.stdout.strip().splitlines()[-1])["median_s"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeats", type=int, default=3, help="passes per process (median reported)")
    parser.add_argument("--rounds", type=int, default=2, help="process pairs, alternating which goes first")
    args = parser.parse_args(argv)
    times: dict[str, list[float]] = {"main": [], "engine": []}
    for r in range(args.rounds):
        for where in ("main", "engine") if r % 2 == 0 else ("engine", "main"):
            times[where].append(_run(where, args.repeats))
            print(
                f"  [{r}] model built on the {where} thread: {times[where][-1]:.3f} s",
                file=sys.stderr,
                flush=True,
            )
    main_s, engine_s = statistics.median(times["main"]), statistics.median(times["engine"])
    print(
        f"3 x GRPO 8x8 in batches of 8 on an engine thread: model built on the main thread {main_s:.3f} s, "
        f"on the engine thread {engine_s:.3f} s ({main_s / engine_s:.2f}x)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
