"""Shared fixtures: tiny checkpoints are built once per test session into a temporary folder."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from tests.support.checkpoints import build_checkpoint  # noqa: E402


@pytest.fixture(scope="session")
def checkpoint_factory(tmp_path_factory: pytest.TempPathFactory):
    """``checkpoint_factory(architecture, **kw) -> Path``: build (and cache) a tiny checkpoint."""
    cache: dict[tuple, Path] = {}
    root = tmp_path_factory.mktemp("checkpoints")

    def make(architecture: str, **kw) -> Path:
        key = (architecture, tuple(sorted((k, repr(v)) for k, v in kw.items())))
        if key not in cache:
            cache[key] = build_checkpoint(architecture, root / f"{architecture}-{len(cache)}", **kw)
        return cache[key]

    return make


@pytest.fixture(scope="session")
def qwen3_rm(checkpoint_factory) -> Path:
    """A tiny Qwen3ForSequenceClassification reward model (1 label, right padding, pad token set)."""
    return checkpoint_factory("Qwen3ForSequenceClassification")


MIXED_TEXTS = [
    "Hello, my name is",
    "What is 12 + 7? The answer is 19. Step one: add the units. Step two: carry the tens.",
    "ok",
    "The quick brown fox jumps over the lazy dog. " * 6,
    "Reward models score completions.",
]
