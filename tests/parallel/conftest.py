"""Tiny checkpoints and prompts shared by the parallel tests."""

from __future__ import annotations

import pytest

STEP = "<extra_0>"
PROMPT = "Question: what is 12 + 7? Think step by step and show the work before the answer."
#: GRPO-shaped: one prompt, several completions (shared prefix), a duplicate, and unrelated texts.
GROUP_TEXTS = [PROMPT + c for c in (" 19.", " It is 19 because 12 + 7 = 19.", " 20?", " 19.")] + [
    "Hello, my name is",
    "The quick brown fox jumps over the lazy dog. " * 5,
    "ok",
]
PRM_TEXTS = [
    f"{PROMPT} Step 1: 12 + 7 = 19 {STEP} Step 2: so 19 {STEP}",
    f"{PROMPT} Step 1: 12 + 7 = 20 {STEP}",
    "no step tag here at all",
    f"{STEP} short {STEP} {STEP}",
]


@pytest.fixture(scope="session")
def seq_rm(checkpoint_factory):
    """Skywork-style Qwen3 sequence RM (4 heads, 2 KV heads, 2 layers)."""
    return checkpoint_factory("Qwen3ForSequenceClassification")


@pytest.fixture(scope="session")
def token_rm(checkpoint_factory):
    """Qwen2.5-Math-RM-style token RM."""
    return checkpoint_factory("Qwen2ForRewardModel")


@pytest.fixture(scope="session")
def prm(checkpoint_factory):
    """Qwen2.5-Math-PRM-style process RM (STEP at <extra_0>)."""
    return checkpoint_factory("Qwen2ForProcessRewardModel")
