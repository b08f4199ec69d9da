"""Engine vs. baselines, in one process, on the same model object and the same texts.

    python -m benchmarks.run                      # all workloads, 3 interleaved repeats, table + JSON
    python -m benchmarks.run --workloads grpo --repeats 5 --ablation
    python -m benchmarks.run --remote             # also /pooling over HTTP at concurrency 32
    python -m benchmarks.run --quick              # CI smoke run (small model and workloads, ~1-2 min)
    python -m benchmarks.run --deterministic --baselines ""   # + LLM(deterministic=True) vs the default engine

Every repeat runs every method once, in a rotated order, so background load hits all methods alike;
reported times are medians. Peak memory is the process's resident-set high-water mark during a call
minus its resident set before it (Linux ``/proc/self/clear_refs``), after returning freed memory to the
OS. Scores are compared with the engine's in fp32 (max abs diff).
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import dataclasses
import gc
import json
import os
import platform
import re
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rlhf_rewards.engine.stats import RunStats

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")

import torch  # noqa: E402

from benchmarks import baselines  # noqa: E402
from benchmarks.flops import Shapes, engine_flops, matmul_peak, padded_flops, sequences_flops  # noqa: E402
from benchmarks.workloads import (  # noqa: E402
    STEP_TAG,
    ModelShape,
    Workload,
    build_model,
    grpo_workload,
    mixed_workload,
    prm_workload,
    token_lengths,
)

# ---------------------------------------------------------------------- memory
_libc = None
with contextlib.suppress(OSError):
    _libc = ctypes.CDLL("libc.so.6")


def _status_mib(field_name: str) -> float:
    with open("/proc/self/status") as f:
        m = re.search(rf"{field_name}:\s+(\d+)", f.read())
    return int(m.group(1)) / 1024 if m else float("nan")


class PeakMemory:
    """Peak extra resident memory (MiB) of the block; CUDA peak allocation on GPUs."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.peak_mib = float("nan")

    def __enter__(self) -> PeakMemory:
        gc.collect()
        if _libc is not None:
            _libc.malloc_trim(0)
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self._base = torch.cuda.memory_allocated()
            return self
        self._base = _status_mib("VmRSS")
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # reset the high-water mark
        except OSError:
            pass
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            self.peak_mib = (torch.cuda.max_memory_allocated() - self._base) / 2**20
        else:
            self.peak_mib = _status_mib("VmHWM") - self._base


# ---------------------------------------------------------------------- methods
@dataclass
class Method:
    name: str
    fn: Callable[[], Any]
    kind: str  # "baseline" or "engine"
    flops: Callable[[], float] | None = None
    times: list[float] = field(default_factory=list)
    peaks: list[float] = field(default_factory=list)
    scores: Any = None
    stats: RunStats | None = None


def _flat(scores: Any) -> torch.Tensor:
    if isinstance(scores, torch.Tensor):
        return scores.float().flatten()
    return torch.tensor([x for row in scores for x in row], dtype=torch.float32)


def _max_diff(a: Any, b: Any) -> float:
    fa, fb = _flat(a), _flat(b)
    if fa.shape != fb.shape:
        return float("inf")
    return float((fa - fb).abs().max()) if fa.numel() else 0.0


@contextlib.contextmanager
def runner_variant(llm: Any, **flags: Any):
    """Swap ``llm.runner`` for one with ``flags`` (packing, prefix_sharing, prune_last_layer...)."""
    from rlhf_rewards.engine.runner import ModelRunner

    saved = llm.runner
    llm.runner = ModelRunner(
        saved.model, saved.device, saved.max_num_batched_tokens, saved.forward_kwargs, **flags
    )
    try:
        yield llm.runner
    finally:
        llm.runner = saved


