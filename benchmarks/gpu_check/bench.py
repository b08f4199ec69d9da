"""``bench <workload> <model>``: the engine against TRL's built-in path and the HF loop on the benchmarks'
workloads (throughput, peak memory, scores within the tolerance), and ``bench-compiled``: the same engine
with ``enforce_eager=False``."""

from __future__ import annotations

import functools
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import torch

from benchmarks import baselines
from benchmarks.gpu_check.cases import ModelCase
from benchmarks.gpu_check.checks import Session
from benchmarks.gpu_check.reference import (
    engine_scores,
    engine_step_probs,
    engine_tolerance,
    free,
    max_abs_diff,
    sync,
)
from benchmarks.gpu_check.report import CheckFailed, format_row, skip
from benchmarks.run import PeakMemory
from benchmarks.workloads import STEP_TAG, token_lengths


def bench(session: Session, workload_name: str, case: ModelCase, compiled: bool) -> None:
    """``bench <workload> <model>`` (or ``bench-compiled``, the engine with ``enforce_eager=False``)."""
    name = f"{'bench-compiled' if compiled else 'bench'} {workload_name} {case.name}"
    if compiled and not session.cuda and not session.args.cpu_compile:
        session.report.run(
            name,
            skip(
                "torch.compile on a CPU is slow to build and says nothing about CUDA graphs; "
                "pass --cpu-compile to run it anyway"
            ),
        )
        return
    if session.over_budget():
        session.report.run(name, skip(f"over the {session.args.budget_s:.0f}s time budget"))
        return
    session.report.run(name, lambda: _bench(session, workload_name, case, compiled))


