"""The one launcher of real ``rlhf-rewards serve`` servers on 127.0.0.1, for tests and benchmarks.

- :class:`ServerProcess`: the CLI in a subprocess (what users run; needed to send signals or kill it), on a
  free port or a given one; its output goes to a log that failures print.
- :func:`serve`: a :class:`ServerProcess` as a context manager that yields the base URL.
- :func:`shared_server`: one such process per configuration for the whole pytest session, shared by
  ``tests/server`` and ``tests/workers`` (each process costs seconds of imports on a small machine).
- :class:`InProcessServer`: the same CLI arguments and app, served by uvicorn in a thread of this process,
  for configurations that need no signals (API key, tiny queue, LoRA, a poisoned model); built on
  :class:`AppThread`, which serves any ASGI app that way (e.g. a scripted fake server).
- :func:`wait_healthy`: poll ``GET /health`` until it answers 200, for servers started some other way.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

#: Where ``python -m rlhf_rewards...`` finds the package (a source checkout or site-packages).
_PACKAGE_ROOT = Path(__file__).resolve().parents[2]
#: Characters of the server log quoted in errors.
LOG_TAIL = 4000


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


def wait_healthy(url: str, *, timeout: float = 180.0, alive: Any = None, interval: float = 0.2) -> bool:
    """Poll ``GET {url}/health`` until it answers 200 (``True``) or ``timeout`` seconds pass (``False``).

    ``alive``: an optional callable; polling stops early (``False``) once it returns false (e.g. the server
    process exited).
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if alive is not None and not alive():
            return False
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                return True
        time.sleep(interval)
    return False