def _engine_classify(llm: Any, texts: list[str], **flags: Any) -> Callable[[], torch.Tensor]:
    from rlhf_rewards import PoolingParams

    def run() -> torch.Tensor:
        with runner_variant(llm, **flags) if flags else contextlib.nullcontext():
            outs = llm.encode(
                texts,
                PoolingParams(use_activation=False),
                pooling_task="classify",
                use_tqdm=False,
                add_special_tokens=False,
            )
            run.stats = dataclasses.replace(llm.runner.last_stats)
        return torch.stack([o.outputs.data[0] for o in outs])

    run.stats = None
    return run


def _engine_prm(llm: Any, texts: list[str], **flags: Any) -> Callable[[], list[list[float]]]:
    def run() -> list[list[float]]:
        with runner_variant(llm, **flags) if flags else contextlib.nullcontext():
            outs = llm.encode(texts, pooling_task="token_classify", use_tqdm=False, add_special_tokens=False)
            run.stats = dataclasses.replace(llm.runner.last_stats)
        return [o.outputs.data[:, 1].tolist() for o in outs]

    run.stats = None
    return run


ABLATIONS = {
    "engine: padded batches": {"packing": False},
    "engine: packed, no prefix sharing": {"prefix_sharing": False, "prune_last_layer": False},
    "engine: packed + prefix sharing": {"prune_last_layer": False},
    "engine + torch.compile (enforce_eager=False)": {"compile": True},
}


#: Name of the deterministic engine's row (``--deterministic``).
DETERMINISTIC = "rlhf-rewards engine, deterministic=True"


def build_methods(
    workload: Workload,
    rm: Any,
    prm: Any,
    tok: Any,
    ablation: bool,
    deterministic: dict[str, Any] | None = None,
) -> list[Method]:
    """The timed methods of one workload; ``deterministic`` maps ``"rm"``/``"prm"`` to an
    ``LLM(..., deterministic=True)`` twin of ``rm``/``prm`` (built once, as a user would)."""
    shapes = Shapes.from_config((prm if workload.name == "prm" else rm).model.config)
    lengths = token_lengths(tok, workload.texts)
    methods: list[Method] = []
    if workload.name == "prm":
        model = prm.model.hf_model
        methods.append(
            Method(
                "model card loop (per sample + make_step_rewards)",
                lambda: baselines.prm_model_card(model, tok, workload.texts, STEP_TAG),
                "baseline",
                lambda: sequences_flops(shapes, lengths),
            )
        )
        engine_fn, llm = _engine_prm, prm
    else:
        model = rm.model.hf_model
        prompts = workload.prompts or workload.texts
        completions = workload.completions or [""] * len(workload.texts)
        methods += [
            Method(
                "TRL built-in (GRPOTrainer._calculate_rewards)",
                lambda: baselines.trl_builtin(model, tok, prompts, completions),
                "baseline",
                lambda: padded_flops(shapes, lengths),
            ),
            Method(
                "HF loop (batches of 8, padded)",
                lambda: baselines.hf_loop(model, tok, workload.texts),
                "baseline",
                lambda: padded_flops(shapes, lengths, 8),
            ),
            Method(
                "unpadded loop (one forward per text)",
                lambda: baselines.unpadded_loop(model, tok, workload.texts),
                "baseline",
                lambda: sequences_flops(shapes, lengths),
            ),
        ]
        engine_fn, llm = _engine_classify, rm
    if ablation:
        for name, flags in ABLATIONS.items():
            fn = engine_fn(llm, workload.texts, **flags)
            methods.append(Method(name, fn, "ablation", (lambda fn=fn: engine_flops(shapes, fn.stats))))
    if deterministic:
        det_fn = engine_fn(deterministic["prm" if workload.name == "prm" else "rm"], workload.texts)
        methods.append(
            Method(DETERMINISTIC, det_fn, "deterministic", lambda: engine_flops(shapes, det_fn.stats))
        )
    fn = engine_fn(llm, workload.texts)
    methods.append(Method("rlhf-rewards engine", fn, "engine", lambda: engine_flops(shapes, fn.stats)))
    return methods


