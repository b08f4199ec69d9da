"""One command that proves the CUDA paths on one GPU (issue 19), and runs the same checks on a CPU as a test.

    bash scripts/gpu_check.sh                               # on a CUDA machine (see README "GPU check")
    python -m benchmarks.gpu_check --device cuda            # the same, without the script's environment set-up
    python -m benchmarks.gpu_check --device cpu --tiny      # every check on this CPU, tiny shapes (the test)

Models, built locally with random weights (transformers' own initialisation, norm weights perturbed) and the
real configs' shapes, saved in bfloat16 as the hub checkpoints are:

- ``qwen3-0.6b``: ``Qwen3ForSequenceClassification`` shaped as Qwen3-0.6B (all 28 layers);
- ``llama-3.2-1b``: ``LlamaForSequenceClassification`` shaped as Llama-3.2-1B (all 16 layers, llama3 RoPE);
- ``qwen2.5-math-prm``: ``Qwen2ForProcessRewardModel`` shaped as Qwen2.5-Math-PRM-7B, 4 of its 28 layers.

``--tiny`` shrinks every model to 2 layers x hidden 128 and the workloads to a few texts.

Checks (one final line each: ``PASS``, ``FAIL``, ``SKIP`` or ``N/A`` and the check's name):

- ``accuracy <model> <dtype> varlen=<on|off>``: the engine's raw scores against transformers' own forward of
  the same checkpoint (one unpadded forward per text), with ``RLHF_REWARDS_VARLEN`` unset and ``=0``.
  float32: max abs diff <= 1e-4. bfloat16/float16: against the float32 forward, the engine's error is at
  most 5% of the largest float32 score, or, if larger, twice transformers' own error in that dtype plus 1%
  of that score (at full depth bf16 rounding alone can pass 5% on random weights; a wrong attention path
  is off by far more). With the varlen path on, CUDA half precision must actually call the FlashAttention varlen
  kernel; float32 and CPU must not (they keep the bucket path: on a CPU the varlen lines say N/A).
- ``sleep <model>``: ``ColocatedWorker.sleep()`` gives back to the driver (``torch.cuda.mem_get_info``) at
  least 90% of the bytes of the weights (N/A on a CPU, where weights stay put);
  ``wake <model>``: after ``wake_up()`` the scores are bit-identical to those before ``sleep()``.
- ``deterministic <model> <dtype>`` (the RM and the PRM; float32 and bfloat16): ``LLM(deterministic=True)``
  scores every text alone, then all together, in reverse order and under a small ``max_num_batched_tokens``
  (several micro-batches): every text's scores must be ``torch.equal`` to its scores alone, and within the
  accuracy tolerance of the default engine (float32: 1e-4; half: 5% of the largest score). On CUDA this is
  the batched blocked-attention path and cuBLAS on fixed row tiles; the line also reports the deterministic
  mode's throughput on the bench workload against the default engine's.
- ``bench <workload> <model>``: the GRPO workload of ``benchmarks/`` (16 prompts x 8 completions) and the PRM
  workload (8 problems x 8 solutions) on the engine, TRL's built-in path (``GRPOTrainer._calculate_rewards``,
  or its line-for-line replica when TRL is not importable; the JSON says which) and the HF loop (padded
  batches of 8; the PRM model card's per-sample loop); throughput, peak memory and max abs diff against the
  engine; the scores must agree within the tolerance above. ``bench-compiled <workload> <model>``: the same
  with ``LLM(..., enforce_eager=False)``.

Every check is isolated: one that raises prints FAIL with the error and the others still run. Exit code 1
if any check FAILs. The report is written as JSON to ``--out`` after every check (and copied to ``$OUT`` when
that is set), so a run cut short still leaves its results.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import gc
import hashlib
import json
import os
import shutil
import statistics
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")

import torch  # noqa: E402

from benchmarks import baselines  # noqa: E402
from benchmarks.run import PeakMemory, machine  # noqa: E402
from benchmarks.workloads import (  # noqa: E402
    CACHE_DIR,
    STEP_TAG,
    build_tokenizer,
    grpo_workload,
    mixed_workload,
    prm_workload,
    token_lengths,
)

#: float32: engine vs transformers, max abs diff.
FP32_ATOL = 1e-4
#: bfloat16/float16: largest error against the float32 forward, as a fraction of the largest float32 score ...
HALF_REL_TOL = 0.05
#: ... or, if larger, this many times transformers' own error in that dtype, plus HALF_SLACK of that score.
HALF_VS_HF_FACTOR = 2.0
HALF_SLACK = 0.01
#: Share of the weights' bytes that sleep() must give back to the driver.
SLEEP_FREED_FRACTION = 0.9
DEFAULT_OUT = Path(__file__).resolve().parents[1] / "outputs" / "gpu_check.json"
DTYPES = ("float32", "bfloat16", "float16")


# ---------------------------------------------------------------------- models
@dataclass(frozen=True)
class ModelCase:
    """A reward model to build: its architecture, config class and real (or tiny) config fields."""

    name: str
    shaped_as: str
    architecture: str
    config_cls: str
    kind: str  # "rm" (classify, one label) or "prm" (token_classify at the step tags, two labels)
    fields: dict[str, Any]
    tiny_fields: dict[str, Any]
    note: str = ""

    def config_fields(self, tiny: bool) -> dict[str, Any]:
        return dict(self.tiny_fields if tiny else self.fields)


_TINY = {
    "hidden_size": 128,
    "intermediate_size": 384,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
}
_LLAMA3_ROPE = {
    "rope_type": "llama3",
    "rope_theta": 500000.0,
    "factor": 32.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 8192,
}

CASES: dict[str, ModelCase] = {
    "qwen3-0.6b": ModelCase(
        "qwen3-0.6b",
        "Qwen/Qwen3-0.6B",
        "Qwen3ForSequenceClassification",
        "Qwen3Config",
        "rm",
        fields={
            "hidden_size": 1024,
            "intermediate_size": 3072,
            "num_hidden_layers": 28,
            "num_attention_heads": 16,
            "num_key_value_heads": 8,
            "head_dim": 128,
            "vocab_size": 151936,
            "max_position_embeddings": 40960,
            "rms_norm_eps": 1e-6,
            "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0},
            "tie_word_embeddings": True,
            "num_labels": 1,
        },
        tiny_fields={
            **_TINY,
            "head_dim": 32,
            "max_position_embeddings": 40960,
            "rms_norm_eps": 1e-6,
            "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0},
            "num_labels": 1,
        },
        note="all 28 layers",
    ),
    "llama-3.2-1b": ModelCase(
        "llama-3.2-1b",
        "meta-llama/Llama-3.2-1B",
        "LlamaForSequenceClassification",
        "LlamaConfig",
        "rm",
        fields={
            "hidden_size": 2048,
            "intermediate_size": 8192,
            "num_hidden_layers": 16,
            "num_attention_heads": 32,
            "num_key_value_heads": 8,
            "head_dim": 64,
            "vocab_size": 128256,
            "max_position_embeddings": 131072,
            "rms_norm_eps": 1e-5,
            "rope_parameters": dict(_LLAMA3_ROPE),
            "tie_word_embeddings": True,
            "num_labels": 1,
        },
        tiny_fields={
            **_TINY,
            "head_dim": 32,
            "max_position_embeddings": 131072,
            "rms_norm_eps": 1e-5,
            "rope_parameters": dict(_LLAMA3_ROPE),
            "num_labels": 1,
        },
        note="all 16 layers, llama3 RoPE scaling",
    ),
    "qwen2.5-math-prm": ModelCase(
        "qwen2.5-math-prm",
        "Qwen/Qwen2.5-Math-PRM-7B",
        "Qwen2ForProcessRewardModel",
        "Qwen2Config",
        "prm",
        fields={
            "hidden_size": 3584,
            "intermediate_size": 18944,
            "num_hidden_layers": 4,
            "num_attention_heads": 28,
            "num_key_value_heads": 4,
            "vocab_size": 152064,
            "max_position_embeddings": 4096,
            "rms_norm_eps": 1e-6,
            "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0},
            "tie_word_embeddings": False,
        },
        tiny_fields={
            **_TINY,
            "max_position_embeddings": 4096,
            "rms_norm_eps": 1e-6,
            "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0},
        },
        note="full width, 4 of the 28 layers (the depth only repeats the same kernels)",
    ),
}
#: Models and dtypes of the ``deterministic`` check.
DETERMINISTIC_MODELS = ("qwen3-0.6b", "qwen2.5-math-prm")
DETERMINISTIC_DTYPES = ("float32", "bfloat16")
#: Workload -> models it runs on.
BENCH_MODELS = {"grpo": ("qwen3-0.6b", "llama-3.2-1b"), "prm": ("qwen2.5-math-prm",)}


def _model_class(architecture: str) -> type:
    import transformers

    if (
        architecture == "Qwen2ForProcessRewardModel"
    ):  # remote code on the hub; rlhf_rewards' class replaces it
        from rlhf_rewards.models.qwen2_reward import Qwen2ForProcessRewardModel

        return Qwen2ForProcessRewardModel
    return getattr(transformers, architecture)


def shared_tokenizer() -> Path:
    """The benchmarks' word-level BPE tokenizer (``benchmarks.workloads``), trained once and cached."""
    path = CACHE_DIR / "gpu_check" / "tokenizer"
    if not (path / "tokenizer.json").exists():
        tmp = path.with_name(f"tokenizer.tmp{os.getpid()}")
        build_tokenizer(tmp)
        if not (path / "tokenizer.json").exists():
            shutil.rmtree(path, ignore_errors=True)
            tmp.rename(path)
        shutil.rmtree(tmp, ignore_errors=True)
    return path


