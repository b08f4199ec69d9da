"""Fixtures: a real server on the tiny Qwen3 reward model, and the same model in-process as the reference."""

from __future__ import annotations

import pytest

from rlhf_rewards import LLM
from tests.support.server import shared_server

MAX_CLIENT_BATCH = 32
MAX_BODY_BYTES = 200_000
SERVED_NAME = "tiny-rm"
#: The CLI arguments of the session's shared server (small request limits, so the limit tests stay small).
SERVER_ARGS = (
    "--served-model-name",
    SERVED_NAME,
    "--max-client-batch-size",
    str(MAX_CLIENT_BATCH),
    "--max-body-bytes",
    str(MAX_BODY_BYTES),
)


@pytest.fixture(scope="session")
def server(qwen3_rm):
    """``rlhf-rewards serve`` in a subprocess, shared with ``tests/workers`` (never kill it)."""
    return shared_server(qwen3_rm, *SERVER_ARGS)


@pytest.fixture(scope="session")
def llm(qwen3_rm):
    """The in-process engine the server's answers must equal."""
    return LLM(str(qwen3_rm), device="cpu")