def run_workload(
    workload: Workload, methods: list[Method], repeats: int, device: torch.device, shapes: Shapes
) -> dict[str, Any]:
    # Warm-up of the engine paths only (first-call set-up); the baselines are eager PyTorch loops whose
    # single calls take long enough that a warm-up would only add minutes. Scores come from the first run.
    for m in methods:
        if m.kind != "baseline":
            m.scores = m.fn()
    engine = methods[-1]
    peaks: list[float] = []
    for r in range(repeats):
        order = methods[r % len(methods) :] + methods[: r % len(methods)]
        for m in order:
            with PeakMemory(device) as mem:
                t = time.perf_counter()
                out = m.fn()
                m.times.append(time.perf_counter() - t)
            if m.scores is None:
                m.scores = out
            del out
            m.peaks.append(mem.peak_mib)
            if m is engine:
                stats = getattr(m.fn, "stats", None)
                tokens = stats.tokens_run / max(stats.forwards, 1) if stats is not None else 0.0
                peaks.append(matmul_peak(shapes, tokens))
    m_stats = getattr(engine.fn, "stats", None)
    peak = statistics.median(peaks) if peaks else float("nan")
    baseline = methods[0]
    rows = []
    for m in methods:
        t = statistics.median(m.times)
        flops = m.flops() if m.flops is not None else float("nan")
        rows.append(
            {
                "method": m.name,
                "kind": m.kind,
                "median_s": t,
                "times_s": m.times,
                "items_per_s": len(workload.texts) / t,
                "speedup_vs_first_baseline": statistics.median(baseline.times) / t,
                "engine_speedup": t / statistics.median(engine.times),
                "peak_mib": statistics.median(m.peaks),
                "max_abs_diff_vs_engine": _max_diff(m.scores, engine.scores),
                "max_abs_diff_vs_first_baseline": _max_diff(m.scores, baseline.scores)
                if baseline.kind == "baseline"
                else None,
                "gflop": flops / 1e9,
                "gflop_per_s": flops / t / 1e9,
                "matmul_utilisation": flops / t / peak,
                "stats": dataclasses.asdict(m.fn.stats) if getattr(m.fn, "stats", None) else None,
            }
        )
    lengths = [len(x) for x in methods[-1].scores] if workload.name == "prm" else None
    return {
        "workload": workload.name,
        "items": len(workload.texts),
        "tokens": m_stats.tokens_requested if m_stats else None,
        "matmul_peak_gflop_per_s": peak / 1e9,
        "steps": sum(lengths) if lengths else None,
        "rows": rows,
    }


# ---------------------------------------------------------------------- remote
def run_remote(
    workload: Workload,
    model_dir: Path,
    llm: Any,
    repeats: int,
    concurrency: int,
    port: int,
    extra_args: list[str],
) -> dict[str, Any]:
    """Start ``rlhf-rewards serve`` and time ``/pooling`` at ``concurrency`` against in-process ``encode``."""
    from benchmarks import remote

    return remote.compare(
        workload, model_dir, llm, repeats=repeats, concurrency=concurrency, port=port, extra_args=extra_args
    )