def _bench(session: Session, workload_name: str, case: ModelCase, compiled: bool) -> tuple[str, dict]:
    dtype = "bfloat16" if session.cuda else "float32"
    workload = session.bench_workload(workload_name)
    tokens = sum(token_lengths(session.tok, workload.texts))
    tok = _OnDevice(session.tok, session.device)
    methods: list[tuple[str, Callable[[], torch.Tensor]]] = []
    llm = session.llm(case, dtype, enforce_eager=not compiled)
    if workload_name == "grpo":
        engine = functools.partial(engine_scores, llm, workload.texts, "rm")
    else:
        engine = functools.partial(engine_step_probs, llm, workload.texts)
    engine_name = "rlhf-rewards engine" + (" (enforce_eager=False: torch.compile)" if compiled else "")
    methods.append((engine_name, engine))
    hf = None
    if not compiled:
        hf = session.reference(case, dtype)
        if workload_name == "grpo":
            methods.append(
                (
                    f"TRL built-in ({trl_impl()['name']})",
                    lambda: baselines.trl_builtin(hf, tok, workload.prompts, workload.completions),
                )
            )
            methods.append(
                ("HF loop (batches of 8, padded)", lambda: baselines.hf_loop(hf, tok, workload.texts))
            )
        else:
            methods.append(
                (
                    "HF loop (model card: one forward per sample + make_step_rewards)",
                    lambda: torch.tensor(
                        [
                            x
                            for row in baselines.prm_model_card(hf, tok, workload.texts, STEP_TAG)
                            for x in row
                        ]
                    ),
                )
            )
    repeats = session.args.repeats or (3 if session.cuda else 1)
    rows, scores = [], {}
    # --tiny on a CPU times the first call (a warm-up would double a test's time); otherwise one warm-up
    # call (the compile, for the compiled engine) precedes the timed repeats.
    warmup = compiled or not session.tiny
    for method, fn in methods:
        warmup_s = float("nan")
        if warmup:
            t0 = time.perf_counter()
            scores[method] = fn()
            sync(session.device)
            warmup_s = time.perf_counter() - t0
        times, peaks = [], []
        for _ in range(repeats):
            with PeakMemory(session.device) as mem:
                t = time.perf_counter()
                out = fn()
                sync(session.device)
                times.append(time.perf_counter() - t)
            scores.setdefault(method, out)
            peaks.append(mem.peak_mib)
        rows.append(
            {
                "workload": workload_name,
                "model": case.name,
                "method": method,
                "dtype": dtype,
                "items": len(workload.texts),
                "tokens": tokens,
                "warmup_s": warmup_s,
                "median_s": statistics.median(times),
                "times_s": times,
                "items_per_s": len(workload.texts) / statistics.median(times),
                "tokens_per_s": tokens / statistics.median(times),
                "peak_mib": statistics.median(peaks),
                "peak_memory": "CUDA max allocated over the call" if session.cuda else "extra resident set",
            }
        )
    reference = scores[engine_name]
    if compiled:  # compiled vs eager: the eager bench's scores, else an eager runner on the same weights
        reference = session.eager_scores.get((workload_name, case.name))
        if reference is None:
            from benchmarks.run import runner_variant

            with runner_variant(llm, compile=False):
                reference = engine()
    else:
        session.eager_scores[(workload_name, case.name)] = reference
    methods.clear()
    hf = llm = engine = None  # free both models before the next benchmark
    free(session.device)
    tol = engine_tolerance(dtype, reference)
    worst = []
    for row, (method, got) in zip(rows, scores.items(), strict=True):
        row["max_abs_diff_vs_engine"] = max_abs_diff(got, reference)
        row["engine_speedup"] = row["median_s"] / rows[0]["median_s"]
        if not row["max_abs_diff_vs_engine"] <= tol:
            worst.append(f"{method}: {row['max_abs_diff_vs_engine']:.3e}")
    session.report.table.extend(rows)
    for row in rows:
        print(format_row(row), file=sys.stderr, flush=True)
    data = {"rows": rows, "tolerance": tol}
    if worst:
        raise CheckFailed(
            f"scores differ from the {'eager ' if compiled else ''}engine beyond {tol:.2e}: "
            + "; ".join(worst)
        )
    parts = [f"engine {rows[0]['items_per_s']:.1f} items/s"]
    parts += [
        f"{r['method'].split(' (')[0]} {r['items_per_s']:.1f} items/s (engine speed-up "
        f"{r['median_s'] / rows[0]['median_s']:.2f}x)"
        for r in rows[1:]
    ]
    if compiled:
        parts.append(f"first call (compile) {rows[0]['warmup_s']:.1f}s")
    return "; ".join(parts) + f"; scores within {tol:.1e}", data


class _OnDevice:
    """The tokenizer, with its ``return_tensors="pt"`` outputs put on the model's device (the baselines in
    ``benchmarks/baselines.py`` build CPU tensors; TRL's own path moves them itself)."""

    def __init__(self, tok: Any, device: torch.device) -> None:
        self._tok, self._device = tok, device

    def __getattr__(self, name: str) -> Any:
        return getattr(self._tok, name)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        out = self._tok(*args, **kwargs)
        return out.to(self._device) if kwargs.get("return_tensors") == "pt" else out

    def encode(self, *args: Any, **kwargs: Any) -> Any:
        out = self._tok.encode(*args, **kwargs)
        return out.to(self._device) if kwargs.get("return_tensors") == "pt" else out


@functools.cache
def trl_impl() -> dict[str, str]:
    """Which TRL path ``baselines.trl_builtin`` takes here (it falls back to a replica without TRL)."""
    try:
        import trl
        from trl import GRPOTrainer  # noqa: F401

        return {"name": f"TRL {trl.__version__} GRPOTrainer._calculate_rewards", "real": "yes"}
    except Exception as e:  # noqa: BLE001 - TRL or one of its dependencies (datasets, pyarrow...) is missing
        return {
            "name": "TRL not importable: benchmarks/baselines.py's line-for-line replica of its padded "
            "right-side forward, logits[:, 0]",
            "real": "no",
            "why": f"{type(e).__name__}: {e}",
        }
