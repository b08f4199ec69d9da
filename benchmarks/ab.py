"""This engine against itself: two source trees (git refs or folders), or one tree under two environments,
timed on a vs-vLLM workload with paired, alternating runs.

``python -m benchmarks.ab --a HEAD~1 --b .`` checks out ``--a``/``--b`` (a git ref is exported with
``git archive`` into a temporary folder; ``.`` is the working tree) and runs each in its own engine process
(:mod:`benchmarks.engine_side` for the offline rows, ``rlhf-rewards serve`` for ``server``), both alive, the
one not being timed stopped (SIGSTOP) as in :mod:`benchmarks.vs_vllm`. Every repeat draws a fresh workload
(a new seed, the same for both) and alternates which side goes first; the output is each pair's B/A time
ratio and their median. ``--env-a``/``--env-b`` (JSON objects) set environment variables of one side, e.g.
``--env-b '{"RLHF_REWARDS_MALLOC_TUNING": "0"}'``.

Workloads: ``per_call`` and ``grpo`` (offline, :func:`benchmarks.vs_vllm.make`), ``server`` (``/pooling`` per
sample at ``--concurrency``, GRPO 8 x 8 in rollout order).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


@contextlib.contextmanager
def source_tree(ref: str) -> Iterator[Path]:
    """``ref`` as a folder: ``.`` or an existing folder as is, a git ref exported into a temporary one."""
    if ref == "." or Path(ref).is_dir():
        yield (ROOT if ref == "." else Path(ref)).resolve()
        return
    with tempfile.TemporaryDirectory(prefix="ab-tree-") as tmp:
        archive = subprocess.run(["git", "archive", ref], cwd=ROOT, capture_output=True, check=True).stdout
        subprocess.run(["tar", "-x", "-C", tmp], input=archive, check=True)
        yield Path(tmp)


@contextlib.contextmanager
def environment(extra: dict[str, str]) -> Iterator[None]:
    saved = dict(os.environ)
    os.environ.update(extra)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def _offline_side(root: Path, model: str, env: dict[str, str]) -> Any:
    from benchmarks.vs_vllm import Side

    with environment(env):
        return Side("ours", model, {"dtype": "float32", "device": "cpu"}, 2, root=root)


def _server_side(root: Path, model: str, env: dict[str, str]) -> Any:
    from benchmarks.remote import SERVE_ARGS
    from tests.support.server import ServerProcess

    server = ServerProcess(model, *SERVE_ARGS, env=env, omp_threads=2, startup_timeout=300, source_root=root)
    return server.start()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--a", default="HEAD", help="git ref or folder of side A (default HEAD)")
    parser.add_argument("--b", default=".", help="git ref or folder of side B (default: the working tree)")
    parser.add_argument("--env-a", default="{}", help="JSON object: environment variables of side A")
    parser.add_argument("--env-b", default="{}", help="JSON object: environment variables of side B")
    parser.add_argument("--workload", default="per_call", choices=["per_call", "grpo", "server"])
    parser.add_argument("--concurrency", type=int, default=8, help="server workload only")
    parser.add_argument("--repeats", type=int, default=8)
    args = parser.parse_args(argv)
    from transformers import AutoTokenizer

    import benchmarks.vs_vllm as V
    from benchmarks.workloads import ModelShape, build_model

    model = build_model("rm", ModelShape())
    tok = AutoTokenizer.from_pretrained(str(model))
    envs = {"A": json.loads(args.env_a), "B": json.loads(args.env_b)}
    other = {"A": "B", "B": "A"}
    with source_tree(args.a) as tree_a, source_tree(args.b) as tree_b, contextlib.ExitStack() as stack:
        trees = {"A": tree_a, "B": tree_b}
        sides, pids = {}, {}
        for k in "AB":
            if args.workload == "server":
                sides[k] = _server_side(trees[k], str(model), envs[k])
                stack.callback(sides[k].stop)
                pids[k] = sides[k].proc.pid
            else:
                sides[k] = _offline_side(trees[k], str(model), envs[k])
                stack.callback(sides[k].close)
                pids[k] = sides[k].proc.pid

        def timed(k: str, seed: int) -> float:
            with V.paused(pids[other[k]]):
                if args.workload == "server":
                    ids = V.rollout_ids(tok, seed)
                    start = time.perf_counter()
                    asyncio.run(V._post_ids(sides[k].url, ids, args.concurrency))
                    return time.perf_counter() - start
                calls, task = V.make(args.workload, tok, seed)
                return sides[k].ask(op="calls", task=task, calls=calls, column=1)["seconds"]

        for k in "AB":
            timed(k, 999)  # warm-up
        times: dict[str, list[float]] = {"A": [], "B": []}
        for r in range(args.repeats):
            for k in "AB" if r % 2 == 0 else "BA":
                times[k].append(timed(k, 1000 + r))
            print(f"  [{r}] A {times['A'][-1]:.3f} s, B {times['B'][-1]:.3f} s", file=sys.stderr, flush=True)
    ratios = [b / a for a, b in zip(times["A"], times["B"], strict=True)]
    print(
        f"{args.workload}: A={args.a} {statistics.median(times['A']):.3f} s, B={args.b} "
        f"{statistics.median(times['B']):.3f} s (medians of {args.repeats}); B/A per pair "
        f"{[round(x, 3) for x in ratios]}, median {statistics.median(ratios):.3f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
