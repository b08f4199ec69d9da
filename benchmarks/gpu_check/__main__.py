"""``python -m benchmarks.gpu_check``: the command line (see the package docstring)."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from transformers import AutoTokenizer

from benchmarks import gpu_check
from benchmarks.gpu_check.bench import bench, trl_impl
from benchmarks.gpu_check.cases import BENCH_MODELS, CASES
from benchmarks.gpu_check.checks import (
    SLEEP_FREED_FRACTION,
    Session,
    accuracy,
    build,
    deterministic,
    sleep_wake,
)
from benchmarks.gpu_check.reference import FP32_ATOL, HALF_REL_TOL, HALF_SLACK, HALF_VS_HF_FACTOR, free
from benchmarks.gpu_check.report import Report, format_table
from benchmarks.run import machine
from benchmarks.workloads import benchmark_tokenizer

DEFAULT_OUT = Path(__file__).resolve().parents[2] / "outputs" / "gpu_check.json"


def main(argv: list[str] | None = None) -> int:
    """Build the models, run the checks chosen, print the table and one line per check; 1 if any FAILs."""
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.gpu_check",
        description=gpu_check.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--device",
        default="cuda" if torch.cuda.is_available() else "cpu",
        help="cuda, cuda:N or cpu (default: cuda when available)",
    )
    parser.add_argument(
        "--tiny", action="store_true", help="2 layers x hidden 128 and a few texts (the CPU test)"
    )
    parser.add_argument(
        "--out",
        default=str(DEFAULT_OUT),
        help=f"JSON report (default {DEFAULT_OUT}); also copied into $OUT when that is set",
    )
    parser.add_argument("--models", default=",".join(CASES), help=f"comma-separated, from {', '.join(CASES)}")
    parser.add_argument(
        "--checks",
        default="accuracy,sleep,deterministic,bench,compiled",
        help="comma-separated, from accuracy, sleep, deterministic, bench, compiled",
    )
    parser.add_argument(
        "--repeats",
        type=int,
        default=None,
        help="timed repeats per method (default 3 on CUDA, 1 on CPU), after one warm-up",
    )
    parser.add_argument(
        "--budget-s",
        type=float,
        default=None,
        help="benchmarks that would start after this many "
        "seconds are skipped (default 360 on CUDA, unlimited on CPU)",
    )
    parser.add_argument(
        "--cpu-compile", action="store_true", help="also run the compiled benchmarks on a CPU"
    )
    args = parser.parse_args(argv)
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    checks = {c.strip() for c in args.checks.split(",") if c.strip()}
    if unknown := [m for m in models if m not in CASES]:
        parser.error(f"--models: unknown {unknown}; choose from {', '.join(CASES)}")
    if unknown := sorted(checks - {"accuracy", "sleep", "deterministic", "bench", "compiled"}):
        parser.error(
            f"--checks: unknown {unknown}; choose from accuracy, sleep, deterministic, bench, compiled"
        )
    if args.repeats is not None and args.repeats < 1:
        parser.error(f"--repeats must be at least 1, got {args.repeats}")
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: torch.cuda.is_available() is False here; use --device cpu")
    if args.budget_s is None:
        args.budget_s = 360.0 if device.type == "cuda" else float("inf")
    if device.type == "cuda":
        # fp32 must mean fp32: no TF32 matmuls behind the 1e-4 comparison.
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    meta = {
        "command": "python -m benchmarks.gpu_check " + " ".join(argv if argv is not None else sys.argv[1:]),
        "device": str(device),
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "tiny": args.tiny,
        "machine": machine(),
        "trl_builtin": trl_impl(),
        "tolerances": {
            "fp32_atol": FP32_ATOL,
            "half_rel_tol": HALF_REL_TOL,
            "half_vs_hf_factor": HALF_VS_HF_FACTOR,
            "half_slack": HALF_SLACK,
            "sleep_freed_fraction": SLEEP_FREED_FRACTION,
        },
        "models": {},
    }
    report = Report(Path(args.out), meta)
    print(
        f"gpu_check on {device}{' (' + meta['gpu'] + ')' if meta['gpu'] else ''}, tiny={args.tiny}; "
        f"TRL built-in path: {trl_impl()['name']}",
        file=sys.stderr,
        flush=True,
    )
    tok = AutoTokenizer.from_pretrained(str(benchmark_tokenizer()))
    session = Session(args, report, tok)
    built = []
    for name in models:
        if report.run(f"build {name}", lambda name=name: build(session, CASES[name])) == "PASS":
            built.append(name)
    for name in models:
        if name not in built:
            continue
        if "accuracy" in checks:
            accuracy(session, CASES[name])
        if "sleep" in checks:
            sleep_wake(session, CASES[name])
        if "deterministic" in checks:
            deterministic(session, CASES[name])
        session.bf16_llms.pop(name, None)
        free(device)
    for compiled in (False, True):
        if ("compiled" if compiled else "bench") not in checks:
            continue
        for workload_name, names in BENCH_MODELS.items():
            for name in names:
                if name in built:
                    bench(session, workload_name, CASES[name], compiled)
    report.write()
    print(f"\nTRL built-in path: {trl_impl()['name']}")
    if report.table:
        print(format_table(report.table))
    print()
    for check in report.checks:
        print(report.line(check))
    counts = report.counts()
    wall = time.perf_counter() - report.started
    print(
        f"gpu_check: {counts['PASS']} PASS, {counts['FAIL']} FAIL, {counts['SKIP']} SKIP, {counts['N/A']} N/A "
        f"on {meta['gpu'] or device} in {wall:.0f}s; JSON: {report.out}"
    )
    return 1 if counts["FAIL"] else 0


if __name__ == "__main__":
    sys.exit(main())
