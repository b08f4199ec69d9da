"""The checks of one model: build, accuracy against transformers, sleep/wake, deterministic mode.

:class:`Session` holds what one invocation shares between them (device, tokenizer, built checkpoints, the
bfloat16 engine the accuracy check leaves for the sleep check); each check is a function of the session, a
model case and the report, and records its lines in the report.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from benchmarks.gpu_check.cases import DETERMINISTIC_DTYPES, DETERMINISTIC_MODELS, ModelCase, build_case
from benchmarks.gpu_check.reference import (
    DTYPES,
    FP32_ATOL,
    engine_scores,
    engine_tolerance,
    free,
    half_tolerance,
    load_reference,
    max_abs_diff,
    per_text,
    reference_scores,
    sync,
    varlen_setting,
    worker_scores,
)
from benchmarks.gpu_check.report import CheckFailed, NotApplicable, Report
from benchmarks.workloads import (
    STEP_TAG,
    Workload,
    grpo_workload,
    mixed_workload,
    prm_workload,
    token_lengths,
)

#: Share of the weights' bytes that sleep() must give back to the driver.
SLEEP_FREED_FRACTION = 0.9


@dataclass
class Session:
    """What one invocation builds and shares between its checks."""

    args: argparse.Namespace
    report: Report
    tok: Any
    device: torch.device = field(init=False)
    paths: dict[str, Path] = field(default_factory=dict)
    #: The bfloat16 engine of each model that the accuracy check loaded, reused by the sleep check.
    bf16_llms: dict[str, Any] = field(default_factory=dict)
    #: (workload, model) -> the eager engine's bench scores, the reference of the compiled engine's.
    eager_scores: dict[tuple[str, str], torch.Tensor] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.device = torch.device(self.args.device)

    @property
    def cuda(self) -> bool:
        """Whether the checks run on a CUDA device."""
        return self.device.type == "cuda"

    @property
    def tiny(self) -> bool:
        """``--tiny``: tiny shapes and workloads."""
        return self.args.tiny

    @property
    def step_id(self) -> int:
        """Token id of the PRM's step tag."""
        return self.tok.convert_tokens_to_ids(STEP_TAG)

    def over_budget(self) -> bool:
        """Whether ``--budget-s`` has run out (a benchmark that would start now is skipped)."""
        return time.perf_counter() > self.report.started + self.args.budget_s

    def texts(self, kind: str) -> list[str]:
        """Accuracy texts: GRPO groups (shared prompts: the prefix-sharing path) plus unrelated texts (RM), or
        PRM conversations (a problem shared by its solutions)."""
        n = 1 if self.tiny else 2
        if kind == "prm":
            return prm_workload(self.tok, problems=n, samples=4).texts
        return grpo_workload(self.tok, prompts=n, group=4).texts + mixed_workload(self.tok, n=4 * n).texts

    def bench_workload(self, workload_name: str) -> Workload:
        """The benchmarks' GRPO or PRM workload (one prompt or problem with ``--tiny``)."""
        if workload_name == "grpo":
            return grpo_workload(self.tok, **({"prompts": 1} if self.tiny else {}))
        return prm_workload(self.tok, **({"problems": 1, "samples": 4} if self.tiny else {}))

    def llm(self, case: ModelCase, dtype: str, **kwargs: Any) -> Any:
        """The engine on ``case``'s checkpoint in ``dtype``."""
        from rlhf_rewards import LLM

        return LLM(str(self.paths[case.name]), device=str(self.device), dtype=dtype, **kwargs)

    def reference(self, case: ModelCase, dtype: str) -> torch.nn.Module:
        """transformers' own model of ``case`` in ``dtype``."""
        return load_reference(case.architecture, self.paths[case.name], dtype, self.device)