def build_checkpoint(
    case: ModelCase, tiny: bool, tokenizer_dir: Path, device: torch.device, seed: int = 0
) -> Path:
    """Build (once, cached by shape) ``case`` with transformers' own random initialisation, saved in bfloat16.

    Built on ``device`` (fast on a GPU). Norm weights are set to ``1 + 0.1 N(0, 1)`` and biases to
    ``0.02 N(0, 1)``, so a misplaced norm or a dropped bias cannot go unnoticed.
    """
    from transformers import AutoTokenizer

    fields = case.config_fields(tiny)
    key = hashlib.sha1(json.dumps([case.architecture, fields, seed, 1], sort_keys=True).encode()).hexdigest()[
        :12
    ]
    path = CACHE_DIR / "gpu_check" / f"{case.name}{'-tiny' if tiny else ''}-{key}"
    if (path / "config.json").exists() and (path / "tokenizer.json").exists():
        return path
    import transformers

    tok = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    fields.setdefault("vocab_size", len(tok))
    fields.update(pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, bos_token_id=tok.eos_token_id)
    config = getattr(transformers, case.config_cls)(**fields)
    config.architectures = [case.architecture]
    torch.manual_seed(seed)
    with torch.device(device):
        model = _model_class(case.architecture)(config)
    gen = torch.Generator(device=device).manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 1 and "norm" in name:
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=gen, device=device))
            elif p.dim() == 1 and name.endswith("bias"):
                p.copy_(0.02 * torch.randn(p.shape, generator=gen, device=device))
    model.to(torch.bfloat16)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    if (
        case.architecture == "Qwen2ForProcessRewardModel"
    ):  # as the hub ships it: remote code named, not needed
        cfg = json.loads((tmp / "config.json").read_text())
        cfg["auto_map"] = {
            "AutoConfig": "configuration_qwen2_rm.Qwen2RMConfig",
            "AutoModel": "modeling_qwen2_rm.Qwen2ForProcessRewardModel",
        }
        (tmp / "config.json").write_text(json.dumps(cfg, indent=2))
    for name in os.listdir(tokenizer_dir):
        shutil.copy(tokenizer_dir / name, tmp / name)
    del model
    _free(device)
    shutil.rmtree(path, ignore_errors=True)
    tmp.rename(path)
    return path


