"""Fixtures: a real server on the tiny Qwen3 reward model, and the same model in-process as the reference."""

from __future__ import annotations

import pytest

from rlhf_rewards import LLM
from tests.server.launcher import ServerProcess

MAX_CLIENT_BATCH = 32
MAX_BODY_BYTES = 200_000


@pytest.fixture(scope="session")
def server(qwen3_rm):
    """A server with small request limits (so the limit tests stay small)."""
    with ServerProcess(qwen3_rm, "--served-model-name", "tiny-rm", "--max-client-batch-size", str(MAX_CLIENT_BATCH),
                       "--max-body-bytes", str(MAX_BODY_BYTES)) as proc:
        yield proc


@pytest.fixture(scope="session")
def llm(qwen3_rm):
    """The in-process engine the server's answers must equal."""
    return LLM(str(qwen3_rm), device="cpu")
