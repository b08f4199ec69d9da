"""Online differential on a sequence classifier (``Qwen3ForSequenceClassification``, 3 labels): every route,
every input form, the task variants and the invalid corpus, sent to vLLM 0.32's server and to ours."""

from __future__ import annotations

import pytest

from tests.compat.vllm_live.online import build, run_common, servers

pytestmark = pytest.mark.slow
NAME = "qwen3-classifier-3"
CHAT = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo there"}]


@pytest.fixture(scope="module")
def pair(tmp_path_factory, compat):
    model = build("Qwen3ForSequenceClassification", tmp_path_factory.mktemp("cls3"), num_labels=3)
    with servers(compat, model, NAME) as p:
        yield p


@pytest.mark.timeout(900)
def test_common_corpus(pair):
    run_common(pair)
    pair.done()


@pytest.mark.timeout(600)
def test_classify_and_pooling_inputs(pair):
    inputs = [
        ("str", "hello world"),
        ("list of str", ["hello world", "a b c"]),
        ("token ids", [1, 2, 3]),
        ("list of token-id lists", [[1, 2, 3], [4, 5]]),
    ]
    for form, value in inputs:
        for route in ("/classify", "/pooling", "/invocations"):
            pair.compare(f"{route} {form}", "POST", route, {"input": value})
        pair.compare(
            f"/classify {form} raw logits", "POST", "/classify", {"input": value, "use_activation": False}
        )
        pair.compare(
            f"/pooling {form} task classify", "POST", "/pooling", {"input": value, "task": "classify"}
        )
    pair.compare("/classify messages", "POST", "/classify", {"messages": CHAT})
    pair.compare("/pooling messages", "POST", "/pooling", {"messages": CHAT})
    pair.compare(
        "/pooling messages add_generation_prompt",
        "POST",
        "/pooling",
        {"messages": CHAT[:1], "add_generation_prompt": True},
    )
    pair.compare(
        "/pooling messages continue_final_message",
        "POST",
        "/pooling",
        {"messages": CHAT, "continue_final_message": True},
    )
    pair.compare(
        "/classify add_special_tokens false",
        "POST",
        "/classify",
        {"input": "hi", "add_special_tokens": False},
    )
    pair.compare("/classify request_id", "POST", "/classify", {"input": "hi", "request_id": "abc"})
    for side in ("left", "right"):
        pair.compare(
            f"/classify truncate 2 side {side}",
            "POST",
            "/classify",
            {"input": "hi there you", "truncate_prompt_tokens": 2, "truncation_side": side},
        )
    pair.compare(
        "/classify truncate -1", "POST", "/classify", {"input": "hi there", "truncate_prompt_tokens": -1}
    )
    for fmt in ("float", "base64", "bytes", "bytes_only"):
        pair.compare(
            f"/pooling encoding_format {fmt}",
            "POST",
            "/pooling",
            {"input": ["hi", "hello world"], "encoding_format": fmt},
        )
    pair.compare(
        "/pooling base64 big-endian",
        "POST",
        "/pooling",
        {"input": "hi", "encoding_format": "bytes", "endianness": "big"},
        select=lambda a: a["status"],
    )
    pair.done()


@pytest.mark.timeout(300)
def test_truncation_default_keeps_first_tokens(pair):
    # vLLM keeps the FIRST k tokens by default (the engine's default since issue 23's offline half).
    pair.compare(
        "/classify truncate 2 default side",
        "POST",
        "/classify",
        {"input": "hi there you", "truncate_prompt_tokens": 2},
    )
    pair.done()


@pytest.mark.timeout(600)
def test_extensions_and_strict_mode(pair):
    text = {"input": "hi there"}
    pair.compare(
        "/pooling task token_classify",
        "POST",
        "/pooling",
        {**text, "task": "token_classify"},
        deliberate="task-not-served",
    )
    for task in ("embed", "token_embed"):
        pair.compare(
            f"/pooling task {task}", "POST", "/pooling", {**text, "task": task}, deliberate="embedding-api"
        )
    pair.compare(
        "/pooling task embed dimensions",
        "POST",
        "/pooling",
        {**text, "task": "embed", "dimensions": 4},
        deliberate="pooling-dimensions",
    )
    pair.compare(
        "/pooling task embed normalize",
        "POST",
        "/pooling",
        {**text, "task": "embed", "normalize": True},
        deliberate="pooling-normalize",
    )
    pair.compare("/pooling normalize on classify", "POST", "/pooling", {**text, "normalize": True})
    pair.compare("/pooling dimensions on classify", "POST", "/pooling", {**text, "dimensions": 4})
    pair.compare(
        "/pooling return_details",
        "POST",
        "/pooling",
        {**text, "return_details": True},
        deliberate="pooling-extension-fields",
    )
    pair.compare(
        "/v1/embeddings", "POST", "/v1/embeddings", text, deliberate="embeddings-route-reward-models"
    )
    pair.compare(
        "/pooling add_generation_prompt on input",
        "POST",
        "/pooling",
        {**text, "add_generation_prompt": True},
        deliberate="chat-fields-on-input",
    )
    pair.compare(
        "/pooling input and messages",
        "POST",
        "/pooling",
        {**text, "messages": CHAT},
        deliberate="input-and-messages",
    )
    pair.compare(
        "/classify padding max_length",
        "POST",
        "/classify",
        {**text, "padding": "max_length"},
        deliberate="padding-max-length",
    )
    pair.compare("/classify padding do_not_pad", "POST", "/classify", {**text, "padding": "do_not_pad"})
    for route, body in (
        ("/score", {"queries": "a", "documents": "b"}),
        ("/rerank", {"query": "a", "documents": ["b"]}),
        ("/v2/embed", {"texts": ["a"]}),
    ):
        pair.compare(f"{route} not offered", "POST", route, body)
    pair.compare("/invocations no handler", "POST", "/invocations", {"foo": 1})
    # The strict server answers everything else as the default server does.
    pair.compare_strict("/classify str", "POST", "/classify", text)
    pair.compare_strict("/pooling", "POST", "/pooling", text)
    pair.done()