# ---------------------------------------------------------------------- build
def build(session: Session, case: ModelCase) -> tuple[str, dict[str, Any]]:
    """Build ``case`` (or find it cached) and describe its shape in the report."""
    t0 = time.perf_counter()
    path = build_case(case, session.tiny, session.device)
    session.paths[case.name] = path
    config = json.loads((path / "config.json").read_text())
    size = sum(f.stat().st_size for f in path.glob("*.safetensors"))
    shape = {
        k: config.get(k)
        for k in (
            "hidden_size",
            "num_hidden_layers",
            "num_attention_heads",
            "num_key_value_heads",
            "head_dim",
            "intermediate_size",
            "vocab_size",
        )
    }
    note = "tiny: 2 layers x hidden 128" if session.tiny else case.note
    session.report.meta["models"][case.name] = {
        "architecture": case.architecture,
        "shaped_as": case.shaped_as,
        "note": note,
        "shape": shape,
        "path": str(path),
        "safetensors_mib": size / 2**20,
    }
    return (
        f"{case.architecture} shaped as {case.shaped_as} ({note}), {size / 2**20:.0f} MiB bf16, "
        f"{time.perf_counter() - t0:.1f}s"
    ), {"shape": shape}


# ---------------------------------------------------------------------- accuracy
def accuracy(session: Session, case: ModelCase) -> None:
    """``accuracy <model> <dtype> varlen=<on|off>`` for every dtype; keeps the bfloat16 engine for ``sleep``."""
    texts = session.texts(case.kind)
    refs: dict[str, torch.Tensor] = {}

    def reference(dtype: str) -> torch.Tensor:
        if dtype not in refs:
            model = session.reference(case, dtype)
            refs[dtype] = reference_scores(model, session.tok, texts, case.kind, session.step_id)
            del model
            free(session.device)
        return refs[dtype]

    for dtype in DTYPES:
        llm_box: list[Any] = []

        def load(dtype: str = dtype, box: list[Any] = llm_box) -> Any:
            if not box:
                box.append(session.llm(case, dtype))
            return box[0]

        for on in (True, False):
            name = f"accuracy {case.name} {dtype} varlen={'on' if on else 'off'}"
            session.report.run(
                name,
                lambda dtype=dtype, on=on: _accuracy_one(session, case, dtype, on, texts, reference, load),
            )
        if dtype == "bfloat16" and llm_box:
            session.bf16_llms[case.name] = llm_box[0]
        llm_box.clear()
        free(session.device)


def _accuracy_one(
    session: Session,
    case: ModelCase,
    dtype: str,
    on: bool,
    texts: list[str],
    reference: Callable[[str], torch.Tensor],
    load: Callable[[], Any],
) -> tuple[str, dict]:
    ref32 = reference("float32")
    hf_half = None if dtype == "float32" else reference(dtype)
    llm = load()
    with varlen_setting(on) as calls:
        got = engine_scores(llm, texts, case.kind)
    err = max_abs_diff(got, ref32)
    if dtype == "float32":
        tol, how = FP32_ATOL, f"{FP32_ATOL:g} absolute"
    else:
        tol, how = half_tolerance(ref32, hf_half)
    data = {
        "max_abs_diff_vs_fp32": err,
        "tolerance": tol,
        "tolerance_rule": how,
        "varlen_kernel_calls": calls[0],
        "scores": got.numel(),
        "max_abs_fp32_score": float(ref32.abs().max()),
    }
    if hf_half is not None:
        data["hf_same_dtype_max_abs_diff_vs_fp32"] = max_abs_diff(hf_half, ref32)
        data["max_abs_diff_vs_hf_same_dtype"] = max_abs_diff(got, hf_half)
    if not err <= tol:  # also catches NaN
        raise CheckFailed(f"max abs diff {err:.3e} vs transformers fp32 > tolerance {tol:.3e} ({how})")
    summary = f"max abs diff {err:.2e} <= {tol:.2e} ({how}); {got.numel()} scores"
    wants_kernel = on and session.cuda and dtype != "float32"
    if wants_kernel and calls[0] == 0:
        from rlhf_rewards.engine.attention import varlen as varlen_attention

        why = "torch has no usable varlen_attn" if varlen_attention.KERNEL is None else "applies() said no"
        raise CheckFailed(
            f"scores fine but the FlashAttention varlen kernel was never called ({why}); {summary}"
        )
    if not wants_kernel and calls[0]:
        raise CheckFailed(
            f"the varlen kernel ran {calls[0]} times where the bucket path was expected; {summary}"
        )
    if on and not session.cuda:
        raise NotApplicable(
            f"FlashAttention varlen kernel is CUDA-only; the bucket fallback was used "
            f"(0 kernel calls) and {summary}"
        )
    if on and dtype == "float32":
        return (
            f"float32 keeps the bucket path (0 varlen calls, kernel is half-precision only); {summary}",
            data,
        )
    return summary + (f"; {calls[0]} varlen kernel calls" if calls[0] else "; bucket path"), data


