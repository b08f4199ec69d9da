"""Start ``rlhf-rewards serve`` from a training recipe (``--serve``) and stop it when training ends.

The main process starts one server on 127.0.0.1 and every rank gets its URL, so a single-machine run needs
no second terminal. For a server on another machine (or shared by several runs), start it yourself with
``recipes/serve_reward_model.sh`` and pass ``--reward_url`` instead.
"""

from __future__ import annotations

import os
import shlex
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free on ``host`` right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class RewardServer:
    """One ``rlhf-rewards serve MODEL`` subprocess on ``host:port``.

    Args:
        model: Reward model folder or hub id.
        port: Port; default a free one.
        host: Interface to bind. Default 127.0.0.1.
        serve_args: Extra ``rlhf-rewards serve`` options, as one shell-quoted string (``"--dtype bfloat16"``).
        log_file: Where the server's output goes. Default ``reward-server.log`` in the working directory.
    """

    def __init__(
        self,
        model: str,
        *,
        port: int | None = None,
        host: str = "127.0.0.1",
        serve_args: str = "",
        log_file: str | os.PathLike[str] | None = None,
    ) -> None:
        if port is not None and not 0 < port < 65536:
            raise ValueError(f"port must be in 1..65535, got {port}.")
        self.model = model
        self.host = host
        self.port = port or free_port(host)
        self.serve_args = shlex.split(serve_args or "")
        self.log_file = Path(log_file or "reward-server.log")
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        """Base URL of the server."""
        return f"http://{self.host}:{self.port}"

    def start(self, timeout: float = 600.0) -> RewardServer:
        """Start the server and wait until ``GET /health`` answers 200; raise with its log if it does not."""
        import httpx

        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        cmd = [
            sys.executable,
            "-m",
            "rlhf_rewards.cli.main",
            "serve",
            self.model,
            "--host",
            self.host,
            "--port",
            str(self.port),
            *self.serve_args,
        ]
        with open(self.log_file, "ab") as log:
            self.process = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                break
            try:
                if httpx.get(self.url + "/health", timeout=2.0).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        self.stop()
        tail = self.log_file.read_text(errors="replace")[-3000:]
        raise RuntimeError(
            f"`{shlex.join(cmd)}` did not become healthy at {self.url} within {timeout:.0f}s "
            f"(exit code {self.process.returncode}); its log ({self.log_file}) ends with:\n{tail}"
        )

    def stop(self, timeout: float = 60.0) -> None:
        """SIGTERM (the server finishes requests in flight), then SIGKILL if it has not exited in ``timeout``."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(30)


def serve_on_main_process(
    model: str,
    *,
    serve_args: str = "",
    port: int | None = None,
    log_file: str | os.PathLike[str] | None = None,
) -> tuple[str, RewardServer | None]:
    """Start a :class:`RewardServer` on the main process and share its URL with every rank.

    Returns ``(url, server)``; ``server`` is ``None`` on the other ranks. Stop it after training (main process).
    """
    from accelerate import PartialState
    from accelerate.utils import broadcast_object_list

    state = PartialState()
    server = None
    shared: list[str | None] = [None]
    if state.is_main_process:
        server = RewardServer(model, port=port, serve_args=serve_args, log_file=log_file)
        try:
            shared[0] = server.start().url
        except Exception as exc:  # the other ranks are waiting in the broadcast: tell them, then fail
            shared[0] = f"error: {exc}"
            broadcast_object_list(shared)
            raise
    broadcast_object_list(shared)
    if shared[0] is None or shared[0].startswith("error: "):
        raise RuntimeError(f"The main process could not start the reward server: {shared[0]}")
    return shared[0], server
