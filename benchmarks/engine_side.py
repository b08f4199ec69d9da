"""One engine in its own process, timed from inside it: vLLM (run with ``.venv-vllm/bin/python``) or this project.

    .venv-vllm/bin/python benchmarks/engine_side.py vllm '{"model": ..., "kwargs": {...}}'
    .venv/bin/python benchmarks/engine_side.py ours '{"model": ..., "kwargs": {...}}'

Started by :mod:`benchmarks.vs_vllm`; imports only the standard library and the engine it drives (so the vLLM
side runs vLLM's own code only). Requests on stdin, one JSON per line:

- ``{"op": "calls", "task": "classify" | "token_classify", "calls": [[ids, ...], ...], "column": int}``: runs
  ``encode`` once per inner list (token ids as ``{"prompt_token_ids": ...}``, ``use_activation=False``), timed
  as a whole; answers ``{"seconds": s, "cpu_s": CPU time of its processes, "scores": [...]}`` (one float per
  text for ``classify``; for ``token_classify``, the ``column`` of each row: a list per text).
- ``{"op": "rss"}``: ``{"rss_mib": ..., "hwm_mib": ...}`` summed over this process and its descendants
  (vLLM's engine core is a child process), and ``{"op": "reset_hwm"}``.
- ``{"op": "stats"}``: the engine's prefix-cache counters (this project only).

Answers are the stdout lines starting with :data:`MARK` (vLLM logs to stdout too).
"""

from __future__ import annotations

import json
import os
import sys
import time

MARK = "@@engine-side@@ "


def _answer(obj) -> None:
    sys.stdout.write(MARK + json.dumps(obj) + "\n")
    sys.stdout.flush()


def _tree(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(name))
    out, stack = [], [pid]
    while stack:
        p = stack.pop()
        out.append(p)
        stack.extend(children.get(p, []))
    return out


def _status_kib(pid: int, field: str) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def cpu_seconds(pid: int | None = None) -> float:
    """User + system CPU time of ``pid`` (default: this process) and its live descendants."""
    total = 0
    for p in _tree(pid or os.getpid()):
        try:
            with open(f"/proc/{p}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime (clock ticks)
        except (OSError, IndexError, ValueError):
            continue
    return total / os.sysconf("SC_CLK_TCK")


def memory() -> dict[str, float]:
    pids = _tree(os.getpid())
    return {
        "rss_mib": sum(_status_kib(p, "VmRSS") for p in pids) / 1024,
        "hwm_mib": sum(_status_kib(p, "VmHWM") for p in pids) / 1024,
        "processes": len(pids),
    }


def reset_hwm() -> None:
    for p in _tree(os.getpid()):
        try:
            with open(f"/proc/{p}/clear_refs", "w") as f:
                f.write("5")
        except OSError:
            pass


class _Vllm:
    def __init__(self, model: str, kwargs: dict) -> None:
        import vllm

        self.vllm = vllm
        if isinstance(kwargs.get("pooler_config"), dict):
            from vllm.config import PoolerConfig

            kwargs["pooler_config"] = PoolerConfig(**kwargs["pooler_config"])
        self.llm = vllm.LLM(model, **kwargs)

    def encode(self, ids: list[list[int]], task: str):
        params = self.vllm.PoolingParams(use_activation=False)
        outs = self.llm.encode(
            [{"prompt_token_ids": x} for x in ids], params, pooling_task=task, use_tqdm=False
        )
        return [o.outputs.data for o in outs]

    def stats(self) -> dict:
        return {}


class _Ours:
    def __init__(self, model: str, kwargs: dict) -> None:
        import rlhf_rewards

        self.rr = rlhf_rewards
        self.llm = rlhf_rewards.LLM(model, **kwargs)

    def encode(self, ids: list[list[int]], task: str):
        params = self.rr.PoolingParams(use_activation=False)
        outs = self.llm.encode(
            [{"prompt_token_ids": x} for x in ids], params, pooling_task=task, use_tqdm=False
        )
        return [o.outputs.data for o in outs]

    def stats(self) -> dict:
        cache = getattr(self.llm.runner, "prefix_cache", None)
        return cache.stats() if cache is not None else {}


def _scores(data, task: str, column: int):
    if task == "classify":
        return float(data[0])
    return [float(row[column]) for row in data]


def main() -> None:
    which, spec = sys.argv[1], json.loads(sys.argv[2])
    engine = (_Vllm if which == "vllm" else _Ours)(spec["model"], dict(spec.get("kwargs", {})))
    _answer({"ready": True, **memory()})
    for line in sys.stdin:
        if not line.strip():
            continue
        req = json.loads(line)
        op = req["op"]
        if op == "calls":
            task, column = req["task"], int(req.get("column", 0))
            cpu = cpu_seconds()
            t = time.perf_counter()
            outs = [engine.encode(ids, task) for ids in req["calls"]]
            seconds = time.perf_counter() - t
            _answer(
                {
                    "seconds": seconds,
                    "cpu_s": cpu_seconds() - cpu,
                    "scores": [_scores(d, task, column) for call in outs for d in call],
                }
            )
        elif op == "rss":
            _answer(memory())
        elif op == "reset_hwm":
            reset_hwm()
            _answer({"ok": True})
        elif op == "stats":
            _answer(engine.stats())
        elif op == "exit":
            _answer({"ok": True})
            return


if __name__ == "__main__":
    main()