# ---------------------------------------------------------------------- report
def machine() -> dict[str, Any]:
    cpu = platform.processor() or ""
    with contextlib.suppress(OSError):
        with open("/proc/cpuinfo") as f:
            m = re.search(r"model name\s*:\s*(.+)", f.read())
            cpu = m.group(1).strip() if m else cpu
    info = {
        "cpu": cpu,
        "logical_cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }
    with contextlib.suppress(Exception):
        import transformers

        info["transformers"] = transformers.__version__
    with contextlib.suppress(Exception):
        import trl

        info["trl"] = trl.__version__
    with contextlib.suppress(OSError):
        info["load_average_at_end"] = os.getloadavg()
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info


#: Issue targets: (workload, baseline key) -> minimum engine speed-up.
TARGETS: dict[tuple[str, str], float] = {
    ("grpo", "trl"): 6.0,
    ("grpo", "unpadded"): 2.0,
    ("mixed", "trl"): 3.0,
    ("mixed", "unpadded"): 1.2,
    ("prm", "card"): 3.0,
}
#: Model FLOP utilisation the issue aims for (engine FLOP/s over measured matmul FLOP/s).
MFU_TARGET = 0.6
#: Remote throughput over in-process throughput the issue asks for.
REMOTE_TARGET = 0.9
#: Deterministic engine throughput over the default engine's (issue 18).
DETERMINISTIC_TARGET = 0.9


def method_key(name: str) -> str:
    """Short key of a method name (``trl``, ``hf8``, ``unpadded``, ``card``, ``engine``, ``ablation``)."""
    for prefix, key in (
        ("TRL", "trl"),
        ("HF loop", "hf8"),
        ("unpadded", "unpadded"),
        ("model card", "card"),
        ("rlhf-rewards", "engine"),
    ):
        if name.startswith(prefix):
            return key
    return "ablation"


def summary_rows(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (workload, baseline): times, ratio, target, peaks, score difference."""
    rows = []
    for res in results:
        engine = next(r for r in res["rows"] if r["kind"] == "engine")
        for row in res["rows"]:
            if row["kind"] != "baseline":
                continue
            key = method_key(row["method"])
            target = TARGETS.get((res["workload"], key))
            ratio = row["median_s"] / engine["median_s"]
            rows.append(
                {
                    "workload": res["workload"],
                    "baseline": row["method"],
                    "baseline_s": row["median_s"],
                    "engine_s": engine["median_s"],
                    "ratio": ratio,
                    "target": target,
                    "met": None if target is None else ratio >= target,
                    "baseline_peak_mib": row["peak_mib"],
                    "engine_peak_mib": engine["peak_mib"],
                    "max_abs_diff": row["max_abs_diff_vs_engine"],
                }
            )
    return rows


def format_summary(results: list[dict[str, Any]], quick: bool = False) -> str:
    """The issue's table: workload, baseline, this project, ratio, peak memory, score max-abs-diff.

    With ``quick`` the targets are shown but not judged: they are set for the full workloads.
    """
    lines = [
        "| workload | baseline | baseline s | rlhf-rewards s | ratio (target) | peak MiB baseline / rlhf-rewards "
        "| max abs diff |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in summary_rows(results):
        if r["target"] is None:
            target = ""
        elif quick:
            target = f" (full-run target {r['target']:g}x)"
        else:
            target = f" ({'>=' if r['met'] else 'MISSED >='}{r['target']:g}x)"
        lines.append(
            f"| {r['workload']} | {r['baseline']} | {r['baseline_s']:.2f} | {r['engine_s']:.2f} | "
            f"{r['ratio']:.2f}x{target} | {r['baseline_peak_mib']:.0f} / {r['engine_peak_mib']:.0f} | "
            f"{r['max_abs_diff']:.1e} |"
        )
    for res in results:
        engine = next(r for r in res["rows"] if r["kind"] == "engine")
        lines.append(
            f"\n{res['workload']}: engine {engine['gflop_per_s']:.1f} GFLOP/s of forward work vs measured fp32 matmul "
            f"{res['matmul_peak_gflop_per_s']:.1f} GFLOP/s on the same shapes -> MFU "
            f"{100 * engine['matmul_utilisation']:.0f}% (aim {100 * MFU_TARGET:.0f}%)"
        )
    return "\n".join(lines)


def deterministic_rows(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per workload: deterministic vs default engine time, throughput ratio, and score differences."""
    rows = []
    for res in results:
        engine = next(r for r in res["rows"] if r["kind"] == "engine")
        for row in res["rows"]:
            if row["kind"] != "deterministic":
                continue
            ratio = engine["median_s"] / row["median_s"]
            rows.append(
                {
                    "workload": res["workload"],
                    "default_s": engine["median_s"],
                    "deterministic_s": row["median_s"],
                    "default_times_s": engine["times_s"],
                    "deterministic_times_s": row["times_s"],
                    "throughput_ratio": ratio,
                    "target": DETERMINISTIC_TARGET,
                    "met": ratio >= DETERMINISTIC_TARGET,
                    "max_abs_diff_vs_default": row["max_abs_diff_vs_engine"],
                    "max_abs_diff_vs_baseline": row["max_abs_diff_vs_first_baseline"],
                }
            )
    return rows


def format_deterministic(results: list[dict[str, Any]]) -> str:
    """One line per workload for ``--deterministic``."""
    lines = []
    for r in deterministic_rows(results):
        vs_baseline = (
            f", vs the first baseline {r['max_abs_diff_vs_baseline']:.1e}"
            if r["max_abs_diff_vs_baseline"] is not None
            else ""
        )
        lines.append(
            f"deterministic {r['workload']}: {r['deterministic_s']:.2f} s vs default {r['default_s']:.2f} s -> "
            f"{r['throughput_ratio']:.2f}x default throughput ({'>=' if r['met'] else 'MISSED >='}"
            f"{r['target']:g}x); max abs diff vs default {r['max_abs_diff_vs_default']:.1e}{vs_baseline}"
        )
    return "\n".join(lines)


def format_table(results: list[dict[str, Any]]) -> str:
    """Every method of every workload, with work done (GFLOP) and utilisation."""
    lines = []
    header = (
        "| workload | method | median s | items/s | engine speed-up | peak MiB | max abs diff | GFLOP | "
        "GFLOP/s | % matmul peak |"
    )
    lines.append(header)
    lines.append("|" + "---|" * 10)
    for res in results:
        for row in res["rows"]:
            name = f"**{row['method']}**" if row["kind"] == "engine" else row["method"]
            lines.append(
                f"| {res['workload']} | {name} | {row['median_s']:.3f} | {row['items_per_s']:.1f} | "
                f"{row['engine_speedup']:.2f}x | {row['peak_mib']:.0f} | {row['max_abs_diff_vs_engine']:.1e} | "
                f"{row['gflop']:.1f} | {row['gflop_per_s']:.1f} | {100 * row['matmul_utilisation']:.0f}% |"
            )
    return "\n".join(lines)


RESULTS_DIR = Path(__file__).resolve().parent / "results"
#: ``--quick``: a smaller model and workloads (CI smoke run, about a minute), same code paths.
QUICK = {
    "layers": 2,
    "hidden": 256,
    "repeats": 1,
    "grpo": {"prompts": 2},
    "mixed": {"n": 16},
    "prm": {"problems": 1},
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--workloads", default="grpo,mixed,prm", help="comma-separated: grpo, mixed, prm")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="CI smoke run: 2 layers of 256, 2x8 GRPO, 16 mixed, 1x8 PRM texts, 1 repeat",
    )
    parser.add_argument(
        "--repeats",
        type=int,
        default=None,
        help="interleaved timed repeats per method (median); default 3, 1 with --quick",
    )
    parser.add_argument("--layers", type=int, default=None, help=f"default {ModelShape.num_hidden_layers}")
    parser.add_argument("--hidden", type=int, default=None, help=f"default {ModelShape.hidden_size}")
    parser.add_argument("--max-num-batched-tokens", type=int, default=None)
    parser.add_argument("--ablation", action="store_true", help="also time the engine with optimizations off")
    parser.add_argument(
        "--deterministic",
        action="store_true",
        help="also time LLM(deterministic=True) (batch-invariant scores) against the default engine",
    )
    parser.add_argument(
        "--baselines",
        default="trl,hf8,unpadded,card",
        help="comma-separated baselines to time: trl, hf8, unpadded, card (default all), or vllm: "
        "vLLM's CPU build side by side (benchmarks/vs_vllm.py; its own rows)",
    )
    parser.add_argument(
        "--vllm-workloads",
        default="grpo,prm,unrelated,per_call,repeat,server",
        help="rows of --baselines vllm: grpo, prm, unrelated, per_call, repeat, server",
    )
    parser.add_argument(
        "--threads", type=int, default=2, help="--baselines vllm: cores and threads per engine"
    )
    parser.add_argument(
        "--concurrencies", default="8,32", help="--baselines vllm: server client concurrencies"
    )
    parser.add_argument(
        "--omp-wait-policy",
        default=None,
        choices=["ACTIVE", "PASSIVE"],
        help="--baselines vllm: OMP_WAIT_POLICY of both engines' processes (unset: OpenMP's default "
        "spin-waiting, which costs both several times their CPU time on an oversubscribed "
        "machine)",
    )
    parser.add_argument(
        "--prefix-cache-bytes",
        type=int,
        default=None,
        help="--baselines vllm: this engine's prefix cache bound (default: the engine's)",
    )
    parser.add_argument(
        "--json",
        default=None,
        help="where to write the results; default benchmarks/results/{full,quick}.json",
    )
    parser.add_argument(
        "--remote",
        action="store_true",
        help="also time /pooling of `rlhf-rewards serve` (started here) at --concurrency",
    )
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--port", type=int, default=18765)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    for name in ("repeats", "layers", "hidden", "max_num_batched_tokens", "concurrency"):
        value = getattr(args, name)
        if value is not None and value < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1, got {value}")
    quick = QUICK if args.quick else {}
    repeats = args.repeats or quick.get("repeats", 3)
    layers = args.layers or quick.get("layers", ModelShape.num_hidden_layers)
    hidden = args.hidden or quick.get("hidden", ModelShape.hidden_size)
    if hidden % 128:
        parser.error(
            f"--hidden must be a multiple of 128 (heads of 64, 2 query heads per key-value head), got {hidden}"
        )
    wanted = {b.strip() for b in args.baselines.split(",") if b.strip()}
    if "vllm" in wanted:
        from benchmarks import vs_vllm

        rows = [n.strip() for n in args.vllm_workloads.split(",") if n.strip()]
        bad = set(rows) - {"grpo", "prm", "unrelated", "per_call", "repeat", "server"}
        if bad:
            parser.error(f"--vllm-workloads: unknown {sorted(bad)}")
        if args.omp_wait_policy:
            os.environ["OMP_WAIT_POLICY"] = args.omp_wait_policy  # every process of both sides inherits it
        return vs_vllm.main(
            rows,
            repeats=args.repeats or 3,
            threads=args.threads,
            server="server" in rows,
            concurrencies=[int(c) for c in args.concurrencies.split(",") if c.strip()],
            cache_bytes=args.prefix_cache_bytes,
            json_path=Path(args.json) if args.json else RESULTS_DIR / "vs-vllm.json",
        )
    if wanted - {"trl", "hf8", "unpadded", "card"}:
        parser.error(f"--baselines: unknown {sorted(wanted - {'trl', 'hf8', 'unpadded', 'card'})}")
    json_path = Path(args.json) if args.json else RESULTS_DIR / ("quick.json" if args.quick else "full.json")

    from transformers import AutoTokenizer

    from rlhf_rewards import LLM

    started = time.perf_counter()
    device = torch.device(args.device)
    shape = ModelShape(
        num_hidden_layers=layers,
        hidden_size=hidden,
        intermediate_size=3 * hidden,
        num_attention_heads=hidden // 64,
        num_key_value_heads=max(1, hidden // 128),
    )
    names = [w.strip() for w in args.workloads.split(",") if w.strip()]
    unknown = [n for n in names if n not in ("grpo", "mixed", "prm")]
    if unknown:
        parser.error(f"--workloads: unknown {unknown}; choose from grpo, mixed, prm")
    rm_dir = build_model("rm", shape)
    tok = AutoTokenizer.from_pretrained(str(rm_dir))
    kwargs = {"device": args.device, "dtype": "float32"}
    if args.max_num_batched_tokens:
        kwargs["max_num_batched_tokens"] = args.max_num_batched_tokens
    rm = LLM(str(rm_dir), **kwargs)
    prm = None
    if "prm" in names:
        prm_dir = build_model("prm", shape)
        step_id = tok.convert_tokens_to_ids(STEP_TAG)
        prm = LLM(str(prm_dir), pooler_config={"pooling_type": "STEP", "step_tag_id": step_id}, **kwargs)
    twins = None
    if args.deterministic:
        twins = {"rm": LLM(str(rm_dir), deterministic=True, **kwargs)}
        if prm is not None:
            twins["prm"] = LLM(
                str(prm_dir),
                pooler_config={"pooling_type": "STEP", "step_tag_id": step_id},
                deterministic=True,
                **kwargs,
            )
    makers = {"grpo": grpo_workload, "mixed": mixed_workload, "prm": prm_workload}
    results = []
    for name in names:
        workload = makers[name](tok, **quick.get(name, {}))
        methods = build_methods(workload, rm, prm, tok, args.ablation, twins)
        methods = [m for m in methods if m.kind != "baseline" or method_key(m.name) in wanted]
        shapes = Shapes.from_config((prm if name == "prm" else rm).model.config)
        print(
            f"[{name}] {len(workload.texts)} texts, {sum(token_lengths(tok, workload.texts))} tokens, "
            f"load average {os.getloadavg()[0]:.1f}",
            file=sys.stderr,
            flush=True,
        )
        res = run_workload(workload, methods, repeats, device, shapes)
        results.append(res)
        print(format_table([res]), file=sys.stderr, flush=True)
    remote_results = []
    if args.remote:
        for name in [n for n in names if n != "prm"]:
            workload = makers[name](tok, **quick.get(name, {}))
            print(
                f"[remote {name}] starting `rlhf-rewards serve` on port {args.port}",
                file=sys.stderr,
                flush=True,
            )
            remote_results.append(run_remote(workload, rm_dir, rm, repeats, args.concurrency, args.port, []))
    report = {
        "command": "python -m benchmarks.run " + " ".join(argv if argv is not None else sys.argv[1:]),
        "quick": bool(args.quick),
        "repeats": repeats,
        "wall_s": time.perf_counter() - started,
        "machine": machine(),
        "model": {"shape": shape.config_fields(), "dtype": "float32"},
        "summary": summary_rows(results),
        "deterministic": deterministic_rows(results),
        "results": results,
        "remote": remote_results,
        "remote_target": REMOTE_TARGET,
        "mfu_target": MFU_TARGET,
    }
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(report, indent=2))
    print(format_table(results))
    print()
    print(format_summary(results, quick=bool(args.quick)))
    if args.deterministic:
        print(format_deterministic(results))
    for rr in remote_results:
        print(
            f"remote {rr['workload']}: /pooling at concurrency {rr['concurrency']} {rr['remote_items_per_s']:.1f} "
            f"items/s vs in-process {rr['local_items_per_s']:.1f} items/s -> {rr['ratio']:.2f}x "
            f"(target >= {REMOTE_TARGET}x; max abs diff {rr['max_abs_diff']:.1e})"
        )
    m = report["machine"]
    print(
        f"machine: {m['cpu']}, {m['logical_cpus']} CPUs, torch {m['torch']} ({m['torch_threads']} threads), "
        f"load average at end {m.get('load_average_at_end')}; {report['wall_s']:.0f} s; JSON: {json_path}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
