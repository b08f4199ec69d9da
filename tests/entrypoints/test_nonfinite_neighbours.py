"""A prompt whose own forward is finite keeps its score when a neighbour in the same call turns NaN.

The poisoned checkpoint has one embedding row set to NaN, so every prompt containing that token is
non-finite, and every other prompt must score exactly as on the clean checkpoint: packed beside the NaN
prompt, sharing a prefix with it, or in another micro-batch.
"""

from __future__ import annotations

import pytest
import torch

from rlhf_rewards import LLM, PoolingParams
from tests.support.checkpoints import with_nan_embedding

RAW = PoolingParams(use_activation=False)


@pytest.fixture(scope="module")
def engines(qwen3_rm, tmp_path_factory):
    clean = LLM(str(qwen3_rm), device="cpu")
    tok = clean.tokenizer
    with_token = tok("Hello 3")["input_ids"]
    poison = next(t for t in reversed(with_token) if t not in tok("Hello")["input_ids"])
    poisoned = LLM(str(with_nan_embedding(qwen3_rm, tmp_path_factory.mktemp("nan-rm"), poison)), device="cpu")
    return clean, poisoned, poison


@pytest.mark.parametrize(
    "texts",
    [
        ["Hello 3", "Hello"],  # the clean prompt is the NaN prompt's prefix
        ["Hello", "Hello 3", "Hello world"],  # shared prefix, NaN in the middle
        ["a b c 3 d", "x y z", "Hello there"],  # packed into one row without a shared prefix
    ],
)
def test_a_nan_neighbour_costs_no_prompt_its_score(engines, texts):
    clean, poisoned, poison = engines
    outs = poisoned.encode(texts, RAW, pooling_task="classify", use_tqdm=False)
    refs = clean.encode(texts, RAW, pooling_task="classify", use_tqdm=False)
    for text, out, ref in zip(texts, outs, refs, strict=True):
        if poison in out.prompt_token_ids:
            assert out.error is not None and torch.isnan(out.outputs.data).any()
        else:
            assert out.error is None, f"{text!r} lost its score to a NaN neighbour"
            torch.testing.assert_close(out.outputs.data, ref.outputs.data, atol=1e-5, rtol=1e-5)
    assert any(poison in o.prompt_token_ids for o in outs)


def test_a_prompt_that_is_nan_alone_stays_an_error(engines):
    _, poisoned, _ = engines
    outs = poisoned.encode(["Hello 3", "Hello 3 again"], RAW, pooling_task="classify", use_tqdm=False)
    assert all(o.error is not None for o in outs)
