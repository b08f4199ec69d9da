"""Port of vLLM's ``tests/entrypoints/pooling/basic/test_encode.py`` (GitHub commit
39dcb9d604064cc3254e39b2982e4771b8702ca9), on a tiny base ``Qwen3Model`` instead of
``intfloat/multilingual-e5-small``.

Kept: ``test_multiple_pooling_params`` as it is (``VLLMValidationError`` is this engine's ``RequestError``,
also a ``ValueError``). Changed: ``test_right_side_truncation`` asserts the tokenizer's side as vLLM's does,
then what vLLM 0.32 does with it (measured in ``tests/compat/vllm_live``): ``truncate_prompt_tokens`` and
``truncation=True`` keep the FIRST tokens, ``truncation_side="left"`` the last ones.
"""

from __future__ import annotations

import weakref

import pytest

from rlhf_rewards import LLM, PoolingParams
from tests.compat.vllm.conftest import VLLMValidationError

PROMPTS = [
    "Hello, my name is",
    "The president of the United States is",
    "The capital of France is",
    "The future of AI is",
]


@pytest.fixture(scope="module")
def llm(e5_like):
    llm = LLM(
        str(e5_like),
        max_model_len=None,
        max_num_batched_tokens=32768,
        tensor_parallel_size=1,
        enforce_eager=True,
        seed=0,
    )
    yield weakref.proxy(llm)
    del llm


def test_multiple_pooling_params(llm: LLM):
    pooling_params = [
        PoolingParams(),
        PoolingParams(),
        PoolingParams(),
        PoolingParams(),
    ]

    # Multiple PoolingParams should be matched with each prompt
    outputs = llm.encode(PROMPTS, pooling_params=pooling_params, pooling_task="embed")
    assert len(PROMPTS) == len(outputs)

    # Exception raised, if the size of params does not match the size of prompts
    with pytest.raises(VLLMValidationError):
        outputs = llm.encode(PROMPTS, pooling_params=pooling_params[:3], pooling_task="embed")

    # Single PoolingParams should be applied to every prompt
    single_pooling_params = PoolingParams()
    outputs = llm.encode(PROMPTS, pooling_params=single_pooling_params, pooling_task="embed")
    assert len(PROMPTS) == len(outputs)

    # pooling_params is None, default params should be applied
    outputs = llm.encode(PROMPTS, pooling_params=None, pooling_task="embed")
    assert len(PROMPTS) == len(outputs)


def test_right_side_truncation(llm: LLM):
    # Embeddings models should truncate the end of the prompt
    tokenizer = llm.get_tokenizer()
    assert tokenizer.truncation_side == "right"
    ids = tokenizer(PROMPTS[1])["input_ids"]
    (default,) = llm.encode(
        PROMPTS[1], pooling_task="embed", tokenization_kwargs={"truncate_prompt_tokens": 3}
    )
    (kept_first,) = llm.encode(
        PROMPTS[1],
        pooling_task="embed",
        tokenization_kwargs={"truncate_prompt_tokens": 3, "truncation_side": "right"},
    )
    (kept_last,) = llm.encode(
        PROMPTS[1],
        pooling_task="embed",
        tokenization_kwargs={"truncate_prompt_tokens": 3, "truncation_side": "left"},
    )
    assert default.prompt_token_ids == ids[:3]
    assert kept_first.prompt_token_ids == ids[:3]
    assert kept_last.prompt_token_ids == ids[-3:]
    # vLLM's truncation=True cuts to max_length.
    (cut,) = llm.encode(
        PROMPTS[1], pooling_task="embed", tokenization_kwargs={"truncation": True, "max_length": 2}
    )
    assert cut.prompt_token_ids == ids[:2]