class ServerProcess:
    """``python -m rlhf_rewards.cli.main serve MODEL --port P --disable-access-log ...`` in a subprocess.

    Args:
        model: Model folder.
        *args: Extra CLI arguments.
        env: Extra environment variables (on top of offline hub, no tokenizer threads).
        port: Port to bind on 127.0.0.1. Default: a free one (and another one if it is taken meanwhile).
        log_path: Where the server's output goes (kept). Default: a temporary file, removed on exit.
        omp_threads: ``OMP_NUM_THREADS`` of the server (default 1: tests run several processes at once), or
            ``None`` to inherit this process's setting.
        startup_timeout: Seconds ``with ServerProcess(...)`` waits for ``/health``.
        source_root: The source tree whose ``rlhf_rewards`` runs (``python -m`` runs in it, so its package
            comes first). Default: this checkout.
    """

    def __init__(
        self,
        model: str | Path,
        *args: str,
        env: dict[str, str] | None = None,
        port: int | None = None,
        log_path: str | os.PathLike[str] | None = None,
        omp_threads: int | None = 1,
        startup_timeout: float = 180.0,
        source_root: str | os.PathLike[str] | None = None,
    ) -> None:
        if port is not None and not 0 < port < 65536:
            raise ValueError(f"port must be in 1..65535, got {port}.")
        self.model = str(model)
        self.args = list(args)
        self.extra_env = dict(env or {})
        self.omp_threads = omp_threads
        self.startup_timeout = startup_timeout
        self.source_root = Path(source_root) if source_root is not None else _PACKAGE_ROOT
        self.proc: subprocess.Popen | None = None
        self.fixed_port = port
        self.port = port or 0
        self._keep_log = log_path is not None
        if log_path is None:
            with tempfile.NamedTemporaryFile(prefix="rlhf-rewards-server-", suffix=".log", delete=False) as f:
                log_path = f.name
        self.log_path = Path(log_path)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self.log_path.write_bytes(b"")

    @property
    def url(self) -> str:
        """Base URL."""
        return f"http://127.0.0.1:{self.port}"

    def launch(self) -> ServerProcess:
        """Start the process without waiting (see :meth:`wait`), so several servers load at once."""
        if self.fixed_port is None:
            self.port = free_port()
        elif not _port_is_free(self.fixed_port):
            raise RuntimeError(f"port {self.fixed_port} is in use; choose another one")
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
        if self.omp_threads is not None:
            env["OMP_NUM_THREADS"] = str(self.omp_threads)
        env.update(self.extra_env)
        cmd = [
            sys.executable,
            "-m",
            "rlhf_rewards.cli.main",
            "serve",
            self.model,
            "--port",
            str(self.port),
            "--disable-access-log",
            *self.args,
        ]
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=str(self.source_root)
            )
        return self

    def wait(self, timeout: float = 180.0) -> ServerProcess:
        """Wait until ``/health`` answers 200 (relaunching on another free port if the port was taken); raise
        ``RuntimeError`` with the end of the server's log if it does not."""
        for _ in range(3):
            if wait_healthy(self.url, timeout=timeout, alive=lambda: self.proc.poll() is None):
                return self
            self.kill()
            if self.fixed_port is not None or "address already in use" not in self.log().lower():
                break
            self.launch()
        raise RuntimeError(
            f"server {self.url} did not start (exit {self.proc.poll()}); its log "
            f"({self.log_path}) ends with:\n{self.log()[-LOG_TAIL:]}"
        )

    def start(self, timeout: float = 180.0) -> ServerProcess:
        """Launch and wait until ready."""
        return self.launch().wait(timeout)

    def log(self) -> str:
        """Everything the server printed so far."""
        return self.log_path.read_text(errors="replace")

    def terminate(self, timeout: float = 60.0) -> int:
        """SIGTERM, then wait for the exit code."""
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise

    def kill(self) -> None:
        """SIGKILL (a crash, as far as clients can tell)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(30)

    def __enter__(self) -> ServerProcess:
        return self.start(self.startup_timeout) if self.proc is None else self.wait(self.startup_timeout)

    def stop(self, *, show_log: bool = False) -> None:
        """SIGTERM, SIGKILL after 30 s; print the end of the log to stderr with ``show_log``; remove a
        temporary log."""
        try:
            self.terminate(30)
        except subprocess.TimeoutExpired:
            pass
        finally:
            self.kill()
            if show_log and self.log_path.exists():
                print(f"--- log of the server at {self.url}:\n{self.log()[-LOG_TAIL:]}", file=sys.stderr)
            if not self._keep_log:
                self.log_path.unlink(missing_ok=True)

    def __exit__(self, exc_type: type[BaseException] | None, *exc: object) -> None:
        self.stop(show_log=exc_type is not None)  # on failure, the server's side of it


@contextlib.contextmanager
def serve(model: str | Path, *args: str, **kw: Any) -> Iterator[str]:
    """Run ``rlhf-rewards serve MODEL *args`` (see :class:`ServerProcess` for ``kw``) while the block runs;
    yields its base URL once ``/health`` answers, stops it (SIGTERM, then SIGKILL) afterwards."""
    with ServerProcess(model, *args, **kw) as proc:
        yield proc.url


_SHARED: dict[tuple[str, ...], ServerProcess] = {}


def shared_server(model: str | Path, *args: str) -> ServerProcess:
    """A running :class:`ServerProcess` for ``(model, *args)``, started once per pytest session.

    Tests must not kill or signal it; it is terminated when the session ends.
    """
    key = (str(model), *args)
    proc = _SHARED.get(key)
    if proc is None or proc.proc is None or proc.proc.poll() is not None:
        proc = ServerProcess(model, *args).start()
        _SHARED[key] = proc
    return proc


@atexit.register
def _stop_shared() -> None:
    for proc in _SHARED.values():
        proc.stop()
    _SHARED.clear()


class AppThread:
    """An ASGI app served by uvicorn in a daemon thread of this process, on 127.0.0.1 (a context manager).

    Args:
        app: The ASGI app.
        port: Port; default a free one.
        lifespan: uvicorn's ``lifespan`` setting (``"on"`` runs the app's startup and shutdown).
    """

    def __init__(self, app: Any, *, port: int | None = None, lifespan: str = "auto") -> None:
        import uvicorn

        self.app = app
        self.port = port or free_port()
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning", lifespan=lifespan)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, name=f"test-server-{self.port}", daemon=True)

    @property
    def url(self) -> str:
        """Base URL."""
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> AppThread:
        self.thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"in-process server on port {self.port} did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: Any) -> None:
        self.server.should_exit = True
        self.thread.join(60)


class InProcessServer(AppThread):
    """``rlhf-rewards serve MODEL *args`` served by uvicorn in a thread of this process, on 127.0.0.1.

    The app is built by the CLI's own :func:`~rlhf_rewards.cli.serve.make_app`, so flags are parsed and
    checked exactly as for the command; ``served`` is the app's :class:`~rlhf_rewards.server.base.serving.ServedModel`.

    Args:
        model: Model folder.
        *args: CLI arguments after MODEL.
        env: Environment variables set while the app is built (e.g. ``RLHF_REWARDS_API_KEY``).
    """

    def __init__(self, model: str | Path, *args: str, env: dict[str, str] | None = None) -> None:
        from rlhf_rewards.cli.main import build_parser
        from rlhf_rewards.cli.serve import make_app

        port = free_port()
        parsed = build_parser().parse_args(["serve", str(model), "--port", str(port), *args])
        saved = {k: os.environ.get(k) for k in (env or {})}
        os.environ.update(env or {})
        try:
            app, self.served, _ = make_app(parsed)
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
        super().__init__(app, port=port, lifespan="on")


__all__ = [
    "AppThread",
    "InProcessServer",
    "ServerProcess",
    "free_port",
    "serve",
    "shared_server",
    "wait_healthy",
]
