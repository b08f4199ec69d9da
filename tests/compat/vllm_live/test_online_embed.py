"""Online differential on an embedding model (a base ``Qwen3Model``): ``/v1/embeddings`` in every form,
``/pooling`` embed/token_embed, ``/score`` and ``/rerank`` (bi-encoder), ``/v2/embed``."""

from __future__ import annotations

import pytest

from tests.compat.vllm_live.online import build, run_common, servers

pytestmark = pytest.mark.slow
NAME = "qwen3-embedding"
CHAT = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]


@pytest.fixture(scope="module")
def pair(tmp_path_factory, compat):
    model = build("Qwen3Model", tmp_path_factory.mktemp("emb"))
    with servers(compat, model, NAME) as p:
        yield p


@pytest.mark.timeout(900)
def test_common_corpus(pair):
    run_common(pair)
    pair.done()


@pytest.mark.timeout(900)
def test_embeddings(pair):
    for form, value in (
        ("str", "hello world"),
        ("list of str", ["hello world", "a b"]),
        ("token ids", [1, 2, 3]),
        ("list of token-id lists", [[1, 2, 3], [4, 5]]),
    ):
        pair.compare(f"/v1/embeddings {form}", "POST", "/v1/embeddings", {"input": value})
        pair.compare(f"/pooling {form}", "POST", "/pooling", {"input": value})
    pair.compare("/v1/embeddings messages", "POST", "/v1/embeddings", {"messages": CHAT})
    pair.compare(
        "/v1/embeddings raw (use_activation false)",
        "POST",
        "/v1/embeddings",
        {"input": "hello", "use_activation": False},
    )
    pair.compare(
        "/v1/embeddings dimensions",
        "POST",
        "/v1/embeddings",
        {"input": "hello", "dimensions": 8},
        deliberate="dimensions-any-model",
    )
    for fmt in ("float", "base64", "bytes", "bytes_only"):
        pair.compare(
            f"/v1/embeddings encoding_format {fmt}",
            "POST",
            "/v1/embeddings",
            {"input": ["hi", "hello"], "encoding_format": fmt},
        )
    pair.compare(
        "/v1/embeddings truncate right",
        "POST",
        "/v1/embeddings",
        {"input": "hello there you", "truncate_prompt_tokens": 2, "truncation_side": "right"},
    )
    pair.compare(
        "/v1/embeddings truncate over max_model_len",
        "POST",
        "/v1/embeddings",
        {"input": "hello", "truncate_prompt_tokens": 600},
    )
    pair.compare("/v1/embeddings empty input", "POST", "/v1/embeddings", {"input": []})
    pair.compare("/v1/embeddings missing input", "POST", "/v1/embeddings", {})
    pair.compare("/v1/embeddings unknown model", "POST", "/v1/embeddings", {"input": "a", "model": "nope"})
    pair.compare(
        "/pooling task token_embed",
        "POST",
        "/pooling",
        {"input": "hello there", "task": "token_embed"},
        deliberate="task-not-served",
    )
    pair.compare(
        "/pooling dimensions",
        "POST",
        "/pooling",
        {"input": "hello", "dimensions": 8},
        deliberate="pooling-dimensions",
    )
    pair.compare(
        "/pooling normalize",
        "POST",
        "/pooling",
        {"input": "hello", "normalize": False},
        deliberate="pooling-normalize",
    )
    pair.compare("/pooling task classify", "POST", "/pooling", {"input": "hello", "task": "classify"})
    pair.compare("/classify not offered", "POST", "/classify", {"input": "hello"})
    pair.compare("/score bi-encoder", "POST", "/score", {"queries": "cat", "documents": ["a cat", "a dog"]})
    pair.compare("/rerank bi-encoder", "POST", "/rerank", {"query": "cat", "documents": ["a dog", "a cat"]})
    pair.compare(
        "/v2/embed", "POST", "/v2/embed", {"texts": ["a cat", "a dog"], "embedding_types": ["float"]}
    )
    pair.compare("/invocations embeddings", "POST", "/invocations", {"input": "hello"})
    pair.done()
