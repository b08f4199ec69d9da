"""Online differential on a token reward model (``Qwen2ForRewardModel``): ``/pooling`` (vLLM's only route for
it), and the extensions kept on purpose (``/classify``, ``/v1/embeddings``, other tasks) with vLLM's answers
from ``--strict-vllm-compat``."""

from __future__ import annotations

import pytest

from tests.compat.vllm_live.online import build, run_common, servers

pytestmark = pytest.mark.slow
NAME = "qwen2-token-rm"
TEXT = "hi there <extra_0> ok"


@pytest.fixture(scope="module")
def pair(tmp_path_factory, compat):
    model = build("Qwen2ForRewardModel", tmp_path_factory.mktemp("trm"))
    with servers(compat, model, NAME) as p:
        yield p


@pytest.mark.timeout(900)
def test_common_corpus(pair):
    run_common(pair)
    pair.done()


@pytest.mark.timeout(600)
def test_pooling(pair):
    for act in (True, False):
        for form, value in (
            ("str", TEXT),
            ("list of str", [TEXT, "a b"]),
            ("token ids", [1, 2, 3]),
            ("list of token-id lists", [[1, 2, 3], [4, 5]]),
        ):
            pair.compare(
                f"/pooling {form} use_activation={act}",
                "POST",
                "/pooling",
                {"input": value, "use_activation": act},
            )
        pair.compare(
            f"/pooling messages use_activation={act}",
            "POST",
            "/pooling",
            {"messages": [{"role": "user", "content": "hi"}], "use_activation": act},
        )
        pair.compare(
            f"/pooling task token_classify use_activation={act}",
            "POST",
            "/pooling",
            {"input": TEXT, "task": "token_classify", "use_activation": act},
        )
        pair.compare(
            f"/invocations use_activation={act}",
            "POST",
            "/invocations",
            {"input": TEXT, "use_activation": act},
        )
    pair.compare(
        "/pooling base64",
        "POST",
        "/pooling",
        {"input": TEXT, "use_activation": False, "encoding_format": "base64"},
    )
    pair.compare(
        "/pooling truncate right",
        "POST",
        "/pooling",
        {"input": TEXT, "use_activation": False, "truncate_prompt_tokens": 2, "truncation_side": "right"},
    )
    pair.done()


@pytest.mark.timeout(300)
def test_pooling_default_activation(pair):
    pair.compare("/pooling default activation", "POST", "/pooling", {"input": TEXT})
    pair.done()


@pytest.mark.timeout(600)
def test_extensions_and_strict_mode(pair):
    pair.compare("/classify", "POST", "/classify", {"input": TEXT}, deliberate="classify-route-token-rm")
    pair.compare(
        "/v1/embeddings",
        "POST",
        "/v1/embeddings",
        {"input": TEXT},
        deliberate="embeddings-route-reward-models",
    )
    pair.compare("/pooling task classify", "POST", "/pooling", {"input": TEXT, "task": "classify"})
    for task in ("embed", "token_embed"):
        pair.compare(
            f"/pooling task {task}",
            "POST",
            "/pooling",
            {"input": TEXT, "task": task},
            deliberate="embedding-api",
        )
    for route, body in (
        ("/score", {"queries": "a", "documents": "b"}),
        ("/rerank", {"query": "a", "documents": ["b"]}),
        ("/v2/embed", {"texts": ["a"]}),
    ):
        pair.compare(f"{route} not offered", "POST", route, body)
    pair.compare_strict("/pooling", "POST", "/pooling", {"input": TEXT, "use_activation": False})
    pair.done()