# ---------------------------------------------------------------------- sleep / wake
def sleep_wake(session: Session, case: ModelCase) -> None:
    """``sleep <model>`` and ``wake <model>`` on a ``ColocatedWorker`` of the bfloat16 engine."""
    from rlhf_rewards.workers import ColocatedWorker

    texts = session.texts(case.kind)
    state: dict[str, Any] = {}

    def sleep() -> tuple[str, dict]:
        llm = session.bf16_llms.get(case.name)
        if llm is None:
            llm = session.llm(case, "bfloat16")
        session.bf16_llms[case.name] = llm
        worker = ColocatedWorker(llm)
        state["worker"] = worker
        # sleep() drops the cross-call prefix cache, so the scores after wake_up() are computed whole: so must
        # these be (a cache hit's shorter forward rounds differently in bf16; bit-identity is per path).
        llm.reset_prefix_cache()
        state["before"] = worker_scores(worker, texts, case.kind)
        tensors = {
            t.data_ptr(): t
            for t in (*llm.model.parameters(), *llm.model.buffers())
            if t.device.type == session.device.type
        }
        weight_bytes = sum(t.numel() * t.element_size() for t in tensors.values())
        if not session.cuda:
            worker.sleep()
            if not worker.is_sleeping:
                raise CheckFailed("sleep() did not mark the worker asleep")
            raise NotApplicable(
                f"CUDA memory release is CUDA-only (on a CPU the {weight_bytes / 2**20:.0f} MiB "
                "of weights stay where they are); sleep() marked the worker asleep"
            )
        free(session.device)
        free0, alloc0 = (
            torch.cuda.mem_get_info(session.device)[0],
            torch.cuda.memory_allocated(session.device),
        )
        worker.sleep()
        free1, alloc1 = (
            torch.cuda.mem_get_info(session.device)[0],
            torch.cuda.memory_allocated(session.device),
        )
        returned, released = free1 - free0, alloc0 - alloc1
        data = {
            "weight_bytes": weight_bytes,
            "driver_bytes_returned": returned,
            "allocator_bytes_released": released,
            "weight_device_asleep": str(worker.weight_device),
        }
        if not worker.is_sleeping or worker.weight_device.type != "cpu":
            raise CheckFailed(f"after sleep() the weights are on {worker.weight_device}")
        if returned < SLEEP_FREED_FRACTION * weight_bytes:
            raise CheckFailed(
                f"sleep() gave back {returned / 2**20:.0f} MiB to the driver (allocator released "
                f"{released / 2**20:.0f} MiB) of {weight_bytes / 2**20:.0f} MiB of weights, "
                f"under {SLEEP_FREED_FRACTION:.0%}"
            )
        return (
            f"gave back {returned / 2**20:.0f} MiB to the driver = {returned / weight_bytes:.1%} of "
            f"{weight_bytes / 2**20:.0f} MiB of weights (>= {SLEEP_FREED_FRACTION:.0%})"
        ), data

    def wake() -> tuple[str, dict]:
        worker = state.get("worker")
        if worker is None:
            raise CheckFailed("no worker (the sleep check failed before sleeping)")
        t0 = time.perf_counter()
        worker.wake_up()
        wake_s = time.perf_counter() - t0
        if worker.is_sleeping or worker.weight_device.type != session.device.type:
            raise CheckFailed(f"after wake_up() the weights are on {worker.weight_device}")
        after = worker_scores(worker, texts, case.kind)
        before = state["before"]
        if not torch.equal(before, after):
            raise CheckFailed(
                f"scores after wake_up() differ from before sleep(): max abs diff "
                f"{max_abs_diff(before, after):.3e}"
            )
        return f"{after.numel()} scores bit-identical to before sleep() (wake_up {wake_s:.2f}s)", {
            "wake_s": wake_s
        }

    session.report.run(f"sleep {case.name}", sleep)
    session.report.run(f"wake {case.name}", wake)
    session.bf16_llms.pop(case.name, None)
    state.clear()
    free(session.device)