def load_reference(case: ModelCase, path: Path, dtype: str, device: torch.device) -> torch.nn.Module:
    """transformers' own model class from ``from_pretrained`` in ``dtype`` (what a user would run)."""
    model = _model_class(case.architecture).from_pretrained(str(path), dtype=getattr(torch, dtype))
    return model.to(device).eval()


def _free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()


# ---------------------------------------------------------------------- scoring
def reference_scores(
    model: torch.nn.Module, tok: Any, texts: list[str], kind: str, step_id: int
) -> torch.Tensor:
    """transformers' forward, one unpadded text at a time: the raw score (RM) or both logits at every step tag."""
    device = next(model.parameters()).device
    out = []
    with torch.inference_mode():
        for text in texts:
            ids = tok(text, add_special_tokens=False, return_tensors="pt")["input_ids"].to(device)
            logits = model(input_ids=ids).logits
            if kind == "rm":
                out.append(logits[0, :1].float())
            else:
                out.append(logits[0][ids[0] == step_id].float().flatten())
    return torch.cat(out).cpu()


def engine_scores(llm: Any, texts: list[str], kind: str) -> torch.Tensor:
    """The engine's raw scores, laid out as :func:`reference_scores`."""
    return torch.cat([t.flatten() for t in _per_text(llm, texts, kind)])


