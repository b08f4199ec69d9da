"""Start real ``rlhf-rewards serve`` servers on 127.0.0.1 (random free port) for tests.

- :class:`ServerProcess`: the CLI in a subprocess (what users run; needed to send signals or kill it).
- :func:`shared_server`: one such process per configuration for the whole pytest session, shared by
  ``tests/server`` and ``tests/workers`` (each process costs seconds of imports on a small machine).
- :class:`InProcessServer`: the same CLI arguments and app, served by uvicorn in a thread of the test process,
  for configurations that need no signals (API key, tiny queue, LoRA, a poisoned model).
"""

from __future__ import annotations

import atexit
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    """``python -m rlhf_rewards.cli.main serve MODEL --port P ...`` in a subprocess.

    Args:
        model: Model folder.
        *args: Extra CLI arguments.
        env: Extra environment variables.
    """

    def __init__(self, model: str | Path, *args: str, env: dict[str, str] | None = None) -> None:
        self.model = str(model)
        self.args = list(args)
        self.extra_env = dict(env or {})
        self.proc: subprocess.Popen | None = None
        self.port = 0
        self._log = tempfile.NamedTemporaryFile(prefix="rlhf-rewards-server-", suffix=".log", delete=False)

    @property
    def url(self) -> str:
        """Base URL."""
        return f"http://127.0.0.1:{self.port}"

    def launch(self) -> ServerProcess:
        """Start the process without waiting (see :meth:`wait`), so several servers load at once."""
        self.port = free_port()
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
               "OMP_NUM_THREADS": "1", **self.extra_env}
        cmd = [sys.executable, "-m", "rlhf_rewards.cli.main", "serve", self.model, "--port", str(self.port),
               "--disable-access-log", *self.args]
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT, env=env,
                                     cwd=str(Path(__file__).resolve().parents[2]))
        return self

    def wait(self, timeout: float = 180.0) -> ServerProcess:
        """Wait until ``/health`` answers 200 (relaunching on another port if the port was taken)."""
        for _ in range(3):
            if self._wait_ready(timeout):
                return self
            if "address already in use" not in self.log().lower():
                break
            self.launch()
        raise RuntimeError(f"server did not start (exit {self.proc.poll()}):\n{self.log()[-4000:]}")

    def start(self, timeout: float = 180.0) -> ServerProcess:
        """Launch and wait until ready."""
        return self.launch().wait(timeout)

    def _wait_ready(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return False
            try:
                if httpx.get(self.url + "/health", timeout=2).status_code == 200:
                    return True
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        self.kill()
        return False

    def log(self) -> str:
        """Everything the server printed so far."""
        self._log.flush()
        return Path(self._log.name).read_text(errors="replace")

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
        return self.start() if self.proc is None else self.wait()

    def __exit__(self, *exc: object) -> None:
        try:
            self.terminate(30)
        except subprocess.TimeoutExpired:
            pass
        finally:
            self.kill()
            Path(self._log.name).unlink(missing_ok=True)


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
        proc.__exit__(None, None, None)
    _SHARED.clear()


class InProcessServer:
    """``rlhf-rewards serve MODEL *args`` served by uvicorn in a thread of this process, on 127.0.0.1.

    The app is built by the CLI's own :func:`~rlhf_rewards.cli.serve.make_app`, so flags are parsed and
    checked exactly as for the command.

    Args:
        model: Model folder.
        *args: CLI arguments after MODEL.
        env: Environment variables set while the app is built (e.g. ``RLHF_REWARDS_API_KEY``).
    """

    def __init__(self, model: str | Path, *args: str, env: dict[str, str] | None = None) -> None:
        import uvicorn

        from rlhf_rewards.cli.main import build_parser
        from rlhf_rewards.cli.serve import make_app

        self.port = free_port()
        parsed = build_parser().parse_args(["serve", str(model), "--port", str(self.port), *args])
        saved = {k: os.environ.get(k) for k in (env or {})}
        os.environ.update(env or {})
        try:
            self.app, self.engine, _ = make_app(parsed)
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
        config = uvicorn.Config(self.app, host="127.0.0.1", port=self.port, log_level="warning", lifespan="on")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, name=f"test-server-{self.port}", daemon=True)

    @property
    def url(self) -> str:
        """Base URL."""
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> InProcessServer:
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