# ---------------------------------------------------------------------- deterministic mode
def deterministic(session: Session, case: ModelCase) -> None:
    """``deterministic <model> <dtype>`` for the models and dtypes of the check."""
    if case.name not in DETERMINISTIC_MODELS:
        return
    for dtype in DETERMINISTIC_DTYPES:
        session.report.run(
            f"deterministic {case.name} {dtype}", lambda dtype=dtype: _deterministic(session, case, dtype)
        )
        free(session.device)


def _deterministic(session: Session, case: ModelCase, dtype: str) -> tuple[str, dict]:
    texts = session.texts(case.kind)
    det = session.llm(case, dtype, deterministic=True)
    alone = [per_text(det, [t], case.kind)[0] for t in texts]
    runs = {
        "together": per_text(det, texts, case.kind),
        "reversed": per_text(det, texts[::-1], case.kind)[::-1],
    }
    lengths = token_lengths(session.tok, texts)
    budget = max(lengths) + 8  # a few micro-batches, each one or two texts and prefixes
    saved = det.runner.max_num_batched_tokens
    det.runner.max_num_batched_tokens = budget
    try:
        runs[f"budget {budget}"] = per_text(det, texts, case.kind)
    finally:
        det.runner.max_num_batched_tokens = saved
    unequal = {
        name: sum(not torch.equal(a, b) for a, b in zip(alone, got, strict=True))
        for name, got in runs.items()
    }
    default = session.llm(case, dtype)
    reference = torch.cat([x.flatten() for x in per_text(default, texts, case.kind)])
    mine = torch.cat([x.flatten() for x in alone])
    err = max_abs_diff(mine, reference)
    tol = engine_tolerance(dtype, reference)
    # Throughput on the bench workload, deterministic vs default (reported; the CPU target is the benchmark's).
    workload = session.bench_workload("grpo" if case.kind == "rm" else "prm")
    times: dict[str, list[float]] = {"default": [], "deterministic": []}
    # Both engines are warm (they just scored the texts); two timed calls each keep the check short on a GPU.
    for _ in range(session.args.repeats or (2 if session.cuda else 1)):
        for name, llm in (("default", default), ("deterministic", det)):
            t0 = time.perf_counter()
            per_text(llm, workload.texts, case.kind)
            sync(session.device)
            times[name].append(time.perf_counter() - t0)
    ratio = statistics.median(times["default"]) / statistics.median(times["deterministic"])
    data = {
        "texts": len(texts),
        "unequal_vs_alone": unequal,
        "max_abs_diff_vs_default": err,
        "tolerance": tol,
        "bench_times_s": times,
        "throughput_ratio_vs_default": ratio,
        "bench_texts": len(workload.texts),
    }
    det = default = None
    if any(unequal.values()):
        raise CheckFailed(
            "scores not bit-identical to the text alone: "
            + ", ".join(f"{n}: {k} of {len(texts)} texts" for n, k in unequal.items() if k)
        )
    if not err <= tol:
        raise CheckFailed(f"max abs diff {err:.3e} vs the default engine > {tol:.3e}")
    return (
        f"{len(texts)} texts x {len(runs)} batchings torch.equal to each text alone; max abs diff vs default "
        f"{err:.2e} <= {tol:.2e}; bench {workload.name} throughput {ratio:.2f}x the default engine's"
    ), data