def _per_text(llm: Any, texts: list[str], kind: str) -> list[torch.Tensor]:
    """The engine's raw scores of each text (as :func:`engine_scores`, one tensor per text, on the CPU)."""
    from rlhf_rewards import PoolingParams

    task = "classify" if kind == "rm" else "token_classify"
    outs = llm.encode(
        texts,
        PoolingParams(use_activation=False),
        pooling_task=task,
        use_tqdm=False,
        add_special_tokens=False,
    )
    return [(o.outputs.data[:1] if kind == "rm" else o.outputs.data).float().cpu() for o in outs]


def worker_scores(worker: Any, texts: list[str], kind: str) -> torch.Tensor:
    """As :func:`engine_scores`, through a ``ColocatedWorker`` (its tokenizer adds no special tokens here)."""
    from rlhf_rewards import PoolingParams

    task = "classify" if kind == "rm" else "token_classify"
    outs = worker.encode(texts, PoolingParams(use_activation=False), pooling_task=task)
    if kind == "rm":
        return torch.cat([o.outputs.data[:1].float() for o in outs]).cpu()
    return torch.cat([o.outputs.data.float().flatten() for o in outs]).cpu()


@contextlib.contextmanager
def varlen_setting(on: bool) -> Iterator[list[int]]:
    """``RLHF_REWARDS_VARLEN`` unset (on) or ``0`` (off), counting calls of the varlen kernel meanwhile."""
    from rlhf_rewards.engine import varlen_attention

    saved_env = os.environ.pop("RLHF_REWARDS_VARLEN", None)
    if not on:
        os.environ["RLHF_REWARDS_VARLEN"] = "0"
    calls = [0]
    original = varlen_attention.KERNEL
    if original is not None:

        @functools.wraps(original)  # keeps the signature, which the engine inspects
        def counted(*args: Any, **kwargs: Any) -> Any:
            calls[0] += 1
            return original(*args, **kwargs)

        varlen_attention.KERNEL = counted
    try:
        yield calls
    finally:
        varlen_attention.KERNEL = original
        os.environ.pop("RLHF_REWARDS_VARLEN", None)
        if saved_env is not None:
            os.environ["RLHF_REWARDS_VARLEN"] = saved_env


def max_abs_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    if a.shape != b.shape:
        return float("inf")
    return float((a.float() - b.float()).abs().max()) if a.numel() else 0.0


def half_tolerance(ref32: torch.Tensor, hf_half: torch.Tensor | None) -> tuple[float, str]:
    """Allowed error of a half-precision score against the float32 forward (see the module docstring)."""
    scale = float(ref32.abs().max())
    bound = HALF_REL_TOL * scale
    if hf_half is None:
        return bound, f"{HALF_REL_TOL:.0%} of max|fp32 score| {scale:.3g}"
    hf_err = max_abs_diff(hf_half, ref32)
    if not hf_err < float("inf"):  # transformers overflowed in this dtype: only the fixed bound applies
        return bound, f"{HALF_REL_TOL:.0%} of max|fp32 score| {scale:.3g} (transformers' own error {hf_err})"
    return max(bound, HALF_VS_HF_FACTOR * hf_err + HALF_SLACK * scale), (
        f"max({HALF_REL_TOL:.0%} of max|fp32 score| {scale:.3g}, {HALF_VS_HF_FACTOR:g} x transformers' own error "
        f"{hf_err:.2e} + {HALF_SLACK:.0%})"
    )


# ---------------------------------------------------------------------- report
class CheckFailed(Exception):
    """A check's condition did not hold (the message says which)."""


class Skipped(Exception):
    """A check that cannot run here (the message says why)."""


class NotApplicable(Exception):
    """A CUDA-only part on a CPU: what could be checked passed (the message says what)."""


