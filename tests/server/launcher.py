"""Start real ``rlhf-rewards serve`` processes on 127.0.0.1 (random free port) for tests."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

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
