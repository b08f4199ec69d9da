"""This engine against vLLM's CPU build (``.venv-vllm``), side by side: ``python -m benchmarks.run --baselines vllm``.

Each engine runs in its own process (:mod:`benchmarks.engine_side`), both bound to the same cores with the
same thread count (vLLM: ``VLLM_CPU_OMP_THREADS_BIND=0-{n-1}``, ``OMP_NUM_THREADS=n``; this project:
``OMP_NUM_THREADS=n``, torch's ``n`` intra-op threads), and both score the same token ids, sent as
``{"prompt_token_ids": ...}`` with ``use_activation=False``. Every timed run draws a fresh workload (a new
seed; both engines get it), except the repeated-texts row, whose point is the repeat. Repeats alternate which
engine goes first; times are medians. While one engine is timed, the other's processes are stopped (SIGSTOP): an
idle vLLM keeps polling and spin-waiting, which took a core from this engine (one text per call, 64 calls: 37 s
instead of 2 s). Peak memory is the high-water mark of each side's resident set,
summed over its processes (vLLM's engine core is a child process), model included.

Rows (``--vllm-workloads``):

- ``grpo``: GRPO 16 prompts x 8 completions in one call (prompts 128-384 tokens; ~48k tokens).
- ``prm``: a PRM (STEP pooling), 6 problems x 8 solutions of 4-12 steps, one call.
- ``unrelated``: 96 unrelated texts of 20-1000 tokens (uniform), one call.
- ``per_call``: GRPO 8 x 8, one text per call, in rollout order (shortest completion first, across groups:
  the order a trainer that scores each rollout as it finishes sends them).
- ``repeat``: GRPO 16 x 8 scored once (untimed), then the same texts again (timed), one call.
- ``server`` (``--vllm-server``): ``rlhf-rewards serve`` against vLLM's OpenAI server, one ``/pooling``
  request per sample at concurrency 8 and 32, GRPO 8 x 8 texts queued in rollout order.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SIDE = Path(__file__).with_name("engine_side.py")
MARK = "@@engine-side@@ "
#: Issue 26's targets: this engine's speed-up over vLLM per row.
TARGETS = {"grpo": 1.5, "prm": 1.5, "unrelated": 1.0, "per_call": 1.5, "repeat": 1.5, "server c=8": 1.5}


@contextlib.contextmanager
def paused(pid: int):
    """Stop ``pid``'s process tree (SIGSTOP) for the block: an idle engine that polls or spin-waits (vLLM's
    engine core and worker do) must not take cores from the engine being timed."""
    from benchmarks.engine_side import _tree

    pids = _tree(pid)
    for p in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(p, signal.SIGSTOP)
    try:
        yield
    finally:
        for p in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(p, signal.SIGCONT)


class Side:
    """One engine process (:mod:`benchmarks.engine_side`)."""

    def __init__(
        self, which: str, model: str, kwargs: dict[str, Any], threads: int, root: Path = ROOT
    ) -> None:
        from tests.compat.vllm_live.oracle import VLLM_PYTHON, vllm_env

        self.which = which
        if which == "vllm":
            python, env = str(VLLM_PYTHON), vllm_env(threads=threads, kv_cache_gib=1)
        else:
            python, env = (
                sys.executable,
                dict(os.environ, OMP_NUM_THREADS=str(threads), TOKENIZERS_PARALLELISM="false"),
            )
            env["PYTHONPATH"] = str(root) + os.pathsep + env.get("PYTHONPATH", "")
        self.log = tempfile.NamedTemporaryFile("w+", prefix=f"bench-{which}-", suffix=".log", delete=False)
        self.proc = subprocess.Popen(
            [python, str(SIDE), which, json.dumps({"model": model, "kwargs": kwargs})],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.log,
            text=True,
            env=env,
            cwd=tempfile.gettempdir(),
            start_new_session=True,
        )
        self.ready = self._read(600)

    def _read(self, timeout: float) -> dict[str, Any]:
        from tests.compat.vllm_live.oracle import read_marked

        answer = read_marked(self.proc, MARK, timeout)
        if answer is None:
            self.close()
            self.log.flush()
            raise RuntimeError(
                f"{self.which} side gave no answer; log tail:\n{Path(self.log.name).read_text()[-3000:]}"
            )
        return answer

    def ask(self, timeout: float = 1800, **req: Any) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(req) + "\n")
        self.proc.stdin.flush()
        return self._read(timeout)

    def close(self) -> None:
        from tests.compat.vllm_live.oracle import _stop

        _stop(self.proc)


# ---------------------------------------------------------------------- workloads (token ids)
def _ids(tok, texts: list[str]) -> list[list[int]]:
    return [list(x) for x in tok(texts, add_special_tokens=False)["input_ids"]]


def rollout_order(workload) -> list[int]:
    """Indices in the order rollouts finish: shortest completion first (stable), across all groups."""
    lengths = [len(c.split()) for c in workload.completions]
    return sorted(range(len(lengths)), key=lambda i: lengths[i])


def rollout_ids(tok, seed: int, prompts: int = 8, group: int = 8) -> list[list[int]]:
    """The token ids of a GRPO ``prompts`` x ``group`` workload, in rollout order (one text per request/call)."""
    from benchmarks.workloads import grpo_workload

    w = grpo_workload(tok, seed, prompts, group, prompt_range=(128, 384))
    ids = _ids(tok, w.texts)
    return [ids[i] for i in rollout_order(w)]


def make(name: str, tok, seed: int) -> tuple[list[list[list[int]]], str]:
    """``(calls, task)`` of one timed run: each call is a list of token-id lists."""
    from benchmarks.workloads import _fit, grpo_workload, prm_workload

    if name in ("grpo", "repeat"):
        return [_ids(tok, grpo_workload(tok, seed, 16, 8, prompt_range=(128, 384)).texts)], "classify"
    if name == "prm":
        return [
            _ids(tok, prm_workload(tok, seed, problems=6, samples=8, min_steps=4).texts)
        ], "token_classify"
    if name == "unrelated":
        rng = np.random.RandomState(seed)
        return [_ids(tok, [_fit(tok, rng, int(n)) for n in rng.randint(20, 1001, size=96)])], "classify"
    if name == "per_call":
        return [[ids] for ids in rollout_ids(tok, seed)], "classify"
    raise ValueError(f"unknown workload {name!r}")


def _diff(a: list, b: list) -> float:
    fa = np.array([x for v in a for x in (v if isinstance(v, list) else [v])], dtype=np.float64)
    fb = np.array([x for v in b for x in (v if isinstance(v, list) else [v])], dtype=np.float64)
    if fa.shape != fb.shape:
        return float("inf")
    return float(np.abs(fa - fb).max()) if fa.size else 0.0


def run_offline(
    names: list[str],
    rm_dir: Path,
    prm_dir: Path,
    step_id: int,
    tok,
    repeats: int,
    threads: int,
    cache_bytes: int | None,
) -> list[dict[str, Any]]:
    """Every offline row, both engines alive (one vLLM engine), alternating which goes first."""
    results = []
    ours_kwargs: dict[str, Any] = {"dtype": "float32", "device": "cpu"}
    if cache_bytes is not None:
        ours_kwargs["prefix_cache_bytes"] = cache_bytes
    vllm_kwargs: dict[str, Any] = {
        "dtype": "float32",
        "enforce_eager": True,
        "max_model_len": 4096,
        "enable_prefix_caching": True,
    }
    by_model: dict[str, list[str]] = {}
    for n in names:
        by_model.setdefault("prm" if n == "prm" else "rm", []).append(n)
    for kind, rows in by_model.items():
        model = str(prm_dir if kind == "prm" else rm_dir)
        ok, vk = dict(ours_kwargs), dict(vllm_kwargs)
        if kind == "prm":
            ok["pooler_config"] = {"pooling_type": "STEP", "step_tag_id": step_id}
            vk["pooler_config"] = {"tok_pooling_type": "STEP", "step_tag_id": step_id}
        sides = {}
        try:
            sides["ours"] = Side("ours", model, ok, threads)
            sides["vllm"] = Side("vllm", model, vk, threads)
            for name in rows:
                try:
                    results.append(_offline_row(name, sides, tok, repeats))
                except Exception as exc:  # noqa: BLE001 - one failing row must not lose the others
                    print(f"  [{name}] failed: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
                    results.append({"workload": name, "error": f"{type(exc).__name__}: {exc}"})
        finally:
            for s in sides.values():
                s.close()
    return results


def _offline_row(name: str, sides: dict[str, Side], tok, repeats: int) -> dict[str, Any]:
    warm, task = make(name, tok, 999)
    other = {"ours": "vllm", "vllm": "ours"}
    for who, s in sides.items():
        with paused(sides[other[who]].proc.pid):
            s.ask(op="calls", task=task, calls=warm[:2] if name == "per_call" else warm, column=1)
        s.ask(op="reset_hwm")
    times: dict[str, list[float]] = {"ours": [], "vllm": []}
    cpu: dict[str, list[float]] = {"ours": [], "vllm": []}
    diffs = []
    for r in range(repeats):
        calls, task = make(name, tok, 1000 + r)
        order = ["ours", "vllm"] if r % 2 == 0 else ["vllm", "ours"]
        scores = {}
        for who in order:
            with paused(sides[other[who]].proc.pid):
                if name == "repeat":
                    sides[who].ask(op="calls", task=task, calls=calls, column=1)
                ans = sides[who].ask(op="calls", task=task, calls=calls, column=1)
            times[who].append(ans["seconds"])
            cpu[who].append(ans["cpu_s"])
            scores[who] = ans["scores"]
        diffs.append(_diff(scores["ours"], scores["vllm"]))
        print(
            f"  [{name} {r}] ours {times['ours'][-1]:.2f} s ({cpu['ours'][-1]:.1f} CPU-s), vLLM "
            f"{times['vllm'][-1]:.2f} s ({cpu['vllm'][-1]:.1f} CPU-s), "
            f"max abs diff {diffs[-1]:.1e}, load {os.getloadavg()[0]:.1f}",
            file=sys.stderr,
            flush=True,
        )
    mem = {who: s.ask(op="rss") for who, s in sides.items()}
    ours_s, vllm_s = statistics.median(times["ours"]), statistics.median(times["vllm"])
    tokens = sum(len(x) for call in calls for x in call)
    return {
        "workload": name,
        "texts": sum(len(c) for c in calls),
        "calls": len(calls),
        "tokens": tokens,
        "vllm_s": vllm_s,
        "ours_s": ours_s,
        "ratio": vllm_s / ours_s,
        "target": TARGETS.get(name),
        "vllm_times_s": times["vllm"],
        "ours_times_s": times["ours"],
        "max_abs_diff": max(diffs),
        "vllm_peak_mib": mem["vllm"]["hwm_mib"],
        "ours_peak_mib": mem["ours"]["hwm_mib"],
        "ours_cache": sides["ours"].ask(op="stats"),
        "vllm_cpu_s": statistics.median(cpu["vllm"]),
        "ours_cpu_s": statistics.median(cpu["ours"]),
    }


# ---------------------------------------------------------------------- server
def _ids_body(ids: list[int]) -> dict[str, Any]:
    """The ``/pooling`` request both servers get: token ids, raw classifier scores."""
    return {"input": ids, "task": "classify", "use_activation": False}


async def _post_ids(url: str, ids: list[list[int]], concurrency: int) -> list[float]:
    from benchmarks.remote import post_each_aiohttp

    return await post_each_aiohttp(url, ids, concurrency, body=_ids_body, timeout_s=1200.0)


def _tree_hwm(pid: int) -> float:
    from benchmarks.engine_side import _status_kib, _tree

    return sum(_status_kib(p, "VmHWM") for p in _tree(pid)) / 1024


def cpu_seconds(pid: int) -> float:
    from benchmarks.engine_side import cpu_seconds as tree_cpu

    return tree_cpu(pid)


def run_server(
    rm_dir: Path, tok, repeats: int, threads: int, concurrencies: list[int], cache_bytes: int | None
) -> list[dict[str, Any]]:
    """Both servers up (one vLLM engine), per-sample requests in rollout order, alternating servers."""
    from benchmarks.remote import SERVE_ARGS
    from benchmarks.workloads import grpo_workload
    from tests.compat.vllm_live.oracle import VllmServer
    from tests.support.server import ServerProcess

    extra = ["--prefix-cache-bytes", str(cache_bytes)] if cache_bytes is not None else []
    ours = ServerProcess(
        str(rm_dir),
        *SERVE_ARGS,
        *extra,
        omp_threads=threads,
        startup_timeout=300,
    ).start()
    results = []
    vllm = None
    try:
        vllm = VllmServer(
            str(rm_dir), "--enforce-eager", "--max-model-len", "4096", threads=threads, startup_timeout=600
        )
        urls = {"ours": ours.url, "vllm": vllm.url}
        warm = grpo_workload(tok, 998, 2, 8, prompt_range=(128, 384))
        pids = {"ours": ours.proc.pid, "vllm": vllm._proc.pid}
        other = {"ours": "vllm", "vllm": "ours"}
        for who, url in urls.items():
            with paused(pids[other[who]]):
                asyncio.run(_post_ids(url, _ids(tok, warm.texts), 8))
        for c in concurrencies:
            times: dict[str, list[float]] = {"ours": [], "vllm": []}
            cpu: dict[str, list[float]] = {"ours": [], "vllm": []}
            diffs = []
            for r in range(repeats):
                ids = rollout_ids(tok, 2000 + 10 * c + r)
                scores = {}
                for who in ["ours", "vllm"] if r % 2 == 0 else ["vllm", "ours"]:
                    with paused(pids[other[who]]):
                        c0, t = cpu_seconds(pids[who]), time.perf_counter()
                        scores[who] = asyncio.run(_post_ids(urls[who], ids, c))
                        times[who].append(time.perf_counter() - t)
                        cpu[who].append(cpu_seconds(pids[who]) - c0)
                diffs.append(_diff(scores["ours"], scores["vllm"]))
                print(
                    f"  [server c={c} {r}] ours {times['ours'][-1]:.2f} s, vLLM {times['vllm'][-1]:.2f} s, "
                    f"diff {diffs[-1]:.1e}, load {os.getloadavg()[0]:.1f}",
                    file=sys.stderr,
                    flush=True,
                )
            ours_s, vllm_s = statistics.median(times["ours"]), statistics.median(times["vllm"])
            results.append(
                {
                    "workload": f"server c={c}",
                    "texts": len(ids),
                    "calls": len(ids),
                    "tokens": sum(len(x) for x in ids),
                    "vllm_s": vllm_s,
                    "ours_s": ours_s,
                    "ratio": vllm_s / ours_s,
                    "target": TARGETS.get(f"server c={c}"),
                    "vllm_times_s": times["vllm"],
                    "ours_times_s": times["ours"],
                    "max_abs_diff": max(diffs),
                    "vllm_peak_mib": _tree_hwm(vllm._proc.pid),
                    "vllm_cpu_s": statistics.median(cpu["vllm"]),
                    "ours_cpu_s": statistics.median(cpu["ours"]),
                    "ours_peak_mib": _tree_hwm(ours.proc.pid),
                }
            )
    finally:
        if vllm is not None:
            vllm.close()
        ours.stop()
    return results


def format_rows(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| workload | texts / calls | tokens | vLLM s | rlhf-rewards s | ratio (target) | CPU-s vLLM / "
        "rlhf-rewards | peak MiB vLLM / rlhf-rewards | max abs diff |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['workload']} | failed: {r['error'][:200]} |||||||")
            continue
        target = r.get("target")
        mark = "" if target is None else f" ({'>=' if r['ratio'] >= target else 'MISSED >='}{target:g}x)"
        lines.append(
            f"| {r['workload']} | {r['texts']} / {r['calls']} | {r['tokens']} | {r['vllm_s']:.2f} | "
            f"{r['ours_s']:.2f} | **{r['ratio']:.2f}x**{mark} | {r.get('vllm_cpu_s', float('nan')):.1f} / "
            f"{r.get('ours_cpu_s', float('nan')):.1f} | {r['vllm_peak_mib']:.0f} / "
            f"{r['ours_peak_mib']:.0f} | {r['max_abs_diff']:.1e} |"
        )
    return "\n".join(lines)


def main(
    names: list[str],
    *,
    repeats: int,
    threads: int,
    server: bool,
    concurrencies: list[int],
    cache_bytes: int | None,
    json_path: Path,
) -> int:
    from transformers import AutoTokenizer

    from benchmarks.workloads import STEP_TAG, ModelShape, build_model
    from tests.compat.vllm_live.oracle import ensure_vllm

    ensure_vllm()
    started = time.perf_counter()
    rm_dir = build_model("rm", ModelShape())
    prm_dir = build_model("prm", ModelShape())
    tok = AutoTokenizer.from_pretrained(str(rm_dir))
    step_id = tok.convert_tokens_to_ids(STEP_TAG)
    load_start = os.getloadavg()
    rows = (
        run_offline(
            [n for n in names if n != "server"], rm_dir, prm_dir, step_id, tok, repeats, threads, cache_bytes
        )
        if any(n != "server" for n in names)
        else []
    )
    if server:
        try:
            rows += run_server(rm_dir, tok, repeats, threads, concurrencies, cache_bytes)
        except Exception as exc:  # noqa: BLE001 - keep the offline rows
            print(f"  [server] failed: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
            rows.append({"workload": "server", "error": f"{type(exc).__name__}: {exc}"})
    report = {
        "command": "python -m benchmarks.run " + " ".join(sys.argv[1:]),
        "repeats": repeats,
        "threads": threads,
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
        "load_average_start": load_start,
        "load_average_end": os.getloadavg(),
        "wall_s": time.perf_counter() - started,
        "rows": rows,
    }
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(report, indent=2))
    print(format_rows(rows))
    print(
        f"threads {threads} per engine, OMP_WAIT_POLICY {os.environ.get('OMP_WAIT_POLICY', 'unset')}; load average start {load_start}, end {report['load_average_end']}; "
        f"{report['wall_s']:.0f} s; JSON: {json_path}"
    )
    return 0


__all__ = ["main", "make", "rollout_order", "run_offline", "run_server"]