@dataclass
class Report:
    """Check results, the benchmark table and the JSON file they are written to."""

    out: Path
    meta: dict[str, Any]
    checks: list[dict[str, Any]] = field(default_factory=list)
    table: list[dict[str, Any]] = field(default_factory=list)
    started: float = field(default_factory=time.perf_counter)

    def run(self, name: str, fn: Callable[[], tuple[str, dict[str, Any]] | str]) -> str:
        """Run one check; any exception is that check's FAIL, never the run's."""
        t0 = time.perf_counter()
        data: dict[str, Any] = {}
        try:
            result = fn()
            detail, data = result if isinstance(result, tuple) else (result, {})
            status = "PASS"
        except Skipped as e:
            status, detail = "SKIP", str(e)
        except NotApplicable as e:
            status, detail = "N/A", str(e)
        except CheckFailed as e:
            status, detail = "FAIL", str(e)
        except Exception as e:  # noqa: BLE001 - a crash is this check's failure, the others still run
            status, detail = "FAIL", f"{type(e).__name__}: {e}"
            data = {"traceback": traceback.format_exc()}
        self.checks.append(
            {
                "name": name,
                "status": status,
                "detail": detail,
                "seconds": time.perf_counter() - t0,
                **({"data": data} if data else {}),
            }
        )
        print(
            f"[{time.perf_counter() - self.started:6.1f}s] {status} {name}: {detail}",
            file=sys.stderr,
            flush=True,
        )
        self.write()
        return status

    def line(self, check: dict[str, Any]) -> str:
        return f"{check['status']} {check['name']}" + (f": {check['detail']}" if check["detail"] else "")

    def write(self) -> None:
        report = {
            **self.meta,
            "wall_s": time.perf_counter() - self.started,
            "checks": self.checks,
            "table": self.table,
            "summary": {
                s: sum(c["status"] == s for c in self.checks) for s in ("PASS", "FAIL", "SKIP", "N/A")
            },
        }
        text = json.dumps(report, indent=2, default=str)
        self.out.parent.mkdir(parents=True, exist_ok=True)
        self.out.write_text(text)
        if os.environ.get("OUT"):
            with contextlib.suppress(OSError):
                Path(os.environ["OUT"]).mkdir(parents=True, exist_ok=True)
                (Path(os.environ["OUT"]) / self.out.name).write_text(text)


