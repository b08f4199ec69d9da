"""Online differential on a one-label classifier (``Qwen3ForSequenceClassification``, num_labels=1): the
scoring routes (``/score``, ``/v1/score``, ``/rerank``, ``/v1/rerank``, ``/v2/rerank``) and ``/classify``."""

from __future__ import annotations

import pytest

from tests.compat.vllm_live.online import build, servers

pytestmark = pytest.mark.slow
NAME = "qwen3-classifier-1"


@pytest.fixture(scope="module")
def pair(tmp_path_factory, compat):
    model = build("Qwen3ForSequenceClassification", tmp_path_factory.mktemp("cls1"), num_labels=1)
    with servers(compat, model, NAME, strict=False) as p:
        yield p


@pytest.mark.timeout(900)
def test_scoring_routes(pair):
    for path in ("/score", "/v1/score"):
        pair.compare(
            f"{path} 1:1", "POST", path, {"queries": "what is a cat", "documents": "a cat is an animal"}
        )
        pair.compare(
            f"{path} 1:N", "POST", path, {"queries": "cat", "documents": ["a cat", "a dog", "a car"]}
        )
        pair.compare(
            f"{path} N:N", "POST", path, {"queries": ["cat", "dog"], "documents": ["a cat", "a dog"]}
        )
    pair.compare("/score data_1/data_2", "POST", "/score", {"data_1": "cat", "data_2": ["a cat", "a dog"]})
    pair.compare("/score text_1/text_2", "POST", "/score", {"text_1": "cat", "text_2": "a cat"})
    pair.compare("/score queries/items", "POST", "/score", {"queries": "cat", "items": ["a cat"]})
    pair.compare(
        "/score raw", "POST", "/score", {"queries": "cat", "documents": ["a cat"], "use_activation": False}
    )
    pair.compare("/score N:M", "POST", "/score", {"queries": ["a", "b"], "documents": ["a", "b", "c"]})
    pair.compare("/score empty documents", "POST", "/score", {"queries": "a", "documents": []})
    pair.compare("/score missing documents", "POST", "/score", {"queries": "a"})
    pair.compare(
        "/score max_tokens_per_doc",
        "POST",
        "/score",
        {"queries": "cat", "documents": ["a cat is a small animal"], "max_tokens_per_doc": 2},
    )
    pair.compare(
        "/score max_tokens_per_doc over max_model_len",
        "POST",
        "/score",
        {"queries": "cat", "documents": ["a cat"], "max_tokens_per_doc": 600},
    )
    pair.compare(
        "/score unknown model", "POST", "/score", {"queries": "a", "documents": "b", "model": "nope"}
    )
    for path in ("/rerank", "/v1/rerank", "/v2/rerank"):
        pair.compare(f"{path}", "POST", path, {"query": "cat", "documents": ["a dog", "a cat", "a car"]})
    pair.compare(
        "/rerank top_n", "POST", "/rerank", {"query": "cat", "documents": ["a dog", "a cat"], "top_n": 1}
    )
    pair.compare("/rerank missing query", "POST", "/rerank", {"documents": ["a"]})
    pair.compare(
        "/rerank unknown model", "POST", "/rerank", {"query": "a", "documents": ["b"], "model": "nope"}
    )
    pair.compare("/classify", "POST", "/classify", {"input": ["a cat", "a dog"]})
    pair.compare("/invocations rerank", "POST", "/invocations", {"query": "cat", "documents": ["a cat"]})
    pair.compare("/invocations score", "POST", "/invocations", {"queries": "cat", "documents": ["a cat"]})
    pair.compare("/invocations classify", "POST", "/invocations", {"input": "a cat"})
    pair.done()
