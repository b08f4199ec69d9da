"""Judge rewards: ``POST /generative_scoring`` on ``rlhf-rewards serve`` vs vLLM 0.32's own route, same CPU.

The workload of a GRPO group judged against a long rubric: each request is one query of ``--query-tokens``
(a 1,500-token rubric, different in every request so no engine can reuse an earlier one) and 8 items of
100-400 tokens, sent as token ids (no tokenizer differences). The judge is a ``Qwen3ForCausalLM`` built
locally (hidden 512, 4 layers, head_dim 64, fp32). Both servers are up and requests alternate between them, one at a
time (each idles while the other runs, and both see the same load of a shared machine), each on both cores: vLLM with ``VLLM_CPU_OMP_THREADS_BIND=0-1 OMP_NUM_THREADS=2`` (``vllm_env(threads=2)``),
this server with ``OMP_NUM_THREADS=2`` (two torch threads). Requests are sent one at a time after a warm-up;
the medians of their latencies are compared, and every score must agree (within ``--atol``).

    python -m benchmarks.generative_scoring [--requests 6] [--out benchmarks/results/generative-scoring.json]

The machine may be shared: the ratio of medians is the figure to read; absolute times move with the load.
On an oversubscribed machine (load above the core count) OpenMP's default spin-waiting costs a two-thread torch
process several times its CPU time: ``--omp-wait-policy PASSIVE`` (and ``--vllm-omp-wait-policy PASSIVE``)
measure both servers without it.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

MODEL = {
    "hidden_size": 512,
    "intermediate_size": 1408,
    "num_hidden_layers": 4,
    "num_attention_heads": 8,
    "num_key_value_heads": 4,
    "head_dim": 64,
    "max_position_embeddings": 2048,
}
LABELS = [17, 42]


def workload(
    n_requests: int, query_tokens: int, items: int, vocab: int, seed: int = 0
) -> list[dict[str, Any]]:
    """``n_requests`` bodies (one warm-up first): a distinct long query each, ``items`` items of 100-400 tokens."""
    rng = random.Random(seed)
    bodies = []
    for _ in range(n_requests + 1):
        query = [rng.randrange(5, vocab) for _ in range(query_tokens)]
        its = [[rng.randrange(5, vocab) for _ in range(rng.randint(100, 400))] for _ in range(items)]
        bodies.append({"query": query, "items": its, "label_token_ids": LABELS})
    return bodies


def run(
    url: str, bodies: list[dict[str, Any]], keep_first: bool = False
) -> tuple[list[float], list[list[float]]]:
    """Latencies (the first excluded unless ``keep_first``) and scores of every request, sent one at a time."""
    times, scores = [], []
    with httpx.Client(timeout=600) as client:
        for k, body in enumerate(bodies):
            start = time.perf_counter()
            r = client.post(url + "/generative_scoring", json=body)
            elapsed = time.perf_counter() - start
            r.raise_for_status()
            scores.append([d["score"] for d in r.json()["data"]])
            if k or keep_first:
                times.append(elapsed)
    return times, scores


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=6)
    parser.add_argument("--items", type=int, default=8)
    parser.add_argument("--query-tokens", type=int, default=1500)
    parser.add_argument("--atol", type=float, default=1e-4)
    parser.add_argument("--ours-threads", type=int, default=2, help="OMP_NUM_THREADS of rlhf-rewards serve.")
    parser.add_argument(
        "--omp-wait-policy", default=None, help="OMP_WAIT_POLICY of rlhf-rewards serve (unset)."
    )
    parser.add_argument(
        "--vllm-omp-wait-policy", default=None, help="OMP_WAIT_POLICY of vLLM's server (unset)."
    )
    parser.add_argument("--out", default=None, help="Write the result as JSON here.")
    args = parser.parse_args()

    from benchmarks.vs_vllm import paused
    from tests.compat.vllm_live.oracle import VllmServer
    from tests.support.checkpoints import build_checkpoint
    from tests.support.server import ServerProcess

    root = Path(tempfile.mkdtemp(prefix="gs-bench-"))
    model = build_checkpoint("Qwen3ForCausalLM", root / "judge", seed=0, **MODEL)
    vocab = json.loads((model / "config.json").read_text())["vocab_size"]
    bodies = workload(args.requests, args.query_tokens, args.items, vocab)
    max_len = str(MODEL["max_position_embeddings"])
    env = {"OMP_WAIT_POLICY": args.omp_wait_policy} if args.omp_wait_policy else None
    ours_t: list[float] = []
    theirs_t: list[float] = []
    ours_s: list[list[float]] = []
    theirs_s: list[list[float]] = []
    with ServerProcess(
        model, "--dtype", "float32", "--max-model-len", max_len, omp_threads=args.ours_threads, env=env
    ) as ours:
        if args.vllm_omp_wait_policy:
            os.environ["OMP_WAIT_POLICY"] = (
                args.vllm_omp_wait_policy
            )  # vllm_env copies this process's environment
        vllm = VllmServer(
            model, "--max-model-len", max_len, "--enforce-eager", threads=2, startup_timeout=400
        )
        try:
            # Interleaved, one request at a time, so both see the same machine load; the first request of each
            # is a warm-up. The server not being timed is stopped (SIGSTOP): an idle vLLM engine polls and
            # spin-waits, which would take a core from the one being timed (benchmarks.vs_vllm does the same).
            sides = (
                (ours.url, vllm._proc.pid, ours_t, ours_s),
                (vllm.url, ours.proc.pid, theirs_t, theirs_s),
            )
            for k, body in enumerate(bodies):
                for target, other, times, scores in sides:
                    with paused(other):
                        t, sc = run(target, [body], keep_first=True)
                    scores.extend(sc)
                    if k:
                        times.extend(t)
        finally:
            vllm.close()
    diff = max(
        abs(a - b) for ra, rb in zip(ours_s, theirs_s, strict=True) for a, b in zip(ra, rb, strict=True)
    )
    ours_m, theirs_m = statistics.median(ours_t), statistics.median(theirs_t)
    tokens = statistics.mean(
        len(b["query"]) * args.items + sum(len(i) for i in b["items"]) for b in bodies[1:]
    )
    result = {
        "ours_threads": args.ours_threads,
        "omp_wait_policy": args.omp_wait_policy,
        "vllm_omp_wait_policy": args.vllm_omp_wait_policy,
        "workload": {
            "requests": args.requests,
            "items": args.items,
            "query_tokens": args.query_tokens,
            "item_tokens": "100-400",
            "mean_prompt_tokens_per_request": tokens,
            "model": MODEL,
        },
        "rlhf_rewards_s": ours_t,
        "vllm_s": theirs_t,
        "rlhf_rewards_median_s": ours_m,
        "vllm_median_s": theirs_m,
        "speedup": theirs_m / ours_m,
        "max_abs_score_diff": diff,
    }
    print(
        f"generative_scoring, {args.items} items x ({args.query_tokens}-token query + 100-400-token item), "
        f"{args.requests} requests after a warm-up, 2 cores each"
    )
    print(f"  rlhf-rewards serve: median {ours_m:.3f} s/request  {[round(t, 3) for t in ours_t]}")
    print(f"  vLLM {'0.32'} server:  median {theirs_m:.3f} s/request  {[round(t, 3) for t in theirs_t]}")
    print(f"  speedup (vLLM / ours): {theirs_m / ours_m:.2f}x   max |score difference|: {diff:.2e}")
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    if diff > args.atol:
        raise SystemExit(f"scores differ by {diff:.2e} > {args.atol}")


if __name__ == "__main__":
    main()