# ---------------------------------------------------------------------- the checks
class Run:
    """Everything one invocation builds and checks."""

    def __init__(self, args: argparse.Namespace, report: Report) -> None:
        from transformers import AutoTokenizer

        self.args = args
        self.report = report
        self.device = torch.device(args.device)
        self.cuda = self.device.type == "cuda"
        self.tiny = args.tiny
        self.tok_dir = shared_tokenizer()
        self.tok = AutoTokenizer.from_pretrained(str(self.tok_dir))
        self.step_id = self.tok.convert_tokens_to_ids(STEP_TAG)
        self.paths: dict[str, Path] = {}
        self.bf16_llms: dict[str, Any] = {}
        self.deadline = report.started + args.budget_s
        self._eager_scores: dict[tuple[str, str], torch.Tensor] = {}

    # ------------------------------------------------------------------ helpers
    def texts(self, kind: str) -> list[str]:
        """Accuracy texts: GRPO groups (shared prompts: the prefix-sharing path) plus unrelated texts (RM), or
        PRM conversations (a problem shared by its solutions)."""
        n = 1 if self.tiny else 2
        if kind == "prm":
            return prm_workload(self.tok, problems=n, samples=4).texts
        return grpo_workload(self.tok, prompts=n, group=4).texts + mixed_workload(self.tok, n=4 * n).texts

    def llm(self, case: ModelCase, dtype: str, **kwargs: Any) -> Any:
        from rlhf_rewards import LLM

        return LLM(str(self.paths[case.name]), device=str(self.device), dtype=dtype, **kwargs)

    def over_budget(self) -> bool:
        return time.perf_counter() > self.deadline

    # ------------------------------------------------------------------ build
    def build(self, case: ModelCase) -> tuple[str, dict[str, Any]]:
        t0 = time.perf_counter()
        path = build_checkpoint(case, self.tiny, self.tok_dir, self.device)
        self.paths[case.name] = path
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
        note = "tiny: 2 layers x hidden 128" if self.tiny else case.note
        self.report.meta["models"][case.name] = {
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

    # ------------------------------------------------------------------ accuracy
    def accuracy(self, case: ModelCase) -> None:
        texts = self.texts(case.kind)
        refs: dict[str, torch.Tensor] = {}

        def reference(dtype: str) -> torch.Tensor:
            if dtype not in refs:
                model = load_reference(case, self.paths[case.name], dtype, self.device)
                refs[dtype] = reference_scores(model, self.tok, texts, case.kind, self.step_id)
                del model
                _free(self.device)
            return refs[dtype]

        for dtype in DTYPES:
            llm_box: list[Any] = []

            def load(dtype: str = dtype, box: list[Any] = llm_box) -> Any:
                if not box:
                    box.append(self.llm(case, dtype))
                return box[0]

            for on in (True, False):
                name = f"accuracy {case.name} {dtype} varlen={'on' if on else 'off'}"
                self.report.run(
                    name,
                    lambda dtype=dtype, on=on: self._accuracy_one(case, dtype, on, texts, reference, load),
                )
            if dtype == "bfloat16" and llm_box:
                self.bf16_llms[case.name] = llm_box[0]
            llm_box.clear()
            _free(self.device)

    def _accuracy_one(
        self,
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
        wants_kernel = on and self.cuda and dtype != "float32"
        if wants_kernel and calls[0] == 0:
            from rlhf_rewards.engine import varlen_attention

            why = (
                "torch has no usable varlen_attn" if varlen_attention.KERNEL is None else "applies() said no"
            )
            raise CheckFailed(
                f"scores fine but the FlashAttention varlen kernel was never called ({why}); {summary}"
            )
        if not wants_kernel and calls[0]:
            raise CheckFailed(
                f"the varlen kernel ran {calls[0]} times where the bucket path was expected; {summary}"
            )
        if on and not self.cuda:
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

    # ------------------------------------------------------------------ sleep / wake
    def sleep_wake(self, case: ModelCase) -> None:
        from rlhf_rewards.workers import ColocatedWorker

        texts = self.texts(case.kind)
        state: dict[str, Any] = {}

        def sleep() -> tuple[str, dict]:
            llm = self.bf16_llms.get(case.name)
            if llm is None:
                llm = self.llm(case, "bfloat16")
            self.bf16_llms[case.name] = llm
            worker = ColocatedWorker(llm)
            state["worker"] = worker
            # sleep() drops the cross-call prefix cache, so the scores after wake_up() are computed whole: so must
            # these be (a cache hit's shorter forward rounds differently in bf16; bit-identity is per path).
            llm.reset_prefix_cache()
            state["before"] = worker_scores(worker, texts, case.kind)
            tensors = {
                t.data_ptr(): t
                for t in (*llm.model.parameters(), *llm.model.buffers())
                if t.device.type == self.device.type
            }
            weight_bytes = sum(t.numel() * t.element_size() for t in tensors.values())
            if not self.cuda:
                worker.sleep()
                if not worker.is_sleeping:
                    raise CheckFailed("sleep() did not mark the worker asleep")
                raise NotApplicable(
                    f"CUDA memory release is CUDA-only (on a CPU the {weight_bytes / 2**20:.0f} MiB "
                    "of weights stay where they are); sleep() marked the worker asleep"
                )
            _free(self.device)
            free0, alloc0 = torch.cuda.mem_get_info(self.device)[0], torch.cuda.memory_allocated(self.device)
            worker.sleep()
            free1, alloc1 = torch.cuda.mem_get_info(self.device)[0], torch.cuda.memory_allocated(self.device)
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
            if worker.is_sleeping or worker.weight_device.type != self.device.type:
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

        self.report.run(f"sleep {case.name}", sleep)
        self.report.run(f"wake {case.name}", wake)
        self.bf16_llms.pop(case.name, None)
        state.clear()
        _free(self.device)

    # ------------------------------------------------------------------ deterministic mode
    def deterministic(self, case: ModelCase) -> None:
        if case.name not in DETERMINISTIC_MODELS:
            return
        for dtype in DETERMINISTIC_DTYPES:
            self.report.run(
                f"deterministic {case.name} {dtype}", lambda dtype=dtype: self._deterministic(case, dtype)
            )
            _free(self.device)

    def _deterministic(self, case: ModelCase, dtype: str) -> tuple[str, dict]:
        texts = self.texts(case.kind)
        det = self.llm(case, dtype, deterministic=True)
        alone = [_per_text(det, [t], case.kind)[0] for t in texts]
        runs = {
            "together": _per_text(det, texts, case.kind),
            "reversed": _per_text(det, texts[::-1], case.kind)[::-1],
        }
        lengths = token_lengths(self.tok, texts)
        budget = max(lengths) + 8  # a few micro-batches, each one or two texts and prefixes
        saved = det.runner.max_num_batched_tokens
        det.runner.max_num_batched_tokens = budget
        try:
            runs[f"budget {budget}"] = _per_text(det, texts, case.kind)
        finally:
            det.runner.max_num_batched_tokens = saved
        unequal = {
            name: sum(not torch.equal(a, b) for a, b in zip(alone, got, strict=True))
            for name, got in runs.items()
        }
        default = self.llm(case, dtype)
        reference = torch.cat([x.flatten() for x in _per_text(default, texts, case.kind)])
        mine = torch.cat([x.flatten() for x in alone])
        err = max_abs_diff(mine, reference)
        tol = FP32_ATOL if dtype == "float32" else HALF_REL_TOL * float(reference.abs().max())
        # Throughput on the bench workload, deterministic vs default (reported; the CPU target is the benchmark's).
        workload = (
            grpo_workload(self.tok, **({"prompts": 1} if self.tiny else {}))
            if case.kind == "rm"
            else prm_workload(self.tok, **({"problems": 1, "samples": 4} if self.tiny else {}))
        )
        times: dict[str, list[float]] = {"default": [], "deterministic": []}
        # Both engines are warm (they just scored the texts); two timed calls each keep the check short on a GPU.
        for _ in range(self.args.repeats or (2 if self.cuda else 1)):
            for name, llm in (("default", default), ("deterministic", det)):
                t0 = time.perf_counter()
                _per_text(llm, workload.texts, case.kind)
                _sync(self.device)
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

    # ------------------------------------------------------------------ benchmarks
    def bench(self, workload_name: str, case: ModelCase, compiled: bool) -> None:
        name = f"{'bench-compiled' if compiled else 'bench'} {workload_name} {case.name}"
        if compiled and not self.cuda and not self.args.cpu_compile:
            self.report.run(
                name,
                lambda: _raise(
                    Skipped(
                        "torch.compile on a CPU is slow to build and says nothing about CUDA graphs; "
                        "pass --cpu-compile to run it anyway"
                    )
                ),
            )
            return
        if self.over_budget():
            self.report.run(name, lambda: _raise(Skipped(f"over the {self.args.budget_s:.0f}s time budget")))
            return
        self.report.run(name, lambda: self._bench(workload_name, case, compiled))

    def _bench(self, workload_name: str, case: ModelCase, compiled: bool) -> tuple[str, dict]:
        dtype = "bfloat16" if self.cuda else "float32"
        if workload_name == "grpo":
            workload = grpo_workload(self.tok, **({"prompts": 1} if self.tiny else {}))
        else:
            workload = prm_workload(self.tok, **({"problems": 1, "samples": 4} if self.tiny else {}))
        tokens = sum(token_lengths(self.tok, workload.texts))
        tok = _OnDevice(self.tok, self.device)
        methods: list[tuple[str, Callable[[], torch.Tensor]]] = []
        llm = self.llm(case, dtype, enforce_eager=not compiled)
        if workload_name == "grpo":
            engine = functools.partial(engine_scores, llm, workload.texts, "rm")
        else:
            engine = functools.partial(_engine_step_probs, llm, workload.texts)
        engine_name = "rlhf-rewards engine" + (" (enforce_eager=False: torch.compile)" if compiled else "")
        methods.append((engine_name, engine))
        hf = None
        if not compiled:
            hf = load_reference(case, self.paths[case.name], dtype, self.device)
            if workload_name == "grpo":
                methods.append(
                    (
                        f"TRL built-in ({TRL_IMPL['name']})",
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
        repeats = self.args.repeats or (3 if self.cuda else 1)
        rows, scores = [], {}
        # --tiny on a CPU times the first call (a warm-up would double a test's time); otherwise one warm-up
        # call (the compile, for the compiled engine) precedes the timed repeats.
        warmup = compiled or not self.tiny
        for method, fn in methods:
            warmup_s = float("nan")
            if warmup:
                t0 = time.perf_counter()
                scores[method] = fn()
                _sync(self.device)
                warmup_s = time.perf_counter() - t0
            times, peaks = [], []
            for _ in range(repeats):
                with PeakMemory(self.device) as mem:
                    t = time.perf_counter()
                    out = fn()
                    _sync(self.device)
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
                    "peak_memory": "CUDA max allocated over the call" if self.cuda else "extra resident set",
                }
            )
        reference = scores[engine_name]
        if compiled:  # compiled vs eager: the eager bench's scores, else an eager runner on the same weights
            reference = self._eager_scores.get((workload_name, case.name))
            if reference is None:
                from benchmarks.run import runner_variant

                with runner_variant(llm, compile=False):
                    reference = engine()
        else:
            self._eager_scores[(workload_name, case.name)] = reference
        methods.clear()
        hf = llm = engine = None  # free both models before the next benchmark
        _free(self.device)
        tol = FP32_ATOL if dtype == "float32" else HALF_REL_TOL * float(reference.abs().max())
        worst = []
        for row, (method, s) in zip(rows, scores.items(), strict=True):
            row["max_abs_diff_vs_engine"] = max_abs_diff(s, reference)
            row["engine_speedup"] = row["median_s"] / rows[0]["median_s"]
            if not row["max_abs_diff_vs_engine"] <= tol:
                worst.append(f"{method}: {row['max_abs_diff_vs_engine']:.3e}")
        self.report.table.extend(rows)
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


def _engine_step_probs(llm: Any, texts: list[str]) -> torch.Tensor:
    """The PRM's step rewards as the model card reports them: softmax column 1 at every step tag."""
    outs = llm.encode(texts, pooling_task="token_classify", use_tqdm=False, add_special_tokens=False)
    return torch.cat([o.outputs.data[:, 1].float() for o in outs]).cpu()


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


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _raise(e: Exception) -> Any:
    raise e


def _trl_impl() -> dict[str, str]:
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


TRL_IMPL: dict[str, str] = {}


def format_row(r: dict[str, Any]) -> str:
    return (
        f"| {r['workload']} | {r['model']} | {r['method']} | {r['dtype']} | {r['median_s']:.3f} | "
        f"{r['items_per_s']:.1f} | {r['tokens_per_s']:.0f} | {r['peak_mib']:.0f} | "
        f"{r.get('max_abs_diff_vs_engine', float('nan')):.1e} |"
    )


def format_table(rows: list[dict[str, Any]]) -> str:
    head = (
        "| workload | model | method | dtype | median s | items/s | tokens/s | peak MiB | max abs diff vs engine |\n"
        "|---|---|---|---|---|---|---|---|---|"
    )
    return "\n".join([head, *(format_row(r) for r in rows)])


# ---------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
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
    TRL_IMPL.update(_trl_impl())
    meta = {
        "command": "python -m benchmarks.gpu_check " + " ".join(argv if argv is not None else sys.argv[1:]),
        "device": str(device),
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "tiny": args.tiny,
        "machine": machine(),
        "trl_builtin": TRL_IMPL,
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
        f"TRL built-in path: {TRL_IMPL['name']}",
        file=sys.stderr,
        flush=True,
    )
    run = Run(args, report)
    built = []
    for name in models:
        if report.run(f"build {name}", lambda name=name: run.build(CASES[name])) == "PASS":
            built.append(name)
    for name in models:
        if name not in built:
            continue
        if "accuracy" in checks:
            run.accuracy(CASES[name])
        if "sleep" in checks:
            run.sleep_wake(CASES[name])
        if "deterministic" in checks:
            run.deterministic(CASES[name])
        run.bf16_llms.pop(name, None)
        _free(device)
    for compiled in (False, True):
        if ("compiled" if compiled else "bench") not in checks:
            continue
        for workload_name, names in BENCH_MODELS.items():
            for name in names:
                if name in built:
                    run.bench(workload_name, CASES[name], compiled)
    report.write()
    print(f"\nTRL built-in path: {TRL_IMPL['name']}")
    if report.table:
        print(format_table(report.table))
    print()
    for check in report.checks:
        print(report.line(check))
    counts = {s: sum(c["status"] == s for c in report.checks) for s in ("PASS", "FAIL", "SKIP", "N/A")}
    wall = time.perf_counter() - report.started
    print(
        f"gpu_check: {counts['PASS']} PASS, {counts['FAIL']} FAIL, {counts['SKIP']} SKIP, {counts['N/A']} N/A "
        f"on {meta['gpu'] or device} in {wall:.0f}s; JSON: {report.out}"
    )
    return 1 if counts["FAIL"] else 0


if __name__ == "__main__":
    sys.exit(main())
