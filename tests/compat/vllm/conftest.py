"""Tiny stand-ins for the real models vLLM's pooling tests download, and vLLM's test helpers.

vLLM's tests use hub models (``jason9693/Qwen2.5-1.5B-apeach``, ``internlm/internlm2-1_8b-reward``,
``intfloat/multilingual-e5-small``, ``tomaarsen/Qwen3-Reranker-0.6B-seq-cls``); these fixtures build
checkpoints with the same architectures (or the closest one this engine serves) and real config fields.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from rlhf_rewards.errors import RequestError

#: vLLM raises ``VLLMValidationError`` (a ``ValueError``) where this engine raises ``RequestError``.
VLLMValidationError = RequestError

#: vLLM 0.33's version the ports follow (the wheel's source is the reference; tests are read from GitHub).
VLLM_VERSION = "0.33.0"


def softmax(data: torch.Tensor) -> torch.Tensor:
    """``tests/models/utils.py::softmax`` of vLLM."""
    if data.shape[-1] == 1:
        return F.sigmoid(data)
    else:
        return F.softmax(data, dim=-1)


@pytest.fixture(scope="session")
def apeach_like(checkpoint_factory):
    """``jason9693/Qwen2.5-1.5B-apeach``: a 2-label ``*ForSequenceClassification`` (Qwen3 here)."""
    return checkpoint_factory("Qwen3ForSequenceClassification", num_labels=2, seed=151)


@pytest.fixture(scope="session")
def reranker_like(checkpoint_factory):
    """``tomaarsen/Qwen3-Reranker-0.6B-seq-cls``: a 1-label ``Qwen3ForSequenceClassification``."""
    return checkpoint_factory("Qwen3ForSequenceClassification", num_labels=1, seed=152)


@pytest.fixture(scope="session")
def internlm2_reward_like(checkpoint_factory):
    """``internlm/internlm2-1_8b-reward``."""
    return checkpoint_factory("InternLM2ForRewardModel", seed=153)


@pytest.fixture(scope="session")
def qwen2_reward_like(checkpoint_factory):
    """``Qwen/Qwen2.5-Math-RM-72B`` (vLLM's other token reward model)."""
    return checkpoint_factory("Qwen2ForRewardModel", seed=154)


@pytest.fixture(scope="session")
def e5_like(checkpoint_factory):
    """``intfloat/multilingual-e5-small``: an embedding backbone (a base ``Qwen3Model`` here; no BERT)."""
    return checkpoint_factory("Qwen3Model", seed=155)
