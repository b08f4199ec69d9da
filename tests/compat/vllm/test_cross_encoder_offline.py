"""Port of vLLM's ``tests/entrypoints/pooling/scoring/test_cross_encoder_offline.py`` (GitHub commit
416e7956c390e8fbe226f5ad3901571a0996a1ad), on a tiny one-label ``Qwen3ForSequenceClassification`` instead of
``tomaarsen/Qwen3-Reranker-0.6B-seq-cls``.

Kept: every call and assertion (``LLM.score`` 1 -> 1, 1 -> N, N -> N against the HF cross-encoder within
``rel=0.01``, ``encode(pooling_task="classify")``, ``max_tokens_per_doc`` through ``PoolingParams.extra_kwargs``,
and ``test_pooling_params``). Changed: the model, and the reference: vLLM's ``hf_runner(...,
is_cross_encoder=True).predict(pairs)`` (sentence-transformers' ``CrossEncoder``: the tokenizer's pair
encoding, sigmoid of the one logit) is written out with plain transformers; ``attention_config`` (a ROCm
backend switch) is passed as ``None``.
"""

from __future__ import annotations

import weakref

import pytest
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from rlhf_rewards import LLM, PoolingParams
from tests.compat.vllm.conftest import softmax

PROMPT = "The chef prepared a delicious meal."
TEXTS_1 = [
    "What is the capital of France?",
    "What is the capital of Germany?",
]

TEXTS_2 = [
    "The capital of France is Paris.",
    "The capital of Germany is Berlin.",
]


@pytest.fixture(scope="module")
def llm(reranker_like):
    llm = LLM(
        model=str(reranker_like),
        max_num_batched_tokens=32768,
        tensor_parallel_size=1,
        enforce_eager=True,
        seed=0,
        attention_config=None,
    )
    yield weakref.proxy(llm)
    del llm


class _HFCrossEncoder:
    """What ``hf_runner(model, is_cross_encoder=True)`` computes: sigmoid(logit) of the tokenizer's pair encoding."""

    def __init__(self, path):
        self.tok = AutoTokenizer.from_pretrained(str(path))
        self.model = AutoModelForSequenceClassification.from_pretrained(str(path), dtype=torch.float32).eval()

    def predict(self, pairs):
        scores = []
        with torch.no_grad():
            for q, d in pairs:
                batch = self.tok(text=q, text_pair=d, return_tensors="pt")
                scores.append(torch.sigmoid(self.model(**batch).logits[0, 0]).item())
        return torch.tensor(scores)


@pytest.fixture(scope="module")
def hf_model(reranker_like):
    return _HFCrossEncoder(reranker_like)


def test_1_to_1(llm, hf_model):
    text_pair = [TEXTS_1[0], TEXTS_2[0]]

    hf_outputs = hf_model.predict([text_pair]).tolist()
    vllm_outputs = [output.outputs.score for output in llm.score(text_pair[0], text_pair[1])]

    assert len(vllm_outputs) == 1
    assert len(hf_outputs) == 1

    assert hf_outputs[0] == pytest.approx(vllm_outputs[0], rel=0.01)


def test_1_to_n(llm, hf_model):
    text_pairs = [
        [TEXTS_1[0], TEXTS_2[0]],
        [TEXTS_1[0], TEXTS_2[1]],
    ]

    vllm_outputs = [output.outputs.score for output in llm.score(TEXTS_1[0], TEXTS_2)]
    hf_outputs = hf_model.predict(text_pairs).tolist()

    assert len(vllm_outputs) == 2
    assert len(hf_outputs) == 2

    assert hf_outputs[0] == pytest.approx(vllm_outputs[0], rel=0.01)
    assert hf_outputs[1] == pytest.approx(vllm_outputs[1], rel=0.01)


def test_n_to_n(llm, hf_model):
    text_pairs = [
        [TEXTS_1[0], TEXTS_2[0]],
        [TEXTS_1[1], TEXTS_2[1]],
    ]

    vllm_outputs = [output.outputs.score for output in llm.score(TEXTS_1, TEXTS_2)]
    hf_outputs = hf_model.predict(text_pairs).tolist()

    assert len(vllm_outputs) == 2
    assert len(hf_outputs) == 2

    assert hf_outputs[0] == pytest.approx(vllm_outputs[0], rel=0.01)
    assert hf_outputs[1] == pytest.approx(vllm_outputs[1], rel=0.01)


def test_classify(llm):
    outputs = llm.encode(PROMPT, pooling_task="classify", use_tqdm=False)
    assert len(outputs) == 1
    assert len(outputs[0].outputs.data) == 1


def test_max_tokens_per_doc(llm: LLM):
    """Test max_tokens_per_doc via PoolingParams.extra_kwargs (offline)."""
    long_doc = "The capital of France is Paris. " * 20

    # Without truncation
    outputs_no_limit = llm.score(
        TEXTS_1[0],
        long_doc,
        use_tqdm=False,
    )

    # With truncation via extra_kwargs
    outputs_with_limit = llm.score(
        TEXTS_1[0],
        long_doc,
        pooling_params=PoolingParams(extra_kwargs={"max_tokens_per_doc": 10}),
        use_tqdm=False,
    )

    assert len(outputs_no_limit) == 1
    assert len(outputs_with_limit) == 1

    # Truncated version should have fewer prompt tokens
    no_limit_tokens = len(outputs_no_limit[0].prompt_token_ids)
    with_limit_tokens = len(outputs_with_limit[0].prompt_token_ids)
    assert with_limit_tokens < no_limit_tokens


def test_pooling_params(llm: LLM):
    def get_outputs(use_activation):
        outputs = llm.score(
            TEXTS_1[0],
            TEXTS_2[0],
            pooling_params=PoolingParams(use_activation=use_activation),
            use_tqdm=False,
        )
        return torch.tensor([x.outputs.score for x in outputs])

    default = get_outputs(use_activation=None)
    w_activation = get_outputs(use_activation=True)
    wo_activation = get_outputs(use_activation=False)

    assert torch.allclose(default, w_activation, atol=1e-2), "Default should use activation."
    assert not torch.allclose(w_activation, wo_activation, atol=1e-2), (
        "wo_activation should not use activation."
    )
    assert torch.allclose(softmax(wo_activation), w_activation, atol=1e-2), (
        "w_activation should be close to activation(wo_activation)."
    )
